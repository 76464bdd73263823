"""train_net.py under torchrun and srun: the process group comes from the launcher's environment, and an
input error is reported once, by rank 0 (2 CPU processes, gloo, a few quickstart iterations)."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dinov3seg.errors import ConfigError
from dinov3seg.launcher_env import expand_slurm_nodelist, launcher_env, slurm_port

REPO = Path(__file__).resolve().parents[1]
QUICK = ["SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "TEST.EVAL_PERIOD", "0",
         "DATASETS.TEST", "()"]


def train_net(*flags, opts=()):
    """train_net.py's command line: 3 quickstart iterations, no evaluation."""
    return ["train_net.py", "--config-file", "configs/quickstart.yaml", *flags, *QUICK, *opts]


def env(**extra):
    """This environment with one thread per process, no launcher variables of our own, plus ``extra``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_")) and k not in (
        "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")}
    base.update(DETECTRON2_DATASETS=os.environ.get("DETECTRON2_DATASETS", str(REPO / "datasets")), OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return {**base, **extra}


def free_port(low: int = 0, high: int = 0) -> int:
    """A port nobody listens on: any (``low == 0``), or the first free one in [low, high)."""
    for port in range(low, high) if low else [0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError(f"no free port in [{low}, {high})")


def run(args, **extra):
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env(**extra), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def srun_tasks(args, job_id: int, nodelist="localhost", **extra):
    """Start ``args`` as the 2 tasks of an srun step on one node; returns the finished processes."""
    procs = [subprocess.Popen(
        [sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env(SLURM_JOB_ID=str(job_id), SLURM_STEP_ID="0", SLURM_NTASKS="2", SLURM_PROCID=str(rank),
                SLURM_LOCALID=str(rank), SLURM_NODEID="0", SLURM_JOB_NODELIST=nodelist, SLURM_NODELIST=nodelist,
                **extra)) for rank in (0, 1)]
    for proc in procs:
        proc.stdout_text, proc.stderr_text = proc.communicate(timeout=600)
    return procs


def weights(out_dir: Path) -> dict:
    saved = torch.load(out_dir / "model_final.pth", weights_only=True)
    assert saved["iteration"] == 2
    return saved["model"]


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys() and len(a) > 10
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


@pytest.fixture(scope="module")
def num_gpus_2(tmp_path_factory) -> dict:
    """The reference: 3 iterations with train_net.py's own two processes (--num-gpus 2)."""
    out = tmp_path_factory.mktemp("num_gpus_2")
    run(train_net("--num-gpus", "2", "--dist-url", f"tcp://127.0.0.1:{free_port()}", opts=["OUTPUT_DIR", str(out)]))
    return weights(out)


