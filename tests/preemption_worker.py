"""Two CPU processes (gloo) with a PreemptionCheckpointer each, where only rank 1 receives SIGUSR1 (SLURM's
``--signal``): both
must stop after the same step, and only the main process saves. Run by tests/test_preemption.py as a script
so that spawn can re-import it; writes rank<r>.json into the folder given as argument."""
import json
import os
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import detectron2.utils.comm as comm  # noqa: E402
from dinov3seg.engine import launch  # noqa: E402
from dinov3seg.preemption import PreemptionCheckpointer, TrainingPreempted  # noqa: E402


class RecordingCheckpointer:
    save_dir = "(test)"

    def __init__(self):
        self.saved = []

    def save(self, name, **extra):
        if comm.is_main_process():  # as DetectionCheckpointer: only the main process writes
            self.saved.append([name, extra["iteration"]])


def worker(out_dir):
    rank = comm.get_rank()
    checkpointer = RecordingCheckpointer()
    hook = PreemptionCheckpointer(checkpointer)
    hook.trainer = SimpleNamespace(iter=0)
    hook.before_train()
    stopped_at = None
    for step in range(5):
        hook.trainer.iter = step
        if step == 2 and rank == 1:
            os.kill(os.getpid(), signal.SIGUSR1)  # a real signal, to this rank only
        try:
            hook.after_step()
        except TrainingPreempted:
            stopped_at = step
            break
    hook.after_train()
    restored = signal.getsignal(signal.SIGTERM) == signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(
        {"stopped_at": stopped_at, "saved": checkpointer.saved, "received": hook.received, "restored": restored}))


if __name__ == "__main__":
    launch(worker, 2, dist_url="auto", args=(sys.argv[1],))
