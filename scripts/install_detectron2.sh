#!/usr/bin/env bash
# Step 2 of the install: Detectron2 0.6 as a pure-Python wheel built from the `pb1-detectron2` sdist on
# PyPI (the upstream v0.6 sources, without the C++ files), patched by scripts/patch_detectron2.py for
# numpy 2 / Pillow >= 10 / Python 3.11+ / torch 2 / setuptools without pkg_resources, with the `_C`
# stand-in of scripts/detectron2_stub/_C.py. Needs torch installed first. See docs/install.md.
# Idempotent: does nothing if this build (same patches and stand-in) or an upstream compiled build is
# installed; replaces an older build of ours. With GitHub access you may instead run
#   pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'
# WHEEL_DIR=dir: only build the wheel into dir (scripts/prepare_gpu_wheels.sh), install nothing.
set -euo pipefail
PY=$(command -v "${PYTHON:-python}")
case "$PY" in /*) ;; *) PY="$PWD/$PY" ;; esac
here=$(cd "$(dirname "$0")" && pwd)
build_id=$(cat "$here/patch_detectron2.py" "$here/detectron2_stub/_C.py" | sha256sum | cut -c1-12)
installed=none
[ -n "${WHEEL_DIR:-}" ] || installed=$("$PY" - "$build_id" <<'EOF' 2>/dev/null || echo none
import sys
import detectron2._C as C
if not C.__file__.endswith(".py"):
    print("upstream")
else:
    print("current" if getattr(C, "BUILD_ID", None) == sys.argv[1] else "old")
EOF
)
case "$installed" in
  upstream|current)
    echo "detectron2 $("$PY" -c 'import detectron2; print(detectron2.__version__)') already installed ($installed build)"
    exit 0 ;;
  old)
    echo "replacing an older pure-Python detectron2 build"
    "$PY" -m pip uninstall -q -y pb1-detectron2 ;;
esac
work=$(mktemp -d)
trap 'cd / && rm -rf "$work"' EXIT
"$PY" -m pip download -q --no-deps --no-build-isolation --no-binary :all: -d "$work" pb1-detectron2==0.6
cd "$work"
tar xzf pb1-detectron2-0.6.tar.gz
cd pb1-detectron2-0.6
echo "patching the Detectron2 0.6 sources (scripts/patch_detectron2.py):"
"$PY" "$here/patch_detectron2.py" .
cp "$here/detectron2_stub/_C.py" detectron2/_C.py
echo "BUILD_ID = \"$build_id\"  # hash of patch_detectron2.py + _C.py, read by install_detectron2.sh" >> detectron2/_C.py
cp -r detectron2/model_zoo/configs configs
rm -f tools/__init__.py   # keep the wheel from installing a top-level `tools` package
# setuptools' deprecation notices about running setup.py go to a log, shown only if the build fails
"$PY" setup.py -q build_py >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
"$PY" setup.py -q bdist_wheel --skip-build -d "$work/dist" >>"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
cd /
if [ -n "${WHEEL_DIR:-}" ]; then
  mkdir -p "$WHEEL_DIR" && cp "$work"/dist/pb1_detectron2-0.6-*.whl "$WHEEL_DIR"/
  echo "detectron2 wheel written to $WHEEL_DIR"
  exit 0
fi
"$PY" -m pip install -q "$work"/dist/pb1_detectron2-0.6-*.whl
"$PY" -c "import detectron2; print('detectron2', detectron2.__version__, 'installed (pure-Python build)')"
