from .head import DINOv3SegHead  # noqa: F401
