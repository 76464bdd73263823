"""Open-vocabulary transfer end to end: a short quickstart training run must segment the colour x texture names it
never trained on (dinov3seg/data/synthetic.py) clearly above chance, through the whole test-time vocabulary
path (text cache, class order, class-axis padding, LGA merging); with the unseen names swapped among themselves
the same weights must lose them. A regression anywhere on that path fails here instead of leaving a silent 0."""
import json
import os
import subprocess
import sys
from pathlib import Path

from dinov3seg.data import synthetic

REPO = Path(__file__).resolve().parents[1]
# A shorter schedule of the quickstart itself (same model, data, LR and LGA): 800 -> SHORT_ITERS iterations,
# so that training and both evaluations stay within the suite's 90 s on 2 cores.
SHORT_ITERS = 200
CHANCE = 100 / len(synthetic.CLASSES)  # mIoU of a constant-class guess is lower still


def train_net(*args):
    env = dict(os.environ, DETECTRON2_DATASETS=os.environ.get("DETECTRON2_DATASETS", str(REPO / "datasets")))
    proc = subprocess.run([sys.executable, "train_net.py", "--config-file", "configs/quickstart.yaml", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def evaluate(weights: Path, out: Path, vocabulary=None) -> dict:
    opts = ["OUTPUT_DIR", str(out), "MODEL.WEIGHTS", str(weights)]
    if vocabulary is not None:
        out.mkdir(parents=True)
        (out / "vocabulary.json").write_text(json.dumps(vocabulary))
        opts += ["MODEL.DINOV3SEG.TEST_CLASS_JSON", str(out / "vocabulary.json")]
    train_net("--eval-only", *opts)
    return json.loads((out / "eval_results.json").read_text())["synthetic_ov_sem_seg_val"]["sem_seg"]


def test_short_quickstart_segments_unseen_names(tmp_path):
    train_net("OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", str(SHORT_ITERS), "DATASETS.TEST", "()")
    weights = tmp_path / "model_final.pth"
    result = evaluate(weights, tmp_path / "eval")
    assert result["num_unseen"] == len(synthetic.UNSEEN) and result["num_seen"] == len(synthetic.SEEN)
    # seed 0, 2 threads, 200 iterations: seen 24.3, unseen 23.6 (the full schedule: docs/quickstart.md). This
    # is about transfer: the seen classes only have to be clearly above chance too.
    assert result["mIoU_seen"] > 2 * CHANCE, result
    assert result["mIoU_unseen"] > 2 * CHANCE, result

    # The same weights with the unseen names rotated among the unseen slots (each slot now holds another
    # colour and another texture): unseen pixels must follow their names, not their slots.
    unseen = [synthetic.CLASSES.index(n) for n in synthetic.UNSEEN]
    rotated = list(synthetic.CLASSES)
    for slot, source in zip(unseen, unseen[1:] + unseen[:1]):
        rotated[slot] = synthetic.CLASSES[source]
    swapped = evaluate(weights, tmp_path / "eval_swapped", rotated)  # measured: unseen 0.4
    assert swapped["mIoU_unseen"] < min(CHANCE, result["mIoU_unseen"] / 3), (result, swapped)
