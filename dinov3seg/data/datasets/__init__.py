"""Dataset registration: COCO-Stuff-171 (train/val) and the open-vocabulary benchmarks.

Importing this package registers every dataset under ``$DETECTRON2_DATASETS`` (default ``./datasets``);
call :func:`register_all` again to point them at another folder.
"""
from .register_benchmarks import BENCHMARKS, DATASETS, SemSegDataset, check_prepared, register_all  # noqa: F401

register_all()
