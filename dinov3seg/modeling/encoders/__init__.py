from .build import build_anyup, build_dinotxt, build_sam  # noqa: F401
