"""The Python API: build a segmenter in one line, segment any image with any class names.

    from dinov3seg import Segmenter
    segmenter = Segmenter("quickstart", weights="output/quickstart/model_final.pth")
    result = segmenter("photo.jpg", ["cat", "dog, puppy", "grass"])
    result.labels        # H x W int64: index into result.class_names, or UNLABELED (-1)
    result.scores        # K x h x w float32: each class's score at the model's working resolution
    result.class_names   # the K names the labels index
    for frame in segmenter.video("clip.mp4", ["road", "car"], every=2, temporal_smoothing=0.5):
        frame.index, frame.time, frame.image, frame.result   # one Segmentation per taken frame

Works for every model with the generic interface (``set_vocabulary(names)``, Detectron2 input dicts,
``[{"sem_seg": T x H x W scores}]``): the trained DINOv3Seg and the training-free dinov3.txt model alike.

"None of these" pixels, both off by default:

* ``threshold``: a pixel whose best score is below it is UNLABELED. The score is the model's natural one,
  declared by the model's ``sem_seg_score_type``: "sigmoid" (trained head: independent per-class
  probabilities), "softmax" (training-free: probabilities over the vocabulary) or "logit" (sigmoid logits,
  turned into sigmoid probabilities here);
* ``distractors``: SAN's vocabulary augmentation. A known vocabulary (e.g. "coco_stuff") is appended to
  the user's classes, minus the names the user already has; pixels won by a distractor get the label of
  the class "other", appended last to ``class_names`` (or the user's own "other" class if there is one).
"""
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .predictor import VocabularyPredictor, pil_to_rgb, read_image_rgb, to_uint8_rgb
from .video import TemporalSmoother, VideoReader, prefetch

__all__ = ["Segmenter", "Segmentation", "Segmented", "VideoFrame", "resolve_config", "resolve_repo_files",
           "known_vocabulary", "KNOWN_VOCABULARIES"]

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
# Distractor vocabularies by short name -> class-name JSON in the repository's datasets/ folder.
KNOWN_VOCABULARIES = {"coco_stuff": "coco171.json", "ade150": "ade150.json", "pc59": "pc59.json",
                      "voc20": "voc20.json"}
SCORE_TYPES = ("sigmoid", "softmax", "logit")
OTHER = "other"

ImageLike = Union[np.ndarray, Image.Image, str, os.PathLike]


def resolve_config(config: Union[str, os.PathLike]) -> str:
    """A config name ("quickstart" -> configs/quickstart.yaml) or a path -> the path of an existing file."""
    path = Path(config)
    if path.is_file():
        return str(path)
    by_name = CONFIG_DIR / f"{config}.yaml"
    if path.suffix == "" and by_name.is_file():
        return str(by_name)
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if not p.stem.startswith("Base"))
    raise FileNotFoundError(f"config '{config}' is neither a file nor a config name; names: {', '.join(names)} "
                            f"(in {CONFIG_DIR}), or give the path of a YAML file.")


def resolve_repo_files(cfg) -> None:
    """In place: relative file paths in ``cfg`` that do not exist from the working directory but do from the
    repository root (e.g. the quickstart's prompt file) become absolute, so the API works from any folder."""
    root = CONFIG_DIR.parent
    for key, value in cfg.items():
        if isinstance(value, dict):
            resolve_repo_files(value)
        elif (isinstance(value, str) and "/" in value and "://" not in value and not os.path.isabs(value)
              and not os.path.exists(value) and (root / value).is_file()):
            cfg[key] = str(root / value)


