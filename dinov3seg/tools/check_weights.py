"""Check the four encoder weight files of a config, one component at a time.

    python -m dinov3seg.tools.check_weights --config-file configs/vitl_384.yaml [--no-hash-check] [--opts K V ...]

For MODEL.DINOV3.WEIGHTS, MODEL.DINOTXT.WEIGHTS, MODEL.ANYUP.WEIGHTS and MODEL.SAM.WEIGHTS it prints the file,
whether it exists, the hash check (DINOv3's file names carry the first hex digits of their sha256) and whether the
file loads strictly into the component it is for. Each component is built alone (the dinov3.txt check puts the
backbone it does not load on the meta device) and freed before the next. Exit status 1 if any check fails; an
empty key (random initialisation) or a disabled component is reported as SKIP.
"""
import argparse
import gc
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

import torch
from torch import nn

from dinov3seg.modeling.encoders.anyup import AnyUp
from dinov3seg.modeling.encoders.dinotxt import DINOTxt, DINOTxtTextTower, DINOTxtVisionHead
from dinov3seg.modeling.encoders.dinov3 import DINOv3ViT
from dinov3seg.modeling.encoders.sam import SAM_VARIANTS, SAMPriorEncoder, adapt_sam_state_dict
from dinov3seg.modeling.encoders.weights import (WEIGHT_SPECS, WeightFileError, hash_suffix, load_strict,
                                                  load_weight_file, sha256_of)

from ..config import get_dinov3seg_cfg


@dataclass
class CheckResult:
    key: str
    file: str
    exists: bool
    hash: str  # "ok (<prefix>)", "MISMATCH (...)", "skipped", "none expected"
    status: str  # "OK", "FAIL", "SKIP"
    message: str


def _load_dinov3(cfg, state_dict) -> str:
    c = cfg.MODEL.DINOV3
    backbone = DINOv3ViT(embed_dim=c.EMBED_DIM, depth=c.DEPTH, num_heads=c.NUM_HEADS)
    load_strict(backbone, state_dict, component="DINOv3 ViT")
    return f"{len(state_dict)} keys loaded strictly into the DINOv3 ViT backbone"


def _load_dinotxt(cfg, state_dict) -> str:
    c, t = cfg.MODEL.DINOV3, cfg.MODEL.DINOTXT
    with torch.device("meta"):  # loaded from MODEL.DINOV3.WEIGHTS, not from this file
        backbone = DINOv3ViT(embed_dim=c.EMBED_DIM, depth=c.DEPTH, num_heads=c.NUM_HEADS)
    head = DINOTxtVisionHead(c.EMBED_DIM, c.NUM_HEADS, num_blocks=2)
    text = DINOTxtTextTower(width=t.TEXT_WIDTH, heads=t.TEXT_HEADS, layers=t.TEXT_LAYERS, output_dim=2 * c.EMBED_DIM)
    result = DINOTxt(backbone, head, text).load_dinotxt_state_dict(state_dict)
    extra = f" (kept default: {result.missing_keys})" if result.missing_keys else ""
    return f"{len(state_dict)} keys loaded strictly into the dinov3.txt vision head + text tower{extra}"


def _load_anyup(cfg, state_dict) -> str:
    load_strict(AnyUp(qk_dim=cfg.MODEL.ANYUP.QK_DIM), state_dict, component="AnyUp")
    return f"{len(state_dict)} keys loaded strictly into AnyUp"


def _sam_encoder(cfg) -> SAMPriorEncoder:
    c = cfg.MODEL.SAM
    if c.VARIANT == "custom":
        return SAMPriorEncoder(None, c.INPUT_SIZE or cfg.MODEL.DINOV3SEG.VIEW_SIZE, embed_dim=c.EMBED_DIM,
                               depth=c.DEPTH, num_heads=c.NUM_HEADS, global_attn_indexes=list(c.GLOBAL_ATTN_INDEXES))
    if c.VARIANT not in SAM_VARIANTS:
        raise ValueError(f"MODEL.SAM.VARIANT must be one of {sorted(SAM_VARIANTS)} or 'custom', got {c.VARIANT!r}")
    return SAMPriorEncoder(c.VARIANT, c.INPUT_SIZE or cfg.MODEL.DINOV3SEG.VIEW_SIZE)


