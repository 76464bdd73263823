"""Preemption: SIGTERM / SIGUSR1 save the current iteration, all ranks agree, --resume continues exactly there."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FAST = ["SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()"]


def env():
    return dict(os.environ, DETECTRON2_DATASETS=os.environ.get("DETECTRON2_DATASETS", str(REPO / "datasets")))


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler installed for ``signum`` (Linux /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(re.search(r"^SigCgt:\s*([0-9a-f]+)", status, re.M).group(1), 16)
    return bool(mask >> (signum - 1) & 1)


def train_until_signalled(tmp_path, log, extra_args, ready, signum=signal.SIGTERM) -> str:
    """Start train_net.py (quickstart, endless), wait until ``ready(pid)``, let a few iterations run, send
    ``signum`` to the started process and return its log once it has exited cleanly."""
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "train_net.py", "--config-file", "configs/quickstart.yaml", *extra_args,
             "OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", "100000", "SOLVER.CHECKPOINT_PERIOD", "100000", *FAST],
            cwd=REPO, env=env(), stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 600
        while not ready(proc.pid):
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(1.0)  # let a few iterations run
        proc.send_signal(signum)
        assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    return log.read_text()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc to see the signal handler")
@pytest.mark.parametrize("signum", [signal.SIGTERM])
def test_signal_saves_the_current_iteration_and_resume_continues_there(tmp_path, signum):
    log = tmp_path / "train.log"
    # training has started when the hook's handler is installed
    text = train_until_signalled(tmp_path, log, [], lambda pid: catches(pid, signum), signum)
    match = re.search(rf"Preempted \({signal.Signals(signum).name}\) after iteration (\d+): saved (model_\d+)\.pth", text)
    assert match, text[-3000:]
    assert "Traceback" not in text and "Exception during training" not in text
    stopped, name = int(match.group(1)), match.group(2)
    assert name == f"model_{stopped:07d}"
    assert (tmp_path / "last_checkpoint").read_text() == f"{name}.pth"
    assert torch.load(tmp_path / f"{name}.pth", weights_only=True)["iteration"] == stopped
    assert not (tmp_path / "model_final.pth").exists()
    assert not list(tmp_path.glob(".*.tmp*"))  # no temporary file left behind

    resumed = subprocess.run(
        [sys.executable, "train_net.py", "--config-file", "configs/quickstart.yaml", "--resume", "OUTPUT_DIR",
         str(tmp_path), "SOLVER.MAX_ITER", str(stopped + 3), *FAST],
        cwd=REPO, env=env(), capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    out = resumed.stdout + resumed.stderr
    assert f"Starting training from iteration {stopped + 1}" in out
    assert torch.load(tmp_path / "model_final.pth", weights_only=True)["iteration"] == stopped + 2


def workers(pid: int):
    """The training processes ``pid`` spawned (not e.g. multiprocessing's resource tracker)."""
    pids = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return [c for c in pids if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


@pytest.mark.slow  # trains in 2 processes; the all-rank agreement itself is covered by the test below
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc to see the signal handler")
def test_sigterm_to_the_launcher_of_two_processes_checkpoints_once(tmp_path):
    """--num-gpus 2 on the CPU: the launcher passes SIGTERM on; both ranks stop after the same step."""
    log = tmp_path / "train.log"
    text = train_until_signalled(  # the signal goes to the launcher only
        tmp_path, log, ["--num-gpus", "2"],
        lambda pid: len(workers(pid)) == 2 and all(catches(c, signal.SIGTERM) for c in workers(pid)))
    stops = re.findall(r"Preempted \((SIGTERM|a signal on another rank)\) after iteration (\d+)", text)
    assert stops and len({it for _, it in stops}) == 1, text[-3000:]
    saved = sorted(p.name for p in tmp_path.glob("model_*.pth"))
    assert saved == [f"model_{int(stops[0][1]):07d}.pth"]


def test_all_ranks_stop_after_the_same_step_when_one_is_signalled(tmp_path):
    """Rank 1 alone gets SIGUSR1 during step 2; the all_reduce makes both ranks stop after step 2."""
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "preemption_worker.py"), str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["stopped_at"] == rank1["stopped_at"] == 2
    assert rank0["received"] is None and rank1["received"] == "SIGUSR1"
    assert rank0["saved"] == [["model_0000002", 2]] and rank1["saved"] == []  # main process only
    assert rank0["restored"] and rank1["restored"]  # the default handlers are back after training

