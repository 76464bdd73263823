#!/usr/bin/env bash
# Evaluate a trained model on the six benchmarks with the paper's test settings (Local-Global Aggregation),
# one fresh process per benchmark, then write OUTDIR/results.md and OUTDIR/results.json.
#
#   bash eval.sh CONFIG NGPUS OUTDIR [OPTS...]
#
#   CONFIG  the training config (e.g. configs/vitl_384.yaml)
#   NGPUS   GPUs per run; 0 runs on the CPU
#   OUTDIR  holds model_final.pth (a training-free config needs none); results: OUTDIR/eval/<dataset>/, OUTDIR/results.{md,json}
#   OPTS    config overrides, applied last (e.g. MODEL.WEIGHTS other.pth TEST.LGA.STRIDE 128)
#
# Test settings: LGA on, and CAT-Seg's reported-numbers protocol: class pooling 1x1 at test, and each view keeps its
# MODEL.DINOV3SEG.CLASS_PAD_LEN (256) highest-cost classes when a benchmark has more (A-847, PC-459; the rest get
# logit -100), which halves the FLOPs there (docs/benchmarks.md); pass MODEL.DINOV3SEG.CLASS_PAD_LEN 1000 to keep all.
# Benchmarks whose data is not prepared are reported with the prepare command; the others still run.
# Exit status: 0 if every benchmark ran, 1 if any is missing or failed, 2 on a usage error or an input error
# (bad config, weights or data: train_net.py's one-line error is shown and the remaining benchmarks are not run,
# since they would fail the same way; DINOV3SEG_TRACEBACK=1 puts the traceback in the log too).
# Under srun (one task per GPU: srun --ntasks-per-node=G bash eval.sh CONFIG 1 OUTDIR) every task runs this script and
# each train_net.py joins the step's process group (NGPUS then only says GPU (1) or CPU (0)); rank 0 prints, writes
# eval.log and the table, the other ranks write eval.rank<N>.log. Without srun, NGPUS processes per run are started.
# Environment: PYTHON (default: .venv/bin/python beside this script, else python), DETECTRON2_DATASETS (default: ./datasets),
# TRAIN_NET (default: train_net.py beside this script), EVAL_DATASETS (registered dataset names to evaluate
# instead of the benchmarks), DINOV3SEG_DATASETS (Python files registering your datasets; see README).
set -uo pipefail
if [ $# -lt 3 ]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"   # this header
  exit 2
fi
config=$1; ngpus=$2; out=$3; shift 3
root=$(cd "$(dirname "$0")" && pwd)
default_python=python
[ -x "$root/.venv/bin/python" ] && default_python=$root/.venv/bin/python
PYTHON=${PYTHON:-$default_python}
train_net=${TRAIN_NET:-$root/train_net.py}

device=()
gpus=$ngpus
if [ "$ngpus" = "0" ]; then gpus=1; device=(MODEL.DEVICE cpu); fi
rank=0   # an srun step of several tasks: this task's rank (train_net.py joins the step's process group)
step=${SLURM_STEP_ID:-}   # an srun step has one below SLURM's special ids (batch script, interactive shell)
if [[ "$step" =~ ^[0-9]+$ ]] && [ "$step" -lt 4294967280 ] && [ "${SLURM_NTASKS:-1}" -gt 1 ] && [ -z "${RANK:-}" ]; then
  rank=$SLURM_PROCID; gpus=1
fi
if [ ! -f "$config" ]; then echo "eval.sh: config '$config' not found" >&2; exit 2; fi
# A training-free model (configs/dinotxt_zeroshot.yaml) has no checkpoint; the table then shows its own
# published figures (e.g. Meta's ADE-150 24.7 for the dinov3.txt recipe) beside ours.
model=$("$PYTHON" -m dinov3seg.tools.results_table model "$config" "$@") || exit 2
arch=${model%% *}
weights=(MODEL.WEIGHTS "$out/model_final.pth")
if [ "${model##* }" = "training-free" ]; then weights=(); fi
if [ ${#weights[@]} -gt 0 ] && [ ! -f "$out/model_final.pth" ] && [[ " $* " != *" MODEL.WEIGHTS "* ]]; then
  echo "eval.sh: $out/model_final.pth not found (train first, or pass MODEL.WEIGHTS path/to.pth)" >&2
  exit 2
fi

mkdir -p "$out/eval"
available=$("$PYTHON" -m dinov3seg.tools.results_table check "$out") || exit 2
if [ "$rank" != "0" ]; then exec > /dev/null; fi   # rank 0 reports for the job
for name in $available; do
  dir=$out/eval/$name
  log=$dir/eval.log
  mkdir -p "$dir"
  if [ "$rank" = "0" ]; then rm -f "$dir/eval_results.json" "$dir/exit_code"; else log=$dir/eval.rank$rank.log; fi
  echo "=== $name (log: $log)"
  "$PYTHON" "$train_net" --config-file "$config" --eval-only --num-gpus "$gpus" \
    OUTPUT_DIR "$dir" "${weights[@]}" DATASETS.TEST "(\"$name\",)" TEST.LGA.ENABLED True \
    MODEL.DINOV3SEG.CLASS_POOLING "[1,1]" "${device[@]}" "$@" > "$log" 2>&1
  code=$?
  if [ "$rank" != "0" ]; then   # rank 0 makes the same runs and reports them
    [ "$code" = "2" ] && exit 2
    continue
  fi
  grep "copypaste" "$dir/eval.log"
  echo "$code" > "$dir/exit_code"
  if [ "$code" = "2" ]; then
    msg=$(sed -n '/^train_net.py: error: /,$p' "$dir/eval.log")
    [ -n "$msg" ] || msg=$(tail -n 1 "$dir/eval.log")
    echo "eval.sh: $name: ${msg#train_net.py: } (stopped; log: $dir/eval.log)" >&2
    exit 2
  fi
  if [ "$code" != "0" ]; then
    echo "--- $name failed (exit $code); last lines of $dir/eval.log:" >&2
    tail -n 15 "$dir/eval.log" >&2
  fi
done
if [ "$rank" = "0" ]; then "$PYTHON" -m dinov3seg.tools.results_table collect "$out" --model "$arch"; fi
