from .build import build_anyup, build_dinotxt, build_sam, sam_sizes  # noqa: F401
