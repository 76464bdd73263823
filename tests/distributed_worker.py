"""Trains the quickstart model for a few iterations in 2 CPU processes (gloo) and saves each rank's
trainable weights; run by tests/test_train_net.py as a script so that spawn can re-import it."""
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import detectron2.utils.comm as comm  # noqa: E402
from detectron2.engine import default_argument_parser  # noqa: E402
from dinov3seg.engine import launch  # noqa: E402
from train_net import Trainer, setup  # noqa: E402


def worker(args, out_dir):
    cfg = setup(args)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    torch.save(model.trainable_state_dict(), Path(out_dir) / f"rank{comm.get_rank()}.pth")


if __name__ == "__main__":
    out = sys.argv[1]
    args = default_argument_parser().parse_args([
        "--config-file", str(REPO / "configs/quickstart.yaml"), "--num-gpus", "2",
        "OUTPUT_DIR", out, "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
        "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()"])
    launch(worker, 2, dist_url="auto", args=(args, out))