def test_torchrun_trains_the_same_weights_as_num_gpus_2(tmp_path, num_gpus_2):
    out = run(["-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()), *train_net(opts=["OUTPUT_DIR", str(tmp_path)])])
    assert "World size: 2" in out
    assert_same(weights(tmp_path), num_gpus_2)


def test_srun_environment_trains_the_same_weights_as_num_gpus_2(tmp_path, num_gpus_2):
    """Two tasks with the variables srun sets (no MASTER_*): the port comes from SLURM_JOB_ID."""
    port = free_port(20000, 40000)
    procs = srun_tasks(train_net(opts=["OUTPUT_DIR", str(tmp_path)]), job_id=7 * 20000 + port - 20000)
    for proc in procs:
        assert proc.returncode == 0, proc.stdout_text[-3000:] + proc.stderr_text[-3000:]
    assert "World size: 2" in procs[0].stdout_text + procs[0].stderr_text
    assert_same(weights(tmp_path), num_gpus_2)


def test_an_input_error_is_reported_once_and_every_rank_exits_2(tmp_path):
    # after the log files are open: rank 1 writes the line to its own log
    procs = srun_tasks(train_net(opts=["OUTPUT_DIR", str(tmp_path), "DATASETS.TRAIN", "('no_such_dataset',)"]),
                       job_id=1, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    assert [p.returncode for p in procs] == [2, 2], procs[0].stderr_text[-3000:] + procs[1].stderr_text[-3000:]
    line = procs[0].stderr_text.splitlines()[-1]
    assert line.startswith("train_net.py: error: ") and "no_such_dataset" in line, procs[0].stderr_text[-3000:]
    assert "train_net.py: error" not in procs[1].stderr_text + procs[1].stdout_text
    assert "Traceback" not in procs[0].stderr_text + procs[1].stderr_text
    assert f"rank 1: {line}" in (tmp_path / "log.txt.rank1").read_text()
    # a config that cannot be read (no log file yet), with train_net.py's own processes: one line
    spawned = subprocess.run([sys.executable, *train_net("--num-gpus", "2", opts=["MODEL.NO_SUCH_KEY", "1"])], cwd=REPO,
                             env=env(), capture_output=True, text=True, timeout=600)
    assert spawned.returncode == 2
    lines = [ln for ln in (spawned.stdout + spawned.stderr).splitlines() if "train_net.py: error" in ln]
    assert len(lines) == 1 and "MODEL.NO_SUCH_KEY" in lines[0], spawned.stderr[-3000:]


def test_num_gpus_under_a_launcher_is_an_input_error():
    procs = srun_tasks(["train_net.py", "--config-file", "configs/quickstart.yaml", "--num-gpus", "2"], job_id=2,
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    assert [p.returncode for p in procs] == [2, 2]
    assert procs[0].stderr_text.splitlines()[-1].startswith("train_net.py: error: srun started this process as "
                                                            "rank 0 of 2: drop --num-gpus 2")
    assert "train_net.py: error" not in procs[1].stderr_text + procs[1].stdout_text


def test_expand_slurm_nodelist():
    assert expand_slurm_nodelist("node07") == ["node07"]
    assert expand_slurm_nodelist("gpu[01-03,07],cpu5") == ["gpu01", "gpu02", "gpu03", "gpu07", "cpu5"]
    assert expand_slurm_nodelist("a[8-10]") == ["a8", "a9", "a10"]
    assert expand_slurm_nodelist("r[1-2]n[09-10],x") == ["r1n09", "r1n10", "r2n09", "r2n10", "x"]
    assert expand_slurm_nodelist("node-a.cluster[1,3]") == ["node-a.cluster1", "node-a.cluster3"]
    for bad in ("", "gpu[01-x]", "gpu[]", "gpu[01", "a,,b"):
        with pytest.raises(ValueError, match="SLURM node list"):
            expand_slurm_nodelist(bad)


def test_launcher_env_reads_torchrun_then_srun():
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "GROUP_RANK": "1", "MASTER_ADDR": "h0",
                "MASTER_PORT": "29500"}
    srun = {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_PROCID": "5", "SLURM_NTASKS": "8",
            "SLURM_LOCALID": "1", "SLURM_NODEID": "2", "SLURM_JOB_NODELIST": "gpu[10-13]"}
    env = launcher_env(torchrun)
    assert (env.launcher, env.rank, env.world_size, env.local_rank, env.node) == ("torchrun", 3, 4, 1, "1")
    assert env.torch_env()["MASTER_ADDR"] == "h0" and env.torch_env()["MASTER_PORT"] == "29500"
    assert launcher_env({**srun, **torchrun}).launcher == "torchrun"  # torchrun inside srun: torchrun's ranks
    env = launcher_env(srun)
    assert (env.launcher, env.rank, env.world_size, env.local_rank, env.node) == ("srun", 5, 8, 1, "2")
    assert (env.master_addr, env.master_port) == ("gpu10", slurm_port("4242")) and slurm_port("4242") == 24242
    assert launcher_env({**srun, "MASTER_PORT": "1234"}).master_port == 1234
    batch_script = {k: v for k, v in srun.items() if k != "SLURM_STEP_ID"}  # sbatch's shell: no srun step
    assert launcher_env(batch_script) is None
    assert launcher_env({**srun, "SLURM_STEP_ID": str(0xFFFFFFFB)}) is None  # SLURM's id of the batch step
    assert launcher_env({**srun, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) is None  # one task: nothing to join
    assert launcher_env({}) is None
    with pytest.raises(ValueError, match="rank 4 outside a world of 4"):
        launcher_env({**torchrun, "RANK": "4"})


def test_the_batch_is_split_over_the_processes():
    """configs/vitl_384.yaml's batch 4 is global: 4, 2 or 1 images per process on 1, 2 or 4 processes."""
    from dinov3seg.engine import images_per_process

    assert [images_per_process(4, n) for n in (1, 2, 4)] == [4, 2, 1]
    with pytest.raises(ConfigError, match=r"SOLVER.IMS_PER_BATCH 4 .* does not split over 8 processes: run 1, 2, 4"):
        images_per_process(4, 8)


FAKE_TRAIN_NET = '''import json, os, sys
args = sys.argv[1:]
out, rank = args[args.index("OUTPUT_DIR") + 1], os.environ["SLURM_PROCID"]
os.makedirs(out, exist_ok=True)
print("evaluating as rank", rank)
with open(os.path.join(out, f"argv.rank{rank}.json"), "w") as f:
    json.dump(args, f)
if rank == "0":  # as train_net.py: the main process writes the results
    name = args[args.index("DATASETS.TEST") + 1].strip("()\\"',")
    with open(os.path.join(out, "eval_results.json"), "w") as f:
        json.dump({name: {"sem_seg": {"mIoU": 42.0}}}, f)
'''


def test_eval_sh_under_srun_runs_each_task_once_per_benchmark_and_reports_from_rank_0(tmp_path):
    out, fake = tmp_path / "out", tmp_path / "fake_train_net.py"
    out.mkdir()
    (out / "model_final.pth").write_bytes(b"")
    fake.write_text(FAKE_TRAIN_NET)
    name = "synthetic_ov_sem_seg_val"
    tasks = [subprocess.Popen(
        ["bash", "eval.sh", "configs/quickstart.yaml", "2", str(out)], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        env=env(SLURM_JOB_ID="9", SLURM_STEP_ID="0", SLURM_NTASKS="2", SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank),
                SLURM_NODEID="0", SLURM_JOB_NODELIST="localhost", EVAL_DATASETS=name, TRAIN_NET=str(fake),
                PYTHON=sys.executable)) for rank in (0, 1)]
    (out0, err0), (out1, err1) = (t.communicate(timeout=600) for t in tasks)
    assert [t.returncode for t in tasks] == [0, 0], err0 + err1
    assert f"=== {name}" in out0 and out1 == "" and "42" in (out / "results.md").read_text()
    logs = out / "eval" / name
    assert "rank 0" in (logs / "eval.log").read_text() and "rank 1" in (logs / "eval.rank1.log").read_text()
    for rank in (0, 1):  # one process per task: the step's process group, not NGPUS processes each
        argv = json.loads((logs / f"argv.rank{rank}.json").read_text())
        assert argv[argv.index("--num-gpus") + 1] == "1"