def known_vocabulary(name: str) -> List[str]:
    """Class names of a known vocabulary (:data:`KNOWN_VOCABULARIES`) or of a registered dataset."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ..data.datasets.register_benchmarks import class_names

    if name in KNOWN_VOCABULARIES:
        return class_names(KNOWN_VOCABULARIES[name])
    if name in DatasetCatalog.list() and MetadataCatalog.get(name).get("stuff_classes", None):
        return list(MetadataCatalog.get(name).stuff_classes)
    raise KeyError(f"unknown vocabulary '{name}': use one of {', '.join(KNOWN_VOCABULARIES)}, a registered "
                   "dataset's name, or a list of class names.")


def _synonym_keys(name: str) -> List[str]:
    from ..evaluation.sem_seg_evaluation import synonym_keys

    return synonym_keys(name)


@dataclass
class Segmentation:
    """One segmented image.

    ``labels`` (H x W int64, the input image's size) index ``class_names``; ``UNLABELED`` (-1) marks pixels
    below the threshold. ``scores`` (K x h x w float32) hold each class's score at the resolution the model
    worked at (the image after INPUT.MIN_SIZE_TEST; h x w = H x W when it is not resized); ``labels`` are
    their argmax there, resized nearest. With distractors, the last of the K names may be "other" and its
    score is the best distractor's.
    """

    labels: np.ndarray
    scores: np.ndarray
    class_names: List[str]
    score_type: Optional[str]  # "sigmoid", "softmax", or None (the model did not declare it)
    threshold: Optional[float] = None
    other_index: Optional[int] = None  # index of "other" when distractors were used
    distractors: List[str] = field(default_factory=list)  # the distractor names appended

    UNLABELED: ClassVar[int] = -1

    def label_image(self) -> np.ndarray:
        """``labels`` as an index image for a PNG: uint8 with UNLABELED -> 255 when the K names fit in
        0..254, else uint16 with UNLABELED -> 65535 (the ignore values of Detectron2's label files)."""
        dtype, value = self.label_image_format(len(self.class_names))
        return np.where(self.labels == self.UNLABELED, value, self.labels).astype(dtype)

    @staticmethod
    def label_image_format(num_classes: int):
        """(dtype, unlabeled value) of :meth:`label_image` for ``num_classes`` names."""
        if num_classes <= 255:
            return np.uint8, 255
        if num_classes <= 65535:
            return np.uint16, 65535
        raise ValueError(f"{num_classes} classes do not fit a 16-bit label image")

    def name_table(self) -> Dict[int, str]:
        """Index -> name of :meth:`label_image`'s values (with the unlabeled value when thresholding)."""
        table = dict(enumerate(self.class_names))
        if self.threshold is not None:
            table[self.label_image_format(len(self.class_names))[1]] = "unlabeled"
        return table

    def pixel_shares(self) -> Dict[str, float]:
        """Fraction of the pixels per class name (and "unlabeled" when thresholding); sums to 1."""
        counts = np.bincount(self.labels.reshape(-1) + 1, minlength=len(self.class_names) + 1) / self.labels.size
        shares = dict(zip(self.class_names, counts[1:].tolist()))
        if self.threshold is not None:
            shares["unlabeled"] = float(counts[0])
        return shares

    def mask(self, name: str) -> np.ndarray:
        """H x W bool mask of one class."""
        if name not in self.class_names:
            raise KeyError(f"'{name}' is not one of the classes {self.class_names}")
        return self.labels == self.class_names.index(name)


class Segmenter:
    """An open-vocabulary segmenter for your own code (eval mode, no gradients).

    Args:
        config: a config name ("quickstart", "vitl_384", ...: configs/<name>.yaml), a YAML path, or a
            Detectron2 config with the dinov3seg keys.
        weights: the trained checkpoint (overrides MODEL.WEIGHTS); None keeps the config's.
        device: "cpu", "cuda", ...; None keeps MODEL.DEVICE (the CPU when CUDA is unavailable).
        opts: further config overrides, KEY VALUE ... (e.g. ["TEST.LGA.STRIDE", "128"]).
        model: an already built model (skips building and loading).
    """

    UNLABELED = Segmentation.UNLABELED

    def __init__(self, config="quickstart", weights: Optional[str] = None, *, device: Optional[str] = None,
                 opts: Sequence[str] = (), model: Optional[torch.nn.Module] = None):
        from detectron2.config import CfgNode

        from ..config import get_dinov3seg_cfg

        if isinstance(config, CfgNode):
            cfg = config.clone()
            cfg.defrost()
            cfg.merge_from_list(list(opts))
        else:
            cfg = get_dinov3seg_cfg(resolve_config(config), opts)
        resolve_repo_files(cfg)
        if weights is not None:
            cfg.MODEL.WEIGHTS = str(weights)
        if cfg.MODEL.WEIGHTS and "://" not in cfg.MODEL.WEIGHTS and not os.path.isfile(cfg.MODEL.WEIGHTS):
            raise FileNotFoundError(f"weights '{cfg.MODEL.WEIGHTS}' do not exist: give the path of a trained "
                                    "checkpoint (train_net.py writes OUTPUT_DIR/model_final.pth).")
        if device is not None:
            cfg.MODEL.DEVICE = device
        if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
            logger.info("CUDA is not available: running on the CPU")
            cfg.MODEL.DEVICE = "cpu"
        cfg.freeze()
        self.cfg = cfg
        self.predictor = VocabularyPredictor(cfg, model=model)
        self.model = self.predictor.model
        self._distractor_cache: Dict[tuple, List[str]] = {}

    @property
    def score_type(self) -> Optional[str]:
        """The model's declared score ("sigmoid", "softmax" or "logit"), None if it declares none."""
        kind = getattr(self.model, "sem_seg_score_type", None)
        if kind is not None and kind not in SCORE_TYPES:
            raise ValueError(f"{type(self.model).__name__}.sem_seg_score_type is {kind!r}; expected one of "
                             f"{SCORE_TYPES}")
        return kind

    def _distractors(self, classes: List[str], distractors) -> List[str]:
        """The distractor names to append: the given vocabulary minus names sharing a synonym with a class."""
        names = known_vocabulary(distractors) if isinstance(distractors, str) else list(distractors)
        taken = {k for c in classes for k in _synonym_keys(c)}
        kept, seen = [], set(taken)
        for name in names:
            keys = _synonym_keys(name)
            if keys and not any(k in seen for k in keys):
                kept.append(name)
                seen.update(keys)
        if not kept:
            raise ValueError("every distractor name is already among the classes; give another vocabulary")
        return kept

    @staticmethod
    def _read(image: ImageLike) -> np.ndarray:
        if isinstance(image, (str, os.PathLike)):
            return read_image_rgb(str(image))
        if isinstance(image, Image.Image):
            return pil_to_rgb(image)
        if isinstance(image, (np.ndarray, torch.Tensor)):
            return to_uint8_rgb(np.asarray(image))
        raise TypeError(f"image must be a path, a PIL image or an H x W x 3 RGB array, got {type(image).__name__}")

    def check(self, classes: Sequence[str], *, threshold: Optional[float] = None,
              distractors: Union[None, str, Sequence[str]] = None) -> List[str]:
        """Validate the options of :meth:`segment` without running the model; returns the distractor
        names that will be appended to ``classes`` (empty without distractors)."""
        from ..data.vocabulary import validate_vocabulary

        classes = validate_vocabulary([str(c) for c in classes], "the class names")
        if threshold is not None:
            if self.score_type is None:
                raise ValueError(f"threshold needs the model's score type, but {type(self.model).__name__} "
                                 "declares no sem_seg_score_type ('sigmoid', 'softmax' or 'logit').")
            if not 0.0 <= float(threshold) <= 1.0:
                raise ValueError(f"threshold is a probability: give a value in [0, 1], got {threshold}")
        if distractors is None or (isinstance(distractors, str) and distractors.lower() in ("", "none")):
            return []
        key = (tuple(classes), distractors if isinstance(distractors, str) else tuple(distractors))
        if key not in self._distractor_cache:
            self._distractor_cache[key] = self._distractors(classes, distractors)
        return self._distractor_cache[key]

    @torch.no_grad()
    def segment(self, image: ImageLike, classes: Sequence[str], *, threshold: Optional[float] = None,
                distractors: Union[None, str, Sequence[str]] = None) -> Segmentation:
        """Segment one image into ``classes``.

        Args:
            image: a path, a PIL image, or an H x W x 3 RGB array (uint8; other dtypes are converted).
                Arrays are taken as RGB: convert OpenCV's BGR first.
            classes: T class names; one name may hold comma-separated synonyms ("sofa, couch").
            threshold: pixels whose best score is below it are UNLABELED (None: off). In [0, 1]: a sigmoid
                probability for the trained model, a softmax probability for the training-free one.
            distractors: None (off), a known vocabulary name ("coco_stuff", ...) or a list of names; pixels
                they win are labelled "other".
        """
        return self.segment_batch([image], classes, threshold=threshold, distractors=distractors)[0]

    __call__ = segment

    @torch.no_grad()
    def segment_batch(self, images: Sequence[ImageLike], classes: Sequence[str], *,
                      threshold: Optional[float] = None, distractors: Union[None, str, Sequence[str]] = None,
                      smoother: Optional[TemporalSmoother] = None) -> List[Segmentation]:
        """Segment B images in one model call (arguments as :meth:`segment`); ``smoother`` blends each
        image's scores with the previous ones', in order (video frames)."""
        classes = [str(c) for c in classes]
        extra = self.check(classes, threshold=threshold, distractors=distractors)
        kind = self.score_type
        out_kind = "sigmoid" if kind == "logit" else kind  # logits are turned into probabilities below
        rgbs = [self._read(image) for image in images]
        self.predictor.set_vocabulary(classes + extra)
        results = []
        for rgb, scores in zip(rgbs, self.predictor.scores_batch(rgbs)):  # (T + D) x h x w each
            if kind == "logit":
                scores = scores.sigmoid()
            if smoother is not None:
                scores = smoother(scores)
            results.append(self._segmentation(scores, rgb.shape[:2], classes, extra, out_kind, threshold))
        return results

    @staticmethod
    def _segmentation(scores: torch.Tensor, size, classes: List[str], extra: List[str], kind: Optional[str],
                      threshold: Optional[float]) -> Segmentation:
        """(T + D) x h x w probabilities of ``classes + extra`` -> the Segmentation at ``size`` (H, W)."""
        names, other = list(classes), None
        best, labels = scores.max(dim=0)
        if extra:  # distractor pixels -> "other" (appended, or the user's own class of that name)
            num = len(classes)
            lowered = [c.strip().lower() for c in classes]
            other = lowered.index(OTHER) if OTHER in lowered else num
            other_score = scores[num:].max(dim=0).values
            scores = scores[:num]
            if other == num:
                names.append(OTHER)
                scores = torch.cat([scores, other_score[None]])
            else:
                scores[other] = torch.maximum(scores[other], other_score)
            labels = torch.where(labels >= num, torch.full_like(labels, other), labels)
        if threshold is not None:
            labels = torch.where(best < float(threshold), torch.full_like(labels, Segmentation.UNLABELED), labels)
        if labels.shape != tuple(size):
            labels = F.interpolate(labels[None, None].float(), size=tuple(size), mode="nearest")[0, 0].long()
        return Segmentation(labels=labels.cpu().numpy(), scores=scores.float().cpu().numpy(), class_names=names,
                            score_type=kind, threshold=None if threshold is None else float(threshold),
                            other_index=other, distractors=list(extra))

    def default_batch_size(self) -> int:
        """Images per model call when none is given: 4 on a GPU, 1 on the CPU (each image's LGA views are
        one batch already, which keeps the CPU's cores busy; larger batches only add memory there)."""
        return 4 if torch.device(self.cfg.MODEL.DEVICE).type == "cuda" else 1

    def stream(self, items: Iterable[Tuple[Any, ImageLike]], classes: Sequence[str], *,
               batch_size: Optional[int] = None, temporal_smoothing: float = 0.0, skip_unreadable: bool = False,
               threshold: Optional[float] = None,
               distractors: Union[None, str, Sequence[str]] = None) -> Iterator["Segmented"]:
        """Segment a stream of ``(tag, image)`` pairs (tag: anything, e.g. a path or frame index), in order.

        Images are read (paths decoded) in a loader thread, ``batch_size`` at a time ahead of the model
        (default :meth:`default_batch_size`), and go through the model ``batch_size`` per call.
        ``temporal_smoothing`` in [0, 1) blends each image's class scores with the previous ones'
        (exponential moving average, 0 = off). With ``skip_unreadable`` an image that cannot be read is
        yielded with its ``error`` set instead of raising. Other arguments as :meth:`segment`.

        Yields:
            :class:`Segmented` (tag, image: H x W x 3 uint8 RGB, result: Segmentation, error: None).
        """
        size = int(batch_size or self.default_batch_size())
        if size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        smoother = TemporalSmoother(temporal_smoothing)
        self.check(classes, threshold=threshold, distractors=distractors)  # fail before reading anything

        def read(pair):
            tag, image = pair
            try:
                return Segmented(tag, self._read(image))
            except (ValueError, TypeError) as err:
                if not skip_unreadable:
                    raise
                return Segmented(tag, None, error=err)

        pending: List[Segmented] = []
        for item in prefetch(map(read, items), depth=2 * size):
            if item.error is not None and not pending:
                yield item
                continue
            pending.append(item)
            if sum(p.error is None for p in pending) == size:
                yield from self._run(pending, classes, threshold, distractors, smoother)
                pending = []
        if pending:
            yield from self._run(pending, classes, threshold, distractors, smoother)

    def _run(self, pending, classes, threshold, distractors, smoother) -> Iterator["Segmented"]:
        good = [p for p in pending if p.error is None]
        results = iter(self.segment_batch([p.image for p in good], classes, threshold=threshold,
                                          distractors=distractors, smoother=smoother) if good else [])
        for p in pending:
            if p.error is None:
                p.result = next(results)
            yield p

    def video(self, video: Union[str, os.PathLike, VideoReader], classes: Sequence[str], *, every: int = 1,
              max_frames: Optional[int] = None, batch_size: Optional[int] = None, temporal_smoothing: float = 0.0,
              threshold: Optional[float] = None,
              distractors: Union[None, str, Sequence[str]] = None) -> Iterator["VideoFrame"]:
        """Segment a video file frame by frame (decoded with OpenCV in a loader thread; no audio).

        Args:
            video: a path, or a :class:`VideoReader` (which then sets ``every`` / ``max_frames``).
            every: take every N-th frame; max_frames: stop after this many taken frames.
            batch_size, temporal_smoothing, threshold, distractors: as :meth:`stream`.
        Yields:
            :class:`VideoFrame` (index in the video, time in seconds, H x W x 3 RGB image, Segmentation).
        Raises:
            VideoError: the file is missing, empty, damaged, not a video, or in a codec OpenCV cannot decode.
        """
        reader = video if isinstance(video, VideoReader) else VideoReader(video, every, max_frames)
        pairs = (((index, seconds), rgb) for index, seconds, rgb in reader)
        for item in self.stream(pairs, classes, batch_size=batch_size, temporal_smoothing=temporal_smoothing,
                                threshold=threshold, distractors=distractors):
            yield VideoFrame(item.tag[0], item.tag[1], item.image, item.result)


@dataclass
class Segmented:
    """One item of :meth:`Segmenter.stream`: its tag, the H x W x 3 uint8 RGB image, its Segmentation, or
    the error that made it unreadable (``image`` and ``result`` None)."""

    tag: Any
    image: Optional[np.ndarray]
    result: Optional[Segmentation] = None
    error: Optional[Exception] = None


@dataclass
class VideoFrame:
    """One segmented video frame: ``index`` in the video (0-based), ``time`` in seconds, ``image``
    (H x W x 3 uint8 RGB) and its ``result``."""

    index: int
    time: float
    image: np.ndarray
    result: Segmentation
