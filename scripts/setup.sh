#!/usr/bin/env bash
# Creates .venv and installs everything dinov3seg needs. Idempotent; safe to rerun.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
PYTHON_BIN=${PYTHON_BIN:-python3.11}
command -v "$PYTHON_BIN" >/dev/null || PYTHON_BIN=python3
[ -x .venv/bin/python ] || "$PYTHON_BIN" -m venv .venv
.venv/bin/python -m pip install -q wheel
.venv/bin/python -m pip install -q -r requirements.txt
PYTHON="$root/.venv/bin/python" bash scripts/install_detectron2.sh
.venv/bin/python -m pip install -q --no-deps -e .
.venv/bin/python -c "import dinov3seg, detectron2, segment_anything, timm; print('dinov3seg environment ready')"
