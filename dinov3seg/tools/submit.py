"""Submit training (or evaluation) to SLURM with submitit, requeued with --resume after preemption.

    python -m dinov3seg.tools.submit --config-file configs/vitl_384.yaml --nodes 2 --gpus-per-node 8 \\
        --partition learn --time 72:00:00 [--eval] [--opts KEY VALUE ...]

Training runs one task per GPU (nodes x gpus-per-node processes of train_net.py joining one process group).
Before a timeout or on preemption submitit signals the job (USR2, --signal-delay seconds ahead): training
saves OUTPUT_DIR/model_<iteration>.pth after the step in flight and the job is requeued to continue there
with --resume (timeouts at most --max-timeouts times). --eval runs eval.sh on one node instead (every
benchmark, OUTPUT_DIR/results.md). The config is read here first, so a bad key fails before anything is
queued. Job files and each task's log: --job-dir (default OUTPUT_DIR/submitit), <job id>_<task>_log.{out,err}.
--cluster local runs the same job on this machine with submitit's local executor (no SLURM). See
docs/distributed.md.
"""
import argparse
import re
import shutil
import sys
from pathlib import Path
from typing import List, Optional

from ..config import load_config
from ..errors import ConfigError, exit_on_input_error
from ..jobs import EvalJob, TrainNetJob

PROG = "python -m dinov3seg.tools.submit"


def parse_time(text: str) -> float:
    """SLURM's ``[D-]HH:MM:SS`` (or ``MM:SS``, ``MM``) as minutes."""
    match = re.fullmatch(r"(?:(\d+)-)?(?:(?:(\d+):)?(\d+):)?(\d+)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"--time {text!r}: expected HH:MM:SS (or D-HH:MM:SS)")
    days, hours, minutes, last = (int(g) if g else 0 for g in match.groups())
    if match.group(3) is None:  # a bare number is minutes, as for sbatch
        return float(days * 1440 + last)
    return days * 1440 + hours * 60 + minutes + last / 60


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="training config, e.g. configs/vitl_384.yaml")
    parser.add_argument("--nodes", type=int, default=1, help="machines (default 1)")
    parser.add_argument("--gpus-per-node", type=int, default=1,
                        help="GPUs per machine = training processes per machine (default 1); with MODEL.DEVICE cpu "
                             "no GPU is requested and the processes run on the CPU")
    parser.add_argument("--partition", help="SLURM partition (default: the cluster's)")
    parser.add_argument("--time", type=parse_time, default=parse_time("24:00:00"),
                        help="time limit of one run, HH:MM:SS (default 24:00:00); a timed-out run is requeued")
    parser.add_argument("--eval", action="store_true", help="run eval.sh (all benchmarks) instead of training")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last_checkpoint")
    parser.add_argument("--job-dir", help="submitit's folder for job files and logs (default OUTPUT_DIR/submitit)")
    parser.add_argument("--name", default="dinov3seg", help="job name (default dinov3seg)")
    parser.add_argument("--cpus-per-task", type=int, default=8, help="CPU cores per process (data loading)")
    parser.add_argument("--mem-per-gpu", help="memory per GPU, SLURM syntax (e.g. 64G)")
    parser.add_argument("--account")
    parser.add_argument("--qos")
    parser.add_argument("--constraint")
    parser.add_argument("--signal-delay", type=int, default=120,
                        help="seconds before the time limit at which the job is told to save (default 120)")
    parser.add_argument("--max-timeouts", type=int, default=20,
                        help="requeues after timeouts before giving up (preemptions are not counted; default 20)")
    parser.add_argument("--cluster", choices=("slurm", "local"),
                        help="slurm (default where sbatch exists) or local (this machine, submitit's local executor)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ... (last)")
    return parser


def make_executor(args, folder: Path, tasks_per_node: int, nodes: int, gpus: int):
    """A submitit executor for ``nodes`` x ``tasks_per_node`` tasks with ``gpus`` GPUs per node."""
    import submitit

    cluster = args.cluster or ("slurm" if shutil.which("sbatch") else None)
    if cluster is None:
        raise ConfigError("--cluster: no sbatch on this machine: submit from a SLURM login node, or pass "
                          "--cluster local to run the job here")
    if cluster == "local":
        if nodes > 1:
            raise ConfigError(f"--nodes {nodes}: --cluster local runs on this machine only (--nodes 1)")
        executor = submitit.LocalExecutor(folder, max_num_timeout=args.max_timeouts)
        executor.update_parameters(timeout_min=args.time, tasks_per_node=tasks_per_node, gpus_per_node=gpus,
                                   signal_delay_s=args.signal_delay)
        return executor
    executor = submitit.SlurmExecutor(folder, max_num_timeout=args.max_timeouts)
    extra = {k: v for k, v in (("partition", args.partition), ("account", args.account), ("qos", args.qos),
                               ("constraint", args.constraint), ("mem_per_gpu", args.mem_per_gpu)) if v}
    executor.update_parameters(job_name=args.name, nodes=nodes, ntasks_per_node=tasks_per_node,
                               gpus_per_node=gpus or None, cpus_per_task=args.cpus_per_task,
                               time=max(1, int(-(-args.time // 1))), signal_delay_s=args.signal_delay, **extra)
    return executor


def submit(args):
    """Read the config, build the job and the executor, submit; returns the submitit job."""
    if args.nodes < 1 or args.gpus_per_node < 1:
        raise ConfigError(f"--nodes {args.nodes} --gpus-per-node {args.gpus_per_node}: both must be at least 1")
    cfg = load_config(args.config_file, args.opts)
    gpus = 0 if cfg.MODEL.DEVICE == "cpu" else args.gpus_per_node
    out_dir = Path(cfg.OUTPUT_DIR).resolve()
    folder = Path(args.job_dir or out_dir / "submitit").resolve() / "%j"
    config = str(Path(args.config_file).resolve())
    if args.eval:
        if args.nodes != 1:
            raise ConfigError(f"--nodes {args.nodes} with --eval: eval.sh runs on one node (--nodes 1)")
        job = EvalJob(config, gpus, str(out_dir), args.opts)  # eval.sh: 0 GPUs = on the CPU
        executor = make_executor(args, folder, tasks_per_node=1, nodes=1, gpus=gpus)
    else:
        argv = ["--config-file", config, *(["--resume"] if args.resume else []), *args.opts, "OUTPUT_DIR", str(out_dir)]
        job = TrainNetJob(argv)
        executor = make_executor(args, folder, tasks_per_node=args.gpus_per_node, nodes=args.nodes, gpus=gpus)
    return executor.submit(job)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    with exit_on_input_error(PROG):
        job = submit(args)
    print(f"Submitted job {job.job_id}; logs: {job.paths.stdout.parent}/{job.job_id}_<task>_log.{{out,err}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
