from . import datasets, synthetic  # noqa: F401  (register the benchmarks and the quickstart dataset)
from .mapper import SemSegDatasetMapper  # noqa: F401
from .vocabulary import load_class_names, validate_vocabulary  # noqa: F401
