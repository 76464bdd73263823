"""bf16 vs fp32 on a trained model and an evaluation set: mIoU of each, per-pixel argmax agreement, largest
score difference (issue 14: bf16 must keep the answers).

    python -m dinov3seg.tools.precision_check --config-file configs/quickstart.yaml \
        --weights output/quickstart/model_final.pth [--seed N] [--dataset NAME] [--limit N] [--device cpu] [--json OUT]

Both models are built from the same config and weights; one runs with MODEL.DINOV3SEG.PRECISION fp32, the other
with bf16 (forced, on any device: on CPUs without AMX / AVX512-BF16 bf16 matmuls are slow, keep the set small).
Agreement is the share of pixels (with a label, i.e. not the ignore value) whose arg-max class is the same;
mIoU comes from the dataset's evaluator. A checkpoint holds the head, not the frozen encoders: with random
encoder weights (the quickstart) pass the training run's seed (its log says "Using a generated random seed N";
SEED in the config otherwise) so the encoders are rebuilt as they were trained. Exit status 1 if the mIoU
moves by more than ``--max-miou-delta`` points.
"""
import argparse
import json
import sys
import tempfile
from typing import List, Optional

import torch
from detectron2.data import build_detection_test_loader

from ..checkpoint import DINOv3SegCheckpointer
from ..config import get_dinov3seg_cfg
from ..data import SemSegDatasetMapper, load_class_names
from ..evaluation import build_evaluator


def build(cfg, precision: str, weights: str, device: str, seed: int):
    from detectron2.modeling import build_model
    from detectron2.utils.env import seed_all_rng

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DINOV3SEG.PRECISION, cfg.MODEL.DEVICE = precision, device
    seed_all_rng(seed)
    model = build_model(cfg).eval()
    DINOv3SegCheckpointer(model).load(weights)
    return model


def compare(cfg, weights: str, dataset: str, device: str = "cpu", limit: int = 0, seed: int = 0) -> dict:
    """Run both precisions over ``dataset``; the figures of the module doc."""
    models = {p: build(cfg, p, weights, device, seed) for p in ("fp32", "bf16")}
    names = load_class_names(cfg.MODEL.DINOV3SEG.TEST_CLASS_JSON, [dataset], "MODEL.DINOV3SEG.TEST_CLASS_JSON",
                             "DATASETS.TEST")
    loader = build_detection_test_loader(cfg, dataset, mapper=SemSegDatasetMapper(cfg, is_train=False))
    ignore = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
    with tempfile.TemporaryDirectory() as tmp:
        evaluators = {p: build_evaluator(cfg, dataset, tmp) for p in models}
        for p, model in models.items():
            model.set_vocabulary(names)
            evaluators[p].reset()
        same = labelled = 0
        max_diff, images = 0.0, 0
        with torch.no_grad():
            for inputs in loader:
                outputs = {p: m(inputs) for p, m in models.items()}
                for p in models:
                    evaluators[p].process(inputs, outputs[p])
                for x, a, b in zip(inputs, outputs["fp32"], outputs["bf16"]):
                    sa, sb = a["sem_seg"], b["sem_seg"]
                    max_diff = max(max_diff, float((sa - sb).abs().max()))
                    valid = (x["sem_seg"].to(sa.device) != ignore if "sem_seg" in x
                             else torch.ones_like(sa[0], dtype=torch.bool))
                    same += int(((sa.argmax(0) == sb.argmax(0)) & valid).sum())
                    labelled += int(valid.sum())
                images += len(inputs)
                if limit and images >= limit:
                    break
        miou = {p: evaluators[p].evaluate()["sem_seg"]["mIoU"] for p in models}
    return {"dataset": dataset, "images": images, "weights": weights, "device": device, "seed": seed,
            "miou_fp32": miou["fp32"], "miou_bf16": miou["bf16"], "miou_delta": miou["bf16"] - miou["fp32"],
            "argmax_agreement": same / max(labelled, 1), "labelled_pixels": labelled,
            "max_abs_score_diff": max_diff, "scores": cfg.TEST.LGA.AVERAGE}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="configs/quickstart.yaml")
    parser.add_argument("--weights", required=True, help="trained checkpoint (e.g. output/quickstart/model_final.pth)")
    parser.add_argument("--dataset", default="", help="registered dataset (default: DATASETS.TEST[0])")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=None, help="RNG seed of the encoders' random init "
                        "(default: the config's SEED, else 0)")
    parser.add_argument("--limit", type=int, default=0, help="stop after this many images (0: all)")
    parser.add_argument("--max-miou-delta", type=float, default=0.5, help="points of mIoU bf16 may move")
    parser.add_argument("--json", default="")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    cfg = get_dinov3seg_cfg(args.config_file, args.opts)
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    seed = args.seed if args.seed is not None else max(cfg.SEED, 0)
    r = compare(cfg, args.weights, dataset, args.device, args.limit, seed)
    ok = abs(r["miou_delta"]) <= args.max_miou_delta
    print(f"{dataset}, {r['images']} images, {args.weights} on {args.device}:\n"
          f"  mIoU fp32 {r['miou_fp32']:.2f}  bf16 {r['miou_bf16']:.2f}  delta {r['miou_delta']:+.2f} points "
          f"({'within' if ok else 'BEYOND'} {args.max_miou_delta})\n"
          f"  per-pixel argmax agreement {100 * r['argmax_agreement']:.2f} % of {r['labelled_pixels']:,} labelled "
          f"pixels; max |score difference| {r['max_abs_score_diff']:.2e} ({r['scores']})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
