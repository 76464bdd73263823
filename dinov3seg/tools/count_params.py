"""Parameter counts per component of a DINOv3Seg model, built on the meta device (no memory, no weights).

    python -m dinov3seg.tools.count_params [--config-file configs/vitl_384.yaml] [--json OUT] [--opts K V ...]

The model is built with ``torch.device("meta")``, so the full ViT-L model costs no RAM and the config's
weight files are ignored (every ``MODEL.*.WEIGHTS`` is set to ""). The paper states about 1.1 B parameters.
"""
import argparse
import json
import sys
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ..config import get_dinov3seg_cfg

# (component, dotted path of its module in DINOv3Seg, what it is). "head" counts sem_seg_head minus
# its decoder; every parameter of the model falls in exactly one row (the rest goes to "other").
COMPONENTS: List[Tuple[str, str, str]] = [
    ("dinov3_backbone", "dinotxt.backbone", "DINOv3 ViT backbone (frozen)"),
    ("dinotxt_vision_head", "dinotxt.vision_head", "dinov3.txt vision head, 2 blocks (frozen)"),
    ("text_tower", "dinotxt.text", "dinov3.txt text tower (frozen; embeddings cached)"),
    ("anyup", "anyup", "AnyUp early refinement (frozen)"),
    ("sam", "sam", "SAM image encoder (frozen)"),
    ("head", "sem_seg_head", "cost volume + embedding + spatial/class refinement + guidance projections"),
    ("decoder", "sem_seg_head.decoder", "upsampling decoder"),
]
WEIGHT_KEYS = ("MODEL.DINOV3.WEIGHTS", "MODEL.DINOTXT.WEIGHTS", "MODEL.ANYUP.WEIGHTS", "MODEL.SAM.WEIGHTS")


def build_on_meta(cfg) -> nn.Module:
    """The cfg's meta architecture with meta-device tensors (shapes only) and no weight files read."""
    from detectron2.modeling import META_ARCH_REGISTRY

    cfg = cfg.clone()
    cfg.defrost()
    cfg.merge_from_list([x for key in WEIGHT_KEYS for x in (key, "")])
    with torch.device("meta"):
        return META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)


def _submodule(model: nn.Module, path: str) -> Optional[nn.Module]:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None  # e.g. anyup / sam disabled


def count_params(model: nn.Module) -> Dict[str, Dict[str, int]]:
    """{component: {"total": n, "trainable": n}} for COMPONENTS, plus "other" if anything is left and "all".

    Parameters shared between modules are counted once, under the first component listing them.
    """
    owner: Dict[int, str] = {}
    # Deepest paths first, so the decoder's parameters are not also counted in the head.
    for name, path, _ in sorted(COMPONENTS, key=lambda c: -c[1].count(".")):
        module = _submodule(model, path)
        for p in (module.parameters() if module is not None else ()):
            owner.setdefault(id(p), name)
    counts = {name: {"total": 0, "trainable": 0} for name, _, _ in COMPONENTS}
    counts["other"] = {"total": 0, "trainable": 0}
    seen = set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        row = counts[owner.get(id(p), "other")]
        row["total"] += p.numel()
        row["trainable"] += p.numel() if p.requires_grad else 0
    if not counts["other"]["total"]:
        del counts["other"]
    counts["all"] = {k: sum(r[k] for r in counts.values()) for k in ("total", "trainable")}
    return counts


def format_params(counts: Dict[str, Dict[str, int]]) -> str:
    lines = [f"{'component':<22}{'params':>16}{'trainable':>16}"]
    for name, row in counts.items():
        lines.append(f"{name:<22}{row['total']:>16,}{row['trainable']:>16,}")
    lines.append(f"(paper: ~1.1 B parameters in total; measured {counts['all']['total'] / 1e9:.3f} B)")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="configs/vitl_384.yaml")
    parser.add_argument("--json", default="", help="also write the counts to this JSON file")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    counts = count_params(build_on_meta(get_dinov3seg_cfg(args.config_file, args.opts)))
    print(format_params(counts))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(counts, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
