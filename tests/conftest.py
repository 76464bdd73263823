"""Shared pytest fixtures."""
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """Folder of the official-code parity fixtures: $DINOV3SEG_PARITY_DIR, default <repo>/../shared/parity."""
    path = Path(os.environ.get("DINOV3SEG_PARITY_DIR", Path(__file__).resolve().parents[2] / "shared" / "parity"))
    if not path.is_dir():
        pytest.skip(f"parity fixtures not found at {path} (set DINOV3SEG_PARITY_DIR)")
    return path


def load_parity_fixture(parity_dir: Path, name: str, what: str):
    """``torch.load`` of the parity fixture ``name`` (weights_only), or a skip naming ``what`` is missing."""
    import torch

    path = parity_dir / name
    if not path.is_file():
        pytest.skip(f"{what} {path} not found")
    return torch.load(path, map_location="cpu", weights_only=True)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are skipped, with the reason, where no CUDA device is available."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run by scripts/gpu_check.sh on a GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config):
    """The models the tests build cache their text embeddings on disk by default (TEXT_CACHE_DIR "auto"):
    point that cache at a folder of this run, not the user's cache (subprocesses inherit it)."""
    import tempfile

    if not os.environ.get("DINOV3SEG_CACHE_DIR"):
        config._dinov3seg_cache = os.environ["DINOV3SEG_CACHE_DIR"] = tempfile.mkdtemp(prefix="dinov3seg-test-cache-")


def pytest_unconfigure(config):
    import shutil

    if getattr(config, "_dinov3seg_cache", None):
        shutil.rmtree(config._dinov3seg_cache, ignore_errors=True)
