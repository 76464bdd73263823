"""Preemption-safe training: on SIGTERM / SIGUSR1, checkpoint the current iteration and stop cleanly.

Cluster schedulers send SIGTERM (SLURM also SIGUSR1 with ``--signal``) some time before they kill a job.
:class:`PreemptionCheckpointer`, a Detectron2 hook, turns the signal into a flag; after the step in flight
(every hook's ``after_step`` included, so the LR scheduler has stepped) all ranks agree on the flag with an
``all_reduce`` (MAX), the main process saves ``model_<iter>.pth`` with that iteration, every rank waits for
the save, and training ends by raising :class:`TrainingPreempted`, which ``train_net.py`` catches to exit
with status 0. ``--resume`` then continues from the next iteration, exactly where the run stopped.
With several processes per machine, :func:`forward_signals_to_workers` makes the launching process pass
the signal on to its training processes, so a signal sent to the launcher alone is not lost.
In a submitit job (``python -m dinov3seg.tools.submit``) the hook also catches submitit's own preemption /
timeout signal (USR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise), and after the save
:func:`requeue_submitit_job` hands over to submitit, which requeues the job to continue with ``--resume``.
"""
import logging
import multiprocessing
import os
import signal

import detectron2.utils.comm as comm
import torch
import torch.distributed as dist
from detectron2.engine import HookBase

__all__ = ["PREEMPTION_SIGNALS", "PreemptionCheckpointer", "TrainingPreempted", "forward_signals_to_workers",
           "preemption_signals", "requeue_submitit_job"]

PREEMPTION_SIGNALS = tuple(s for s in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)) if s is not None)

logger = logging.getLogger(__name__)


class TrainingPreempted(BaseException):
    """Training stopped on a preemption signal after saving a checkpoint. A BaseException, so Detectron2's
    training loop does not log it as a failure; its hooks' ``after_train`` still run."""


class PreemptionCheckpointer(HookBase):
    """On a preemption signal, save a checkpoint after the current step and stop training (module doc).

    Must be the last hook, so the checkpoint holds the state every other hook left after the step.
    """

    def __init__(self, checkpointer, signals=None):
        self.checkpointer = checkpointer
        self.signals = tuple(preemption_signals() if signals is None else signals)
        self.received = None  # name of the first signal received
        self._previous_handlers = {}

    def _on_signal(self, signum, frame):
        self.received = self.received or signal.Signals(signum).name  # only a flag: the step in flight finishes

    def before_train(self):
        self._previous_handlers = {s: signal.signal(s, self._on_signal) for s in self.signals}

    def after_train(self):
        for s, handler in self._previous_handlers.items():
            signal.signal(s, handler)
        self._previous_handlers = {}

    def stop_requested(self) -> bool:
        """Whether any rank has received a signal (a collective call: every rank must make it)."""
        flag = 1 if self.received else 0
        if comm.get_world_size() == 1:
            return bool(flag)
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([flag], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def after_step(self):
        if not self.stop_requested():
            return
        iteration = self.trainer.iter
        name = f"model_{iteration:07d}"
        self.checkpointer.save(name, iteration=iteration)  # writes on the main process only
        comm.synchronize()
        reason = self.received or "a signal on another rank"
        message = (f"Preempted ({reason}) after iteration {iteration}: saved {name}.pth in "
                   f"{self.checkpointer.save_dir}. Rerun the same command with --resume to continue from "
                   f"iteration {iteration + 1}.")
        logger.warning(message)
        raise TrainingPreempted(message)


def forward_signals_to_workers(signals=PREEMPTION_SIGNALS) -> None:
    """In a process that only launches training processes: pass preemption signals on to them (they
    checkpoint and exit; the launcher returns when they do). With none running yet, the signal keeps its
    default effect."""

    def forward(signum, frame):
        workers = multiprocessing.active_children()
        if not workers:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        for worker in workers:
            os.kill(worker.pid, signum)

    for s in signals:
        signal.signal(s, forward)


def submitit_signal(environ=None):
    """The signal submitit sends a job before a timeout or preemption (SUBMITIT_PREEMPT_SIGNAL, default
    USR2), or None outside a submitit job."""
    environ = os.environ if environ is None else environ
    if not environ.get("SUBMITIT_EXECUTOR"):
        return None
    return getattr(signal, "SIG" + environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)


def preemption_signals(environ=None) -> tuple:
    """SIGTERM and SIGUSR1, and in a submitit job submitit's signal too."""
    extra = submitit_signal(environ)
    return PREEMPTION_SIGNALS + ((extra,) if extra is not None and extra not in PREEMPTION_SIGNALS else ())


def requeue_submitit_job() -> None:
    """After a preemption stop in a submitit job: on rank 0, run the handler submitit installed for its
    signal, which calls the job's ``checkpoint()`` (the same job with ``--resume``), requeues it and exits
    the process. Elsewhere (other ranks, no submitit) it does nothing: the caller returns as usual."""
    signum = submitit_signal()
    if signum is None or not comm.is_main_process():
        return
    handler = signal.getsignal(signum)
    if type(getattr(handler, "__self__", None)).__module__.startswith("submitit."):
        logger.warning("Handing over to submitit to requeue this job.")
        handler(signum, None)
