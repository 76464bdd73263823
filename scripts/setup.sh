#!/usr/bin/env bash
# Creates a virtual environment and installs everything dinov3seg needs. Idempotent; safe to rerun.
#   bash scripts/setup.sh                    # pinned stack (requirements.txt) in .venv
#   bash scripts/setup.sh --stack current    # current stack (requirements-current.txt) in .venv-current
#   bash scripts/setup.sh --venv DIR         # another folder (with either stack)
#   bash scripts/setup.sh --print-python     # only say which Python a new venv would use, and why
# Python: $PYTHON_BIN if set, else the newest supported one (3.13 > 3.12 > 3.11) on PATH whose pinned
# torch wheel pip finds without downloading (a local wheel folder or mirror), else the newest found.
# docs/install.md explains the choice and what each stack holds.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
stack=pinned venv= print_python=
while [ $# -gt 0 ]; do
  case "$1" in
    --stack) stack=${2:?--stack needs pinned or current}; shift 2 ;;
    --venv) venv=${2:?--venv needs a folder}; shift 2 ;;
    --print-python) print_python=1; shift ;;
    *) echo "setup.sh: unknown argument '$1' (use --stack pinned|current, --venv DIR, --print-python)" >&2; exit 2 ;;
  esac
done
case "$stack" in
  pinned) reqs=requirements.txt; venv=${venv:-.venv} ;;
  current) reqs=requirements-current.txt; venv=${venv:-.venv-current} ;;
  *) echo "setup.sh: --stack must be pinned or current, got '$stack'" >&2; exit 2 ;;
esac

supported() {  # the interpreter runs, is 3.11-3.13 and can make a venv
  "$1" -c 'import sys, venv, ensurepip; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' 2>/dev/null
}
torch_is_local() {  # pip finds the pinned torch wheel for this interpreter with PyPI switched off
  "$1" -m pip install --dry-run --no-deps --ignore-installed --quiet --report - --index-url file:///nonexistent \
    "$(grep -m1 '^torch==' requirements-common.txt)" 2>/dev/null | grep -q '"url": "file:'
}
choose_python() {
  if [ -n "${PYTHON_BIN:-}" ]; then
    supported "$PYTHON_BIN" || { echo "setup.sh: PYTHON_BIN=$PYTHON_BIN is not a Python 3.11-3.13 with venv" >&2; exit 2; }
    python=$PYTHON_BIN why="PYTHON_BIN"; return
  fi
  local found=() seen=" " cand v
  for cand in python3.13 python3.12 python3.11 python3; do
    supported "$cand" || continue
    v=$("$cand" -c 'import sys; print(sys.version_info[1])')
    case "$seen" in *" $v "*) continue ;; esac
    seen="$seen$v "
    found+=("$cand")
  done
  [ ${#found[@]} -gt 0 ] || { echo "setup.sh: needs Python 3.11, 3.12 or 3.13 (none on PATH; set PYTHON_BIN)" >&2; exit 2; }
  python=${found[0]} why="newest supported Python found"
  [ ${#found[@]} -gt 1 ] || return 0
  for cand in "${found[@]}"; do
    if torch_is_local "$cand"; then python=$cand why="newest supported Python with a local torch wheel"; return; fi
  done
}

if [ -n "$print_python" ]; then
  choose_python
  echo "$python ($("$python" -V); $why)"
  exit 0
fi
if [ -x "$venv/bin/python" ]; then
  echo "setup.sh: reusing $venv ($("$venv/bin/python" -V)); delete it to start over"
else
  choose_python
  echo "setup.sh: creating $venv with $python ($("$python" -V); $why) from $reqs"
  "$python" -m venv "$venv"
fi
vpy="$root/$venv/bin/python"
case "$venv" in /*) vpy="$venv/bin/python" ;; esac
"$vpy" -m pip install -q setuptools wheel
"$vpy" -m pip install -q -r "$reqs"
PYTHON="$vpy" bash scripts/install_detectron2.sh
"$vpy" -m pip install -q --no-deps -e .
"$vpy" -c "
import sys, numpy, PIL, torch, dinov3seg, detectron2, segment_anything, timm
print(f'dinov3seg environment ready in $venv ($reqs): Python {sys.version.split()[0]}, torch {torch.__version__}, '
      f'numpy {numpy.__version__}, Pillow {PIL.__version__}, detectron2 {detectron2.__version__}')"