def _load_sam(cfg, state_dict) -> str:
    sam = _sam_encoder(cfg)
    dropped = sam.load_state_dict_from_sam(state_dict)
    return (f"{len(state_dict) - len(dropped)} image_encoder keys loaded strictly into the SAM image encoder "
            f"at {sam.image_size} px (pos_embed resampled; {len(dropped)} prompt/mask-decoder keys dropped)")


# (config key, WEIGHT_SPECS name or a function of cfg giving it, enabled?(cfg), loader)
CHECKS = [
    ("MODEL.DINOV3.WEIGHTS", lambda cfg: "dinov3", lambda cfg: True, _load_dinov3),
    ("MODEL.DINOTXT.WEIGHTS", lambda cfg: "dinotxt", lambda cfg: True, _load_dinotxt),
    ("MODEL.ANYUP.WEIGHTS", lambda cfg: "anyup", lambda cfg: cfg.MODEL.ANYUP.ENABLED, _load_anyup),
    ("MODEL.SAM.WEIGHTS", lambda cfg: f"sam_{cfg.MODEL.SAM.VARIANT}" if f"sam_{cfg.MODEL.SAM.VARIANT}" in WEIGHT_SPECS
     else "sam_vit_l", lambda cfg: cfg.MODEL.SAM.ENABLED, _load_sam),
]


def _value(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def check_one(cfg, key: str, spec_name: str, enabled: bool, loader: Callable, check_hash: bool = True) -> CheckResult:
    path = _value(cfg, key)
    spec = WEIGHT_SPECS[spec_name]
    if not enabled:
        return CheckResult(key, path, False, "skipped", "SKIP", "component disabled in this config")
    if not path:
        return CheckResult(key, "", False, "skipped", "SKIP",
                           f"empty: random initialisation (set it to {spec['expected_name']})")
    exists = Path(path).is_file()
    expected = hash_suffix(spec["expected_name"])
    hash_state = ("not checked" if expected else
                  "none expected (the released name carries no -<sha256>.pth suffix)")
    try:
        if not exists:
            load_weight_file(path, **spec)  # raises the clear "does not exist" error
        if expected and check_hash:
            actual = sha256_of(Path(path))
            ok = actual.startswith(expected)
            hash_state = f"ok ({expected})" if ok else f"MISMATCH (sha256 {actual[:16]}..., expected {expected}...)"
            if not ok:
                raise WeightFileError(
                    f"{key}: '{path}' has sha256 {actual[:16]}..., but {spec['expected_name']} starts with "
                    f"{expected}: the file is corrupted or a different checkpoint (request it at "
                    f"{spec['request_url']}; --no-hash-check accepts a deliberately renamed or re-saved copy).")
        elif expected:
            hash_state = "skipped (--no-hash-check)"
        state_dict = load_weight_file(path, **spec, check_hash=False)  # hash already checked above
        message = loader(cfg, state_dict)
        return CheckResult(key, path, exists, hash_state, "OK", message)
    except (WeightFileError, RuntimeError, KeyError, ValueError) as err:
        text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        return CheckResult(key, path, exists, hash_state, "FAIL", f"{key}: {text}" if key not in str(text) else text)
    finally:
        gc.collect()


def check_weights(cfg, check_hash: bool = True) -> List[CheckResult]:
    """One CheckResult per weight key of ``cfg`` (see the module doc)."""
    return [check_one(cfg, key, spec(cfg), enabled(cfg), loader, check_hash)
            for key, spec, enabled, loader in CHECKS]


def format_result(r: CheckResult) -> str:
    lines = [f"[{r.status}] {r.key}", f"    file:   {r.file or '(empty)'}"]
    if r.file:
        lines += [f"    exists: {'yes' if r.exists else 'no'}", f"    hash:   {r.hash}"]
    lines.append(f"    {'load:   ' if r.status == 'OK' else ''}{r.message}".replace("\n", "\n    "))
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="configs/vitl_384.yaml")
    parser.add_argument("--no-hash-check", action="store_true",
                        help="accept renamed or re-saved copies whose sha256 does not match the released name")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    results = check_weights(get_dinov3seg_cfg(args.config_file, args.opts), check_hash=not args.no_hash_check)
    for r in results:
        print(format_result(r), flush=True)
    failed = [r.key for r in results if r.status == "FAIL"]
    print(f"{len(results) - len(failed)}/{len(results)} weight keys OK or skipped" +
          (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
