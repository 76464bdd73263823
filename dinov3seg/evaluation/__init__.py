"""Evaluators: ``build_evaluator(cfg, dataset_name, output_folder)`` picks one from the dataset's metadata."""
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator

from ..data.vocabulary import load_class_names
from .sem_seg_evaluation import OpenVocabSemSegEvaluator, mean_iou, seen_mask, synonym_keys  # noqa: F401

EVALUATOR_TYPES = ("sem_seg", "sem_seg_background")


def training_vocabulary(cfg):
    """The class names the model was trained on: MODEL.DINOV3SEG.TRAIN_CLASS_JSON, else the
    ``stuff_classes`` of DATASETS.TRAIN[0]."""
    return load_class_names(cfg.MODEL.DINOV3SEG.TRAIN_CLASS_JSON, list(cfg.DATASETS.TRAIN),
                            "MODEL.DINOV3SEG.TRAIN_CLASS_JSON", "DATASETS.TRAIN")


def build_evaluator(cfg, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    """The evaluator for one registered dataset: semantic segmentation ("sem_seg"), or with distractor
    predictions folded into background ("sem_seg_background"); with TEST.SEEN_UNSEEN, both also report
    mIoU on classes seen / unseen in training and their harmonic mean."""
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type not in EVALUATOR_TYPES:
        raise ValueError(f"Dataset '{dataset_name}' has evaluator_type {evaluator_type!r}; dinov3seg evaluates "
                         f"{EVALUATOR_TYPES}. Register it with one of them (see dinov3seg/data/datasets).")
    train_names = training_vocabulary(cfg) if cfg.TEST.SEEN_UNSEEN else None
    return OpenVocabSemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder,
                                    train_class_names=train_names)
