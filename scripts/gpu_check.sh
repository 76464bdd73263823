#!/usr/bin/env bash
# One-shot GPU check (issue 12), no network needed: installs the wheels prepared by scripts/prepare_gpu_wheels.sh
# (folder .whl/, or $WHEELS) into a private folder, then runs `python -m dinov3seg.tools.gpu_check`, which prints
# a table and writes JSON ($OUT/gpu_check.json when $OUT is set, else ./gpu_check.json). Sized to finish in a few
# minutes on one H200; on a machine without CUDA it says so and runs only the CPU parts (pass --tiny there).
#   bash scripts/gpu_check.sh [gpu_check options, e.g. --skip-tests]
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-.whl}
PY=$(command -v "${PYTHON:-python3}")
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  site=${SITE:-/tmp/dinov3seg-site}
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$WHEELS"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PY" -m dinov3seg.tools.gpu_check --json "${OUT:-.}/gpu_check.json" "$@"
