"""Multi-process launch that also works without GPUs, and under torchrun or srun.

Detectron2 0.6's ``launch`` asserts CUDA and always uses NCCL, and its ``create_ddp_model`` passes
``device_ids=[local_rank]``, which DistributedDataParallel rejects for CPU modules. With GPUs we call
Detectron2 unchanged; on CPU we start the processes ourselves with the gloo backend and set up the
same process groups Detectron2's ``comm`` utilities expect. When a launcher (torchrun, srun, a submitit
job) has started this process as one of several (:func:`dinov3seg.launcher_env.launcher_env`), nothing is
spawned: the process joins the launcher's process group (``env://``; NCCL with CUDA, gloo without).
"""
import logging
import os

import detectron2.engine.defaults as d2_defaults
import detectron2.utils.comm as comm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch
from detectron2.engine.launch import DEFAULT_TIMEOUT, _find_free_port

from .errors import ConfigError
from .launcher_env import LauncherEnv, launcher_env

_d2_create_ddp_model = d2_defaults.create_ddp_model


def create_ddp_model(model, **kwargs):
    """Detectron2's ``create_ddp_model``, with ``device_ids=None`` for CPU models and the model's own GPU
    otherwise (a launcher may show each process one GPU only, whatever its local rank)."""
    if comm.get_world_size() > 1:
        device = next(model.parameters()).device
        kwargs.setdefault("device_ids", None if device.type == "cpu" else [device.index])
    return _d2_create_ddp_model(model, **kwargs)


d2_defaults.create_ddp_model = create_ddp_model  # DefaultTrainer looks it up in this module


def launch(main_func, num_gpus_per_machine: int, num_machines: int = 1, machine_rank: int = 0,
           dist_url: str = None, args=()):
    """Run ``main_func(*args)`` in ``num_gpus_per_machine`` processes per machine.

    With CUDA this is Detectron2's launch; without, the processes run on the CPU with gloo. Started by a
    launcher as one of several processes, this process joins the launcher's group instead and runs
    ``main_func`` itself; ``num_gpus_per_machine`` and ``num_machines`` must then be 1 (their defaults).
    """
    world_size = num_machines * num_gpus_per_machine
    env = launcher_env()
    if env is not None:
        if world_size > 1:
            raise ConfigError(
                f"{env.launcher} started this process as rank {env.rank} of {env.world_size}: drop --num-gpus "
                f"{num_gpus_per_machine} / --num-machines {num_machines} (each process the launcher starts "
                "uses one GPU; the launcher sets the number of processes)")
        return _join_launcher_group(env, main_func, args)
    if world_size == 1 or torch.cuda.is_available():
        return d2_launch(main_func, num_gpus_per_machine, num_machines, machine_rank, dist_url, args=args)
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("dist_url=auto only works on one machine; pass --dist-url tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    mp.start_processes(_cpu_worker, nprocs=num_gpus_per_machine, start_method="spawn", daemon=False,
                       args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args))


def _cpu_worker(local_rank, main_func, world_size, num_per_machine, machine_rank, dist_url, args):
    rank = machine_rank * num_per_machine + local_rank
    _share_cpu_threads(num_per_machine)
    try:
        dist.init_process_group("gloo", init_method=dist_url, world_size=world_size, rank=rank)
    except Exception as err:
        logging.getLogger(__name__).error(f"Process group URL: {dist_url}")
        raise err
    for machine in range(world_size // num_per_machine):
        group = dist.new_group(list(range(machine * num_per_machine, (machine + 1) * num_per_machine)))
        if machine == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    main_func(*args)


def images_per_process(total_batch: int, world_size: int) -> int:
    """SOLVER.IMS_PER_BATCH is the batch of one iteration over all processes; each loads its share."""
    if total_batch % world_size:
        splits = [n for n in range(1, total_batch + 1) if total_batch % n == 0]
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH {total_batch} (the batch of one iteration, over all processes) does not split "
            f"over {world_size} processes: run {', '.join(map(str, splits))} processes for this batch, or set "
            f"SOLVER.IMS_PER_BATCH to a multiple of {world_size} (a different recipe; docs/distributed.md)")
    return total_batch // world_size


def _share_cpu_threads(processes_per_machine: int) -> None:
    """N processes with all threads each oversubscribe the CPU and crawl: give each its share of the cores,
    unless OMP_NUM_THREADS says how many (torchrun sets 1)."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // processes_per_machine))


def _join_launcher_group(env: LauncherEnv, main_func, args):
    """Join the process group of the job ``env`` describes, set up Detectron2's per-machine group, run."""
    os.environ.update(env.torch_env())
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())  # one GPU visible per task: 0
        backend = "nccl"
    else:
        backend = "gloo"
    try:
        dist.init_process_group(backend, init_method="env://", timeout=DEFAULT_TIMEOUT)
    except Exception:
        logging.getLogger(__name__).error(
            f"{env.launcher}: could not join the process group at {env.master_addr}:{env.master_port} as rank "
            f"{env.rank} of {env.world_size}")
        raise
    nodes = [None] * env.world_size
    dist.all_gather_object(nodes, str(env.node))  # which ranks share a machine, however the launcher placed them
    machines = sorted(set(nodes), key=nodes.index)
    for machine in machines:
        group = dist.new_group([r for r, node in enumerate(nodes) if node == machine])  # every rank, same order
        if machine == str(env.node):
            comm._LOCAL_PROCESS_GROUP = group
    if backend == "gloo":
        _share_cpu_threads(comm.get_local_size())
    comm.synchronize()
    return main_func(*args)
