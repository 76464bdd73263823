"""What one task of a submitit job runs: ``train_net.py`` (requeued with ``--resume`` after a preemption or
timeout) or ``eval.sh``. Built and submitted by ``python -m dinov3seg.tools.submit``.

Each task is one process (one GPU): :class:`TrainNetJob` gives it the rendezvous variables torchrun would
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR = the job's first host, MASTER_PORT = $MASTER_PORT or derived from
the job id), so ``train_net.py`` joins the job's process group as under torchrun, on SLURM and with submitit's
local executor alike. On submitit's signal the training saves its current iteration and rank 0 calls
submitit's handler (:func:`dinov3seg.preemption.requeue_submitit_job`), which asks :meth:`checkpoint` for
the job to requeue: the same command with ``--resume``. A job SLURM itself requeued (SLURM_RESTART_COUNT > 0)
resumes too.
"""
import os
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from .launcher_env import slurm_port

__all__ = ["TrainNetJob", "EvalJob", "REPO"]

REPO = Path(__file__).resolve().parents[1]  # train_net.py and eval.sh live here


class TrainNetJob:
    """``train_net.py ARGV`` as one task of a submitit job (a checkpointable callable)."""

    def __init__(self, argv: Sequence[str]):
        self.argv = list(argv)

    def __call__(self) -> None:
        import submitit

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            os.environ.update(rendezvous_env(env))
        resume = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0
        argv = (["--resume"] if resume and "--resume" not in self.argv else []) + self.argv
        sys.argv = [str(REPO / "train_net.py"), *argv]
        try:
            runpy.run_path(sys.argv[0], run_name="__main__")
        except SystemExit as stop:  # train_net.py's exit status is the task's (2: input error, reported)
            if stop.code not in (None, 0):
                raise

    def checkpoint(self, *args, **kwargs):
        """The job submitit requeues after a preemption or timeout: this one, resuming."""
        import submitit

        argv = self.argv if "--resume" in self.argv else ["--resume", *self.argv]
        return submitit.helpers.DelayedSubmission(TrainNetJob(argv))


class EvalJob:
    """``eval.sh CONFIG GPUS OUTDIR OPTS`` as the one task of a one-node submitit job; returns its exit
    status. Requeued after a preemption, it evaluates every benchmark again."""

    def __init__(self, config: str, gpus: int, out_dir: str, opts: Sequence[str] = ()):
        self.config, self.gpus, self.out_dir, self.opts = config, gpus, out_dir, list(opts)

    def __call__(self) -> int:
        command = ["bash", str(REPO / "eval.sh"), self.config, str(self.gpus), self.out_dir, *self.opts]
        return subprocess.run(command, cwd=os.getcwd()).returncode

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def rendezvous_env(job_env) -> dict:
    """torchrun's variables for this task of a submitit job (``submitit.JobEnvironment``)."""
    first_host = "127.0.0.1" if job_env.cluster in ("local", "debug") else job_env.hostnames[0]
    return {"RANK": str(job_env.global_rank), "WORLD_SIZE": str(job_env.num_tasks),
            "LOCAL_RANK": str(job_env.local_rank), "GROUP_RANK": str(job_env.node),
            "MASTER_ADDR": os.environ.get("MASTER_ADDR", first_host),
            "MASTER_PORT": os.environ.get("MASTER_PORT", str(slurm_port(job_env.job_id)))}
