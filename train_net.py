#!/usr/bin/env python
"""Train and evaluate dinov3.seg with Detectron2.

    python train_net.py --config-file configs/vitl_384.yaml --num-gpus 4
    python train_net.py --config-file configs/vitl_384.yaml --eval-only MODEL.WEIGHTS out/model_final.pth
Multi-node: add --num-machines N --machine-rank R --dist-url tcp://HOST:PORT, or start one process per GPU
with torchrun or srun (no --num-gpus then: the process group comes from their environment), or submit with
python -m dinov3seg.tools.submit (docs/distributed.md).
Preemption: on SIGTERM or SIGUSR1 training saves a checkpoint after the current iteration and exits with
status 0; rerun the same command with --resume to continue from there (a submitit job is requeued).
Errors in the input (config, weights, data, vocabulary) end in one line (from rank 0) and exit status 2;
--traceback (or DINOV3SEG_TRACEBACK=1) prints their traceback too. Other errors always show their traceback.
"""
import json
import logging
import os
from collections import OrderedDict

import dinov3seg  # noqa: F401  (registers the model and datasets)
import detectron2.utils.comm as comm
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils.logger import setup_logger
from dinov3seg.config import load_config
from dinov3seg.checkpoint import DINOv3SegCheckpointer
from dinov3seg.data import SemSegDatasetMapper, load_class_names
from dinov3seg.engine import images_per_process, launch
from dinov3seg.errors import InputErrorTracebackFilter, exit_on_input_error
from dinov3seg.evaluation import build_evaluator
from dinov3seg.modeling.meta_arch_common import is_training_free
from dinov3seg.preemption import (PreemptionCheckpointer, TrainingPreempted, forward_signals_to_workers,
                                  requeue_submitit_job)
from dinov3seg.solver import build_optimizer


class Trainer(DefaultTrainer):
    """DefaultTrainer with dinov3seg's mapper, evaluators, optimizer, trainable-only checkpoints and a
    checkpoint on preemption signals."""

    def build_hooks(self):
        # Runs inside DefaultTrainer.__init__ right after it made a DetectionCheckpointer: swap in ours
        # before the periodic-checkpoint hook captures it.
        self.checkpointer = DINOv3SegCheckpointer(
            self.checkpointer.model, self.cfg.OUTPUT_DIR, **self.checkpointer.checkpointables)
        return super().build_hooks() + [PreemptionCheckpointer(self.checkpointer)]  # last: after every hook

    def train(self):
        try:
            return super().train()
        except TrainingPreempted:  # checkpoint saved and logged; --resume continues from it
            requeue_submitit_job()  # in a submitit job: requeued with --resume (rank 0 exits here)
            return None

    @classmethod
    def build_train_loader(cls, cfg):
        images_per_process(cfg.SOLVER.IMS_PER_BATCH, comm.get_world_size())  # a split that fails: one line
        return build_detection_train_loader(cfg, mapper=SemSegDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=SemSegDatasetMapper(cfg, is_train=False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder or os.path.join(cfg.OUTPUT_DIR, "inference"))

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluate on every DATASETS.TEST entry, each with its own vocabulary (or TEST_CLASS_JSON)."""
        results = OrderedDict()
        net = model.module if hasattr(model, "module") else model
        for name in cfg.DATASETS.TEST:
            net.set_vocabulary(load_class_names(cfg.MODEL.DINOV3SEG.TEST_CLASS_JSON, [name],
                                                "MODEL.DINOV3SEG.TEST_CLASS_JSON", "DATASETS.TEST"))
            results[name] = inference_on_dataset(model, cls.build_test_loader(cfg, name),
                                                 cls.build_evaluator(cfg, name))
            if comm.is_main_process():
                print_csv_format(results[name])
        return results


def setup(args):
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="dinov3seg")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        if cfg.MODEL.WEIGHTS or not is_training_free(cfg):  # a training-free model has no checkpoint
            DINOv3SegCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            with open(os.path.join(cfg.OUTPUT_DIR, "eval_results.json"), "w") as f:
                json.dump(results, f, indent=2)
        return results
    if is_training_free(cfg):
        raise SystemExit(f"{cfg.MODEL.META_ARCHITECTURE} is training-free: there is nothing to train. Evaluate it "
                         "with --eval-only (or eval.sh), segment images with demo/demo.py.")
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    return getattr(trainer, "_last_eval_results", None)


def checked_main(args):
    """``main`` with input errors reported as one line and exit status 2 (in every process)."""
    logging.getLogger("detectron2.engine.train_loop").addFilter(InputErrorTracebackFilter(args.traceback))
    with exit_on_input_error("train_net.py", args.traceback):
        return main(args)


if __name__ == "__main__":
    parser = default_argument_parser()
    parser.add_argument("--traceback", action="store_true",
                        help="also print the traceback of input errors (same as DINOV3SEG_TRACEBACK=1)")
    args = parser.parse_args()
    print("Command Line Args:", args)
    if args.num_gpus * args.num_machines > 1:  # this process only launches: pass preemption signals on
        forward_signals_to_workers()
    # Without CUDA, --num-gpus N starts N CPU processes (gloo) instead.
    with exit_on_input_error("train_net.py", args.traceback):
        launch(checked_main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
