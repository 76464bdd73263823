#!/usr/bin/env bash
# Run on a machine WITH network (the CPU machine), in the repository root, before scripts/gpu_check.sh is run on a
# GPU machine without network (issue 12). Fills .whl/ with the Python 3.12 manylinux wheels of what such a machine
# lacks (its image has torch, numpy 2, Pillow, opencv, scipy, timm, einops, pytest, ... but not these), plus a
# pure-Python Detectron2 0.6 wheel that scripts/install_detectron2.sh builds (WHEEL_DIR).
#   bash scripts/prepare_gpu_wheels.sh            # then carry .whl/ (about 5 MB) to the GPU machine
# Override the target with PY_VERSION=3.13 or the folder with WHEELS=dir. The list lives here, not in
# requirements.txt: it is only the GPU image's gap.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-.whl}
PY_VERSION=${PY_VERSION:-3.12}
PY=$(command -v "${PYTHON:-python3}")
mkdir -p "$WHEELS"
WHEELS=$(cd "$WHEELS" && pwd)
# pure-Python packages that publish only sdists are built into wheels here; the rest must be binary wheels
"$PY" -m pip wheel -q --no-deps -w "$WHEELS" fvcore==0.1.5.post20221221 iopath==0.1.9 yacs termcolor \
    antlr4-python3-runtime==4.9.3 segment-anything==1.0
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$WHEELS" omegaconf pycocotools==2.0.11 open_clip_torch==3.3.0 ftfy wcwidth
if ! ls "$WHEELS"/pb1_detectron2-0.6-*.whl >/dev/null 2>&1; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  WHEEL_DIR="$work/dist" PYTHON="$PY" bash scripts/install_detectron2.sh  # the same patched build as the install
  # no compiled code inside (the _C stub): retag the build's cpXY-linux wheel as py3-none-any
  "$PY" -m wheel tags --python-tag py3 --abi-tag none --platform-tag any --remove "$work"/dist/*.whl
  mv "$work"/dist/*.whl "$WHEELS"/
fi
echo "wheels for Python $PY_VERSION in $WHEELS ($(du -sh "$WHEELS" | cut -f1)):"
ls "$WHEELS"
