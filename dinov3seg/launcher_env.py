"""Which process of a launched job this is: the environment that torchrun or srun set.

``torchrun`` gives every process RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. ``srun`` gives
SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NODEID and SLURM_JOB_NODELIST; the rendezvous address is then
the first host of the node list and the port is MASTER_PORT if set, else derived from SLURM_JOB_ID, so every
task of a job computes the same one. torchrun's variables win when both are present (torchrun inside srun).
A batch script (``sbatch``) also sees SLURM_NTASKS but is no srun step (no SLURM_STEP_ID, or SLURM's special id
of the batch step): it is not a launch.
"""
import os
import re
from dataclasses import dataclass
from typing import List, Mapping, Optional

__all__ = ["LauncherEnv", "launcher_env", "expand_slurm_nodelist", "slurm_port", "process_rank"]

SLURM_PORT_BASE = 20000  # ports SLURM jobs use: SLURM_PORT_BASE + SLURM_JOB_ID % SLURM_PORT_SPAN
SLURM_PORT_SPAN = 20000


@dataclass(frozen=True)
class LauncherEnv:
    """One process of a job that a launcher started: ranks, the rendezvous address and who set them."""

    launcher: str  # "torchrun" or "srun"
    rank: int
    world_size: int
    local_rank: int
    node: str  # the same for every process on one machine
    master_addr: str
    master_port: int

    def torch_env(self) -> dict:
        """The variables ``init_process_group(init_method="env://")`` reads."""
        return {"RANK": str(self.rank), "WORLD_SIZE": str(self.world_size), "LOCAL_RANK": str(self.local_rank),
                "MASTER_ADDR": self.master_addr, "MASTER_PORT": str(self.master_port)}


def launcher_env(environ: Optional[Mapping[str, str]] = None) -> Optional[LauncherEnv]:
    """The launcher's view of this process, or None when no launcher (or a one-process one) started it."""
    environ = os.environ if environ is None else environ
    if all(k in environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        env = LauncherEnv("torchrun", int(environ["RANK"]), int(environ["WORLD_SIZE"]),
                          int(environ.get("LOCAL_RANK", 0)), environ.get("GROUP_RANK", _hostname()),
                          environ["MASTER_ADDR"], int(environ["MASTER_PORT"]))
    elif "SLURM_PROCID" in environ and "SLURM_NTASKS" in environ and _is_srun_step(environ):
        nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST") or environ["SLURM_NODELIST"]
        env = LauncherEnv("srun", int(environ["SLURM_PROCID"]), int(environ["SLURM_NTASKS"]),
                          int(environ.get("SLURM_LOCALID", 0)), environ.get("SLURM_NODEID", _hostname()),
                          environ.get("MASTER_ADDR") or expand_slurm_nodelist(nodelist)[0],
                          int(environ.get("MASTER_PORT") or slurm_port(environ["SLURM_JOB_ID"])))
    else:
        return None
    if not 0 <= env.rank < env.world_size:
        raise ValueError(f"{env.launcher} set rank {env.rank} outside a world of {env.world_size} processes")
    return env if env.world_size > 1 else None


def process_rank() -> int:
    """This process's rank: the process group's once it exists, else the launcher's, else 0."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    try:
        env = launcher_env()
    except (ValueError, KeyError, IndexError):
        return 0
    return env.rank if env else 0


def slurm_port(job_id: str) -> int:
    """A rendezvous port every task of SLURM job ``job_id`` agrees on (array jobs: "123_4" uses 123's
    digits too, so two array tasks sharing a node may collide: set MASTER_PORT for those)."""
    digits = re.sub(r"\D", "", str(job_id))
    return SLURM_PORT_BASE + int(digits or 0) % SLURM_PORT_SPAN


def expand_slurm_nodelist(nodelist: str) -> List[str]:
    """SLURM's compressed host list as host names, in order:
    ``"gpu[01-03,07],cpu5"`` -> ``["gpu01", "gpu02", "gpu03", "gpu07", "cpu5"]`` (zero padding kept; several
    bracket groups in one name, ``"r[1-2]n[1-2]"``, expand to every combination)."""
    patterns = re.findall(r"(?:[^,\[\]]|\[[^\[\]]*\])+", nodelist)  # commas outside brackets separate names
    if not patterns or ",".join(patterns) != nodelist:
        raise ValueError(f"cannot read the SLURM node list {nodelist!r}")
    hosts = []
    for pattern in patterns:
        names = [""]
        for literal, ranges in re.findall(r"([^\[]*)(\[[^\]]*\])?", pattern):
            suffixes = _expand_ranges(ranges[1:-1], nodelist) if ranges else [""]
            names = [name + literal + suffix for name in names for suffix in suffixes]
        hosts.extend(names)
    return hosts


def _expand_ranges(ranges: str, nodelist: str) -> List[str]:
    """``"01-03,07"`` -> ``["01", "02", "03", "07"]``."""
    out = []
    for part in ranges.split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        if not match:
            raise ValueError(f"cannot read the SLURM node list {nodelist!r} (at {part!r})")
        first, last = match.group(1), match.group(2) or match.group(1)
        out += [str(i).zfill(len(first)) for i in range(int(first), int(last) + 1)]
    return out


SLURM_SPECIAL_STEPS = 0xFFFFFFF0  # step ids from here up: the batch script, an interactive shell, extern


def _is_srun_step(environ: Mapping[str, str]) -> bool:
    """An srun step has a step id; the batch script has none, or one of SLURM's special ids."""
    step = environ.get("SLURM_STEP_ID", environ.get("SLURM_STEPID", ""))
    return step.isdigit() and int(step) < SLURM_SPECIAL_STEPS


def _hostname() -> str:
    import socket

    return socket.gethostname()
