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
