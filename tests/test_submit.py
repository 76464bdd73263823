"""python -m dinov3seg.tools.submit with submitit's local executor: a 2-task job trains end to end, and a job
signalled mid-run saves its iteration, is requeued with --resume and finishes with nothing lost."""
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from dinov3seg.tools.submit import build_parser, main, parse_time, submit
from test_launchers import env, free_port

REPO = Path(__file__).resolve().parents[1]
MAX_ITER = 8
QUICK = ["SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "1",
         "DATALOADER.NUM_WORKERS", "0", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()"]


def start_job(out_dir: Path):
    """Submit quickstart as 2 CPU tasks on this machine (--cluster local); returns the submitit job."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        for key in ("MASTER_ADDR", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
            mp.delenv(key, raising=False)
        for key, value in env(MASTER_PORT=str(free_port())).items():
            mp.setenv(key, value)  # the job's tasks inherit this environment
        args = build_parser().parse_args(["--config-file", "configs/quickstart.yaml", "--cluster", "local",
                                          "--gpus-per-node", "2", "--time", "00:30:00",
                                          "--opts", "OUTPUT_DIR", str(out_dir), *QUICK])
        return submit(args)


def wait(job, timeout=600):
    deadline = time.time() + timeout
    while job.state == "RUNNING":
        if time.time() > deadline:
            job.cancel()
            pytest.fail(f"job {job.job_id} still running after {timeout} s")
        time.sleep(0.5)


def task_log(job, task: int) -> str:
    return "".join(p.read_text() for p in (job.paths.folder / f"{job.job_id}_{task}_log.out",
                                          job.paths.folder / f"{job.job_id}_{task}_log.err") if p.exists())


def task_pid(job, rank: int) -> int:
    """The process of task ``rank`` (a child of the local executor's controller)."""
    pid = job._process.pid
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if f"SUBMITIT_LOCAL_GLOBALID={rank}".encode() in environ:
            return int(child)
    raise AssertionError(f"task {rank} of job {job.job_id} not found")


def checkpoint(out_dir: Path, iteration: int) -> dict:
    return torch.load(out_dir / f"model_{iteration:07d}.pth", weights_only=True)


def assert_equal(a, b, where="checkpoint"):
    """Tensors, dicts and lists equal exactly, all the way down."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_equal(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    job = start_job(out)
    wait(job)
    return job, out


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_a_submitit_job_trains_end_to_end(uninterrupted):
    job, out = uninterrupted
    assert job.results() == [None, None], task_log(job, 0)[-3000:]
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == MAX_ITER - 1
    assert "Rank of current process: 0. World size: 2" in task_log(job, 0)
    assert "Command Line Args" in task_log(job, 1)  # each rank's log in the job folder
    assert "Rank of current process: 1. World size: 2" in (out / "log.txt.rank1").read_text()


@pytest.mark.slow  # two more job starts (about 1 min on 2 idle cores)
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_a_preempted_job_is_requeued_and_resumes_where_it_stopped(tmp_path, uninterrupted):
    """Rank 1 alone gets submitit's signal: both ranks stop after the same step, rank 0 saves that iteration,
    submitit requeues the job with --resume, and it trains the remaining iterations."""
    reference, reference_out = uninterrupted
    job = start_job(tmp_path)
    deadline = time.time() + 600
    log_txt = tmp_path / "log.txt"
    while not (log_txt.exists() and "Starting training from iteration 0" in log_txt.read_text()):
        assert job.state == "RUNNING" and time.time() < deadline, task_log(job, 0)[-3000:]
        time.sleep(0.2)
    os.kill(task_pid(job, 1), signal.SIGUSR2)
    wait(job)
    log = task_log(job, 0)
    assert job.results() == [None, None], log[-3000:]
    stopped = int(log.split("Preempted (a signal on another rank) after iteration ")[1].split(":")[0])
    assert stopped < MAX_ITER - 1 and "Requeued job" in log
    assert f"Starting training from iteration {stopped + 1}" in log
    # the checkpoint of the preemption is the uninterrupted run's state at that iteration, all of it
    saved, expected = checkpoint(tmp_path, stopped), checkpoint(reference_out, stopped)
    assert saved["iteration"] == stopped and saved.keys() == expected.keys()
    assert_equal(saved, expected)
    assert torch.load(tmp_path / "model_final.pth", weights_only=True)["iteration"] == MAX_ITER - 1
    # as many steps as the uninterrupted run: the LR schedule and the optimizer's step counts end the same
    last, expected = checkpoint(tmp_path, MAX_ITER - 1), checkpoint(reference_out, MAX_ITER - 1)
    assert_equal(last["trainer"]["hooks"]["LRScheduler"], expected["trainer"]["hooks"]["LRScheduler"])
    steps = [[s["step"] for s in c["trainer"]["_trainer"]["optimizer"]["state"].values()] for c in (last, expected)]
    assert_equal(*steps)
    assert int(steps[0][0]) == MAX_ITER
    assert sorted(p.name for p in tmp_path.glob("model_0*.pth")) == [f"model_{i:07d}.pth" for i in range(MAX_ITER)]


def test_bad_input_is_refused_before_anything_is_queued(tmp_path, capsys):
    assert parse_time("72:00:00") == 72 * 60 and parse_time("1-00:30:00") == 24 * 60 + 30
    assert parse_time("90") == 90 and parse_time("00:00:30") == 0.5
    with pytest.raises(SystemExit) as stop:
        main(["--config-file", "configs/quickstart.yaml", "--time", "3h"])
    assert stop.value.code == 2 and "--time '3h': expected HH:MM:SS" in capsys.readouterr().err
    for argv, message in (
            (["--opts", "MODEL.NO_SUCH_KEY", "1"], "MODEL.NO_SUCH_KEY"),
            (["--nodes", "2"], "--nodes 2: --cluster local runs on this machine only"),
            (["--nodes", "2", "--eval"], "eval.sh runs on one node")):
        with pytest.raises(SystemExit) as stop:
            main(["--config-file", str(REPO / "configs/quickstart.yaml"), "--cluster", "local",
                  "--job-dir", str(tmp_path / "jobs"), *argv])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and len(err.splitlines()) == 1 and message in err, err
        assert err.startswith("python -m dinov3seg.tools.submit: error: ")
    assert not (tmp_path / "jobs").exists()


def test_the_job_asks_submitit_to_requeue_itself_with_resume():
    from dinov3seg.jobs import TrainNetJob

    job = TrainNetJob(["--config-file", "c.yaml", "OUTPUT_DIR", "out"])
    requeued = job.checkpoint()
    assert requeued.function.argv == ["--resume", "--config-file", "c.yaml", "OUTPUT_DIR", "out"]
    assert requeued.function.checkpoint().function.argv == requeued.function.argv  # once is enough


def test_slurm_submission_runs_one_task_per_gpu_and_signals_before_the_time_limit(tmp_path, monkeypatch, capsys):
    """Stand-ins for sbatch and srun: the script submitit writes asks for the resources, the pickled job is
    train_net.py with the config, the overrides and the absolute OUTPUT_DIR."""
    import submitit

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" "{tmp_path}/script.sh"\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for it; the job never runs here
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(REPO)
    assert main(["--config-file", "configs/vitl_384.yaml", "--nodes", "2", "--gpus-per-node", "4", "--partition",
                 "learn", "--time", "72:00:00", "--job-dir", str(tmp_path / "jobs"),
                 "--opts", "SOLVER.MAX_ITER", "100", "OUTPUT_DIR", "output/run2"]) == 0
    assert "Submitted job 4242" in capsys.readouterr().out
    script = (tmp_path / "script.sh").read_text()
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=learn", "--time=4320",
                 "--signal=USR2@120", "--cpus-per-task=8", "--job-name=dinov3seg"):
        assert f"#SBATCH {line}\n" in script, script
    assert "srun " in script and "submitit.core._submit" in script
    job = submitit.helpers.DelayedSubmission.load(tmp_path / "jobs" / "4242" / "4242_submitted.pkl").function
    assert job.argv == ["--config-file", str(REPO / "configs/vitl_384.yaml"), "SOLVER.MAX_ITER", "100", "OUTPUT_DIR",
                        "output/run2", "OUTPUT_DIR", str(REPO / "output/run2")]


def test_training_in_a_submitit_job_also_stops_on_submitits_signal():
    from dinov3seg.preemption import preemption_signals

    assert preemption_signals({}) == (signal.SIGTERM, signal.SIGUSR1)
    assert preemption_signals({"SUBMITIT_EXECUTOR": "slurm"}) == (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
    assert preemption_signals({"SUBMITIT_EXECUTOR": "local", "SUBMITIT_PREEMPT_SIGNAL": "USR1"}) == (
        signal.SIGTERM, signal.SIGUSR1)
