"""verify_parity: every fixture kind with a checker passes as a subprocess; failures and unknown kinds exit 1."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dinov3seg.tools.verify_parity import PARITY_CHECKS, main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fixtures_by_kind(parity_dir):
    kinds = {}
    for path in sorted(parity_dir.glob("*.pt")):
        kinds.setdefault(torch.load(path, map_location="cpu", weights_only=True)["kind"], []).append(path)
    return kinds


def run_tool(*paths):
    cmd = [sys.executable, "-m", "dinov3seg.tools.verify_parity", *map(str, paths)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("kind", sorted(PARITY_CHECKS))
def test_fixtures_pass(fixtures_by_kind, kind):
    if kind not in fixtures_by_kind:
        pytest.skip(f"no '{kind}' fixture in the parity folder")
    proc = run_tool(*fixtures_by_kind[kind])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAIL" not in proc.stdout and "PASS" in proc.stdout


def test_kinds_without_checker_are_reported(fixtures_by_kind):
    unchecked = {kind: paths for kind, paths in fixtures_by_kind.items() if kind not in PARITY_CHECKS}
    if not unchecked:
        pytest.skip("every fixture kind has a checker")
    proc = run_tool(*[p for paths in unchecked.values() for p in paths])
    assert proc.returncode == 1
    for kind in unchecked:
        assert f"no parity check for kind '{kind}'" in proc.stdout


def test_wrong_model_fails(parity_dir, tmp_path, capsys):
    """A fixture whose config asks for LayerNorm eps 1e-6 builds a different model: FAIL, exit 1."""
    blob = torch.load(parity_dir / "dinov3_vit_small.pt", map_location="cpu", weights_only=True)
    blob["config"]["layernorm_eps"] = 1e-6
    torch.save(blob, tmp_path / "wrong_eps.pt")
    assert main([str(tmp_path / "wrong_eps.pt")]) == 1
    assert "x_norm_clstoken" in capsys.readouterr().out.split("FAIL")[0]


def test_unknown_kind_is_an_error(tmp_path, capsys):
    torch.save({"kind": "not_a_model"}, tmp_path / "x.pt")
    assert main([str(tmp_path / "x.pt")]) == 1
    assert "not_a_model" in capsys.readouterr().out


@pytest.mark.slow  # 2+ minutes on CPUs without AMX / AVX512-BF16 (no fast bf16 matmul)
def test_bf16_errors_are_reported_not_asserted(parity_dir, capsys):
    path = parity_dir / "anyup_full.pt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    assert main([str(path), "--precision", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "errors reported, not asserted" in out and "bf16: " in out and "largest max_abs" in out
