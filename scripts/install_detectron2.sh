#!/usr/bin/env bash
# Step 2 of the install: detectron2 0.6 as a pure-Python wheel built from the `pb1-detectron2`
# sdist on PyPI (the upstream sources, without the C++ files). Needs torch installed first.
# Idempotent: does nothing if detectron2 already imports. With GitHub access you may instead run
#   pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'
set -euo pipefail
PY=$(command -v "${PYTHON:-python}")
case "$PY" in /*) ;; *) PY="$PWD/$PY" ;; esac
here=$(cd "$(dirname "$0")" && pwd)
if "$PY" -c "import detectron2" 2>/dev/null; then
  echo "detectron2 already installed: $("$PY" -c 'import detectron2; print(detectron2.__version__)')"
  exit 0
fi
work=$(mktemp -d)
trap 'cd / && rm -rf "$work"' EXIT
"$PY" -m pip download -q --no-deps --no-build-isolation --no-binary :all: -d "$work" pb1-detectron2==0.6
cd "$work"
tar xzf pb1-detectron2-0.6.tar.gz
cd pb1-detectron2-0.6
cp "$here/detectron2_stub/_C.py" detectron2/_C.py
cp -r detectron2/model_zoo/configs configs
rm -f tools/__init__.py   # keep the wheel from installing a top-level `tools` package
"$PY" setup.py -q build_py >/dev/null
"$PY" setup.py -q bdist_wheel --skip-build -d "$work/dist" >/dev/null
cd /
"$PY" -m pip install -q "$work"/dist/pb1_detectron2-0.6-*.whl
"$PY" -c "import detectron2; print('detectron2', detectron2.__version__, 'installed (pure-Python build)')"
