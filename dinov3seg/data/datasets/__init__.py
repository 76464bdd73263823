"""Dataset registration: COCO-Stuff-171 (train/val) and the open-vocabulary benchmarks.

Importing this package registers every dataset under ``$DETECTRON2_DATASETS`` (default ``./datasets``);
call :func:`register_all` again to point them at another folder. Your own datasets:
:func:`register_sem_seg_folder` (see custom.py), run for every process from $DINOV3SEG_DATASETS.
"""
from .register_benchmarks import BENCHMARKS, DATASETS, SemSegDataset, check_prepared, register_all  # noqa: F401
from .custom import read_class_file, register_from_env, register_sem_seg_folder  # noqa: F401

register_all()
