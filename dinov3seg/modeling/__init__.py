from .head import DINOv3SegHead  # noqa: F401
from .meta_arch import DINOv3Seg  # noqa: F401
from .meta_arch_zeroshot import DINOTxtZeroShot  # noqa: F401
