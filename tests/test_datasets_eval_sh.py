"""eval.sh: one run per benchmark, missing data reported with the prepare command, one results table."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from datasets_synthetic_raw import REPO, make_all, make_voc, run_prepare
from dinov3seg.data.datasets import BENCHMARKS

FAKE_TRAIN_NET = textwrap.dedent('''
    """Stands in for train_net.py --eval-only: checks the arguments and writes eval_results.json."""
    import json, os, sys
    args = sys.argv[1:]
    assert args[:2] == ["--config-file", sys.argv[2]] and "--eval-only" in args
    opts = dict(zip(args[5::2], args[6::2]))
    name = opts["DATASETS.TEST"].strip("()\\"',")
    assert opts["TEST.LGA.ENABLED"] == "True" and opts["MODEL.DEVICE"] == "cpu" and args[4] == "1"
    assert opts["MODEL.DINOV3SEG.CLASS_POOLING"] == "[1,1]"  # CAT-Seg's test protocol
    if name == "voc_2012_background_sem_seg_val":
        sys.exit("boom")  # a failing benchmark
    os.makedirs(opts["OUTPUT_DIR"], exist_ok=True)
    with open(os.path.join(opts["OUTPUT_DIR"], "eval_results.json"), "w") as f:
        json.dump({name: {"sem_seg": {"mIoU": 40.0 + len(name) / 10, "mIoU_seen": 50.0, "mIoU_unseen": 25.0,
                                      "hIoU": 33.33, "weights": opts["MODEL.WEIGHTS"]}}}, f)
''')


def run_eval_sh(outdir, root, *opts, train_net=None):
    env = dict(os.environ, DETECTRON2_DATASETS=str(root), PYTHON=sys.executable)
    if train_net:
        env["TRAIN_NET"] = str(train_net)
    config = REPO / "configs" / "quickstart.yaml"
    if not config.exists():
        config = outdir / "config.yaml"
        config.write_text("{}\n")
    return subprocess.run(["bash", str(REPO / "eval.sh"), str(config), "0", str(outdir), *opts],
                          env=env, capture_output=True, text=True, timeout=1800, cwd=REPO)


def test_eval_sh_table_with_missing_and_failed_benchmarks(tmp_path):
    root, out = tmp_path / "datasets", tmp_path / "out"
    out.mkdir()
    (out / "model_final.pth").write_bytes(b"")
    make_voc(root)  # only PAS-20 / PAS-20b have data
    assert run_prepare("prepare_voc.py", root).returncode == 0
    fake = tmp_path / "fake_train_net.py"
    fake.write_text(FAKE_TRAIN_NET)
    result = run_eval_sh(out, root, train_net=fake)
    assert result.returncode == 1, result.stdout + result.stderr
    rows = {r["dataset"]: r for r in json.loads((out / "results.json").read_text())["benchmarks"]}
    assert list(rows) == list(BENCHMARKS)
    pas20 = rows["voc_2012_sem_seg_val"]
    assert pas20["status"] == "ok" and pas20["mIoU"] == pytest.approx(42.0)
    assert pas20["paper_mIoU"] == 97.86 and pas20["diff"] == pytest.approx(42.0 - 97.86)
    assert (pas20["mIoU_seen"], pas20["mIoU_unseen"], pas20["hIoU"]) == (50.0, 25.0, 33.33)
    assert rows["voc_2012_background_sem_seg_val"]["status"] == "failed"
    a847 = rows["ade20k_full_sem_seg_val"]
    assert a847["status"] == "missing" and "python datasets/prepare_ade20k_full.py" in a847["note"]
    assert "prepare_ade20k_full.py" in result.stderr  # reported while the others run
    table = (out / "results.md").read_text()
    assert table.count("\n| ") == 1 + 6 and "| PAS-20 | `voc_2012_sem_seg_val` | 42.00 | 97.86 | -55.86 |" in table
    # OPTS come last: MODEL.WEIGHTS can be overridden.
    result = run_eval_sh(out, root, "MODEL.WEIGHTS", "other.pth", train_net=fake)
    weights = json.loads((out / "eval/voc_2012_sem_seg_val/eval_results.json").read_text())
    assert weights["voc_2012_sem_seg_val"]["sem_seg"]["weights"] == "other.pth"


def test_eval_sh_usage_errors(tmp_path):
    result = subprocess.run(["bash", str(REPO / "eval.sh")], capture_output=True, text=True)
    assert result.returncode == 2 and "CONFIG NGPUS OUTDIR" in result.stdout
    result = run_eval_sh(tmp_path, tmp_path)
    assert result.returncode == 2 and "model_final.pth not found" in result.stderr


def test_eval_sh_end_to_end_with_the_quickstart_model(tmp_path):
    """Synthetic raw releases -> prepare -> quickstart training -> eval.sh on all six benchmarks."""
    for needed in ("train_net.py", "configs/quickstart.yaml"):
        if not (REPO / needed).exists():
            pytest.skip(f"{needed} does not exist yet")
    root, out = tmp_path / "datasets", tmp_path / "out"
    make_all(root)
    env = dict(os.environ, DETECTRON2_DATASETS=str(root))
    train = subprocess.run([sys.executable, "train_net.py", "--config-file", "configs/quickstart.yaml",
                            "--num-gpus", "1", "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "20",
                            "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()"], env=env, cwd=REPO, capture_output=True, text=True,
                           timeout=1800)
    assert train.returncode == 0 and (out / "model_final.pth").exists(), train.stdout[-3000:] + train.stderr[-3000:]
    result = run_eval_sh(out, root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())["benchmarks"]
    assert len(rows) == 6 and all(r["status"] == "ok" and 0 <= r["mIoU"] <= 100 for r in rows)
    assert all("mIoU_unseen" in r for r in rows)  # quickstart.yaml turns TEST.SEEN_UNSEEN on
    print((out / "results.md").read_text())


def test_eval_sh_stops_on_an_input_error_with_one_line(tmp_path):
    """train_net.py exits 2 on bad input (weights, config, data): eval.sh shows its line and stops with 2."""
    root, out = tmp_path / "datasets", tmp_path / "out"
    out.mkdir()
    (out / "model_final.pth").write_bytes(b"")
    make_voc(root)
    assert run_prepare("prepare_voc.py", root).returncode == 0
    fake = tmp_path / "fake_train_net.py"
    fake.write_text("import sys\nprint('some log line')\n"
                    "print(\"train_net.py: error: MODEL.WEIGHTS: cannot read 'x.pth'\", file=sys.stderr)\nsys.exit(2)\n")
    result = run_eval_sh(out, root, train_net=fake)
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("eval.sh: ")]
    assert len(errors) == 1 and "error: MODEL.WEIGHTS: cannot read 'x.pth' (stopped; log:" in errors[0]
    assert len(list((out / "eval").glob("*/eval.log"))) == 1  # the other benchmark did not run
    assert "Traceback" not in result.stderr
