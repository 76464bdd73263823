"""The install files: the two numerical stacks stay in step, and setup.sh rejects bad arguments clearly."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _requirements(name):
    lines = [line.split("#")[0].strip() for line in (REPO / name).read_text().splitlines()]
    return [line for line in lines if line]


def test_new_pythons_get_exactly_the_current_stack():
    pinned, current = _requirements("requirements.txt"), _requirements("requirements-current.txt")
    assert "-r requirements-common.txt" in pinned and "-r requirements-common.txt" in current
    new_pythons = [line.split(";")[0].strip() for line in pinned if line.endswith('python_version >= "3.12"')]
    assert new_pythons == [line for line in current if not line.startswith("-r")]
    old_python = [line.split(";")[0].split("==")[0] for line in pinned if line.endswith('python_version < "3.12"')]
    assert [line.split("==")[0] for line in old_python] == [line.split(">=")[0] for line in new_pythons]
    assert all("==" in line for line in pinned if line.endswith('python_version < "3.12"'))


def _setup(*args, **env):
    return subprocess.run(["bash", str(REPO / "scripts" / "setup.sh"), *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env})


def test_setup_rejects_unknown_stack_and_python(tmp_path):
    proc = _setup("--stack", "newest")
    assert proc.returncode == 2 and "--stack must be pinned or current" in proc.stderr
    proc = _setup("--venv", str(tmp_path / "venv"), PYTHON_BIN="/bin/false")
    assert proc.returncode == 2 and "not a Python 3.11-3.13" in proc.stderr
    assert not (tmp_path / "venv").exists()


def test_setup_says_which_python():
    proc = _setup("--print-python", PYTHON_BIN=sys.executable)
    assert proc.returncode == 0 and proc.stdout.startswith(f"{sys.executable} (Python {sys.version.split()[0]}; PYTHON_BIN)")
