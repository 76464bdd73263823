"""dinov3seg: open-vocabulary semantic segmentation on DINOv3 and dinov3.txt, in Detectron2."""
from .config import add_dinov3seg_config, get_dinov3seg_cfg  # noqa: F401
from . import modeling  # noqa: F401  (registers META_ARCH / SEM_SEG_HEAD)
from . import data  # noqa: F401  (registers datasets)

__version__ = "0.1.0"


def __getattr__(name):
    """``from dinov3seg import Segmenter, Segmentation``: the Python API, imported on first use."""
    if name in ("Segmenter", "Segmentation"):
        from .inference import segmenter

        return getattr(segmenter, name)
    raise AttributeError(f"module 'dinov3seg' has no attribute '{name}'")


data.datasets.register_from_env()  # $DINOV3SEG_DATASETS: your datasets (last: those files may import us)
