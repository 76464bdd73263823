"""Multi-process launch that also works without GPUs.

Detectron2 0.6's ``launch`` asserts CUDA and always uses NCCL, and its ``create_ddp_model`` passes
``device_ids=[local_rank]``, which DistributedDataParallel rejects for CPU modules. With GPUs we call
Detectron2 unchanged; on CPU we start the processes ourselves with the gloo backend and set up the
same process groups Detectron2's ``comm`` utilities expect.
"""
import logging
import os

import detectron2.engine.defaults as d2_defaults
import detectron2.utils.comm as comm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch
from detectron2.engine.launch import _find_free_port

_d2_create_ddp_model = d2_defaults.create_ddp_model


def create_ddp_model(model, **kwargs):
    """Detectron2's ``create_ddp_model``, with ``device_ids=None`` for CPU models."""
    if comm.get_world_size() > 1 and next(model.parameters()).device.type == "cpu":
        kwargs.setdefault("device_ids", None)
    return _d2_create_ddp_model(model, **kwargs)


d2_defaults.create_ddp_model = create_ddp_model  # DefaultTrainer looks it up in this module


def launch(main_func, num_gpus_per_machine: int, num_machines: int = 1, machine_rank: int = 0,
           dist_url: str = None, args=()):
    """Run ``main_func(*args)`` in ``num_gpus_per_machine`` processes per machine.

    With CUDA this is Detectron2's launch; without, the processes run on the CPU with gloo.
    """
    world_size = num_machines * num_gpus_per_machine
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
    # Share the cores: N processes with all threads each oversubscribe the CPU and crawl.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_per_machine))
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
