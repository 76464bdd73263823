"""Check the four encoder weight files of a config, one component at a time.

    python -m dinov3seg.tools.check_weights --config-file configs/vitl_384.yaml [--no-hash-check] [--opts K V ...]

For MODEL.DINOV3.WEIGHTS, MODEL.DINOTXT.WEIGHTS, MODEL.ANYUP.WEIGHTS and MODEL.SAM.WEIGHTS it prints the file found
(a bare released name is looked up in MODEL.ENCODER_WEIGHTS_DIR, $DINOV3SEG_WEIGHTS and ./weights), its container
and key layout (Meta's .pth, .safetensors, a Hugging Face folder), its size, the hash verdict (DINOv3's file names
carry the first hex digits of their sha256; MODEL.WEIGHT_HASH_CHECK says what a mismatch does: error fails, warn
reports it, off skips hashing; --no-hash-check is off whatever the config says) and whether the file loads
strictly into the component it is for, or where to get a file that is missing. Each component is built on the
meta device and takes the memory-mapped tensors, so nothing is copied. Exit status 1 if any check fails; an
empty key (random initialisation) or a disabled component is reported as SKIP, a tolerated hash mismatch as WARN.
"""
import argparse
import gc
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Union

import torch

from dinov3seg.modeling.encoders.anyup import AnyUp
from dinov3seg.modeling.encoders.dinotxt import DINOTxt, DINOTxtTextTower, DINOTxtVisionHead
from dinov3seg.modeling.encoders.dinov3 import DINOv3ViT
from dinov3seg.modeling.encoders.dinov3_weights import dinov3_state_dict
from dinov3seg.modeling.encoders.sam import SAM_VARIANTS, SAMPriorEncoder
from dinov3seg.modeling.encoders.weights import (HASH_CHECK_MODES, META_LAYOUT, WEIGHT_SPECS, WeightFileError,
                                                  WeightSource, find_weights, load_strict, read_weights)

from ..config import get_dinov3seg_cfg


@dataclass
class CheckResult:
    key: str
    file: str
    exists: bool
    hash: str  # "ok (<prefix>)", "MISMATCH (...)", "skipped (...)", "none expected (...)", "not applicable (...)"
    status: str  # "OK", "WARN" (hash mismatch tolerated by MODEL.WEIGHT_HASH_CHECK warn), "FAIL", "SKIP"
    message: str
    found: str = ""  # how the file was found ("the path given", "found in $DINOV3SEG_WEIGHTS '...'")
    layout: str = ""  # container and key layout, e.g. "Hugging Face folder (model.safetensors), Hugging Face keys"
    size: int = 0  # bytes on disk
    get: str = ""  # where to get the file (when it is missing or wrong)


def _load_dinov3(cfg, source: WeightSource) -> str:
    c = cfg.MODEL.DINOV3
    with torch.device("meta"):
        backbone = DINOv3ViT(embed_dim=c.EMBED_DIM, depth=c.DEPTH, num_heads=c.NUM_HEADS)
    state_dict = dinov3_state_dict(source, backbone)
    load_strict(backbone, state_dict, component="DINOv3 ViT")
    mapped = f" (from the file's {len(source.state_dict)} {source.layout} keys)" if source.layout != META_LAYOUT else ""
    return f"{len(state_dict)} keys loaded strictly into the DINOv3 ViT backbone{mapped}"


def _load_dinotxt(cfg, source: WeightSource) -> str:
    c, t = cfg.MODEL.DINOV3, cfg.MODEL.DINOTXT
    with torch.device("meta"):  # the backbone comes from MODEL.DINOV3.WEIGHTS; the rest takes the file's tensors
        backbone = DINOv3ViT(embed_dim=c.EMBED_DIM, depth=c.DEPTH, num_heads=c.NUM_HEADS)
        head = DINOTxtVisionHead(c.EMBED_DIM, c.NUM_HEADS, num_blocks=2)
        text = DINOTxtTextTower(width=t.TEXT_WIDTH, heads=t.TEXT_HEADS, layers=t.TEXT_LAYERS,
                                output_dim=2 * c.EMBED_DIM)
    result = DINOTxt(backbone, head, text).load_dinotxt_state_dict(source.state_dict)
    extra = f" (kept default: {result.missing_keys})" if result.missing_keys else ""
    return f"{len(source.state_dict)} keys loaded strictly into the dinov3.txt vision head + text tower{extra}"


def _load_anyup(cfg, source: WeightSource) -> str:
    with torch.device("meta"):
        anyup = AnyUp(qk_dim=cfg.MODEL.ANYUP.QK_DIM)
    load_strict(anyup, source.state_dict, component="AnyUp")
    return f"{len(source.state_dict)} keys loaded strictly into AnyUp"


def _sam_encoder(cfg) -> SAMPriorEncoder:
    c = cfg.MODEL.SAM
    if c.VARIANT == "custom":
        return SAMPriorEncoder(None, c.INPUT_SIZE or cfg.MODEL.DINOV3SEG.VIEW_SIZE, embed_dim=c.EMBED_DIM,
                               depth=c.DEPTH, num_heads=c.NUM_HEADS, global_attn_indexes=list(c.GLOBAL_ATTN_INDEXES))
    if c.VARIANT not in SAM_VARIANTS:
        raise ValueError(f"MODEL.SAM.VARIANT must be one of {sorted(SAM_VARIANTS)} or 'custom', got {c.VARIANT!r}")
    return SAMPriorEncoder(c.VARIANT, c.INPUT_SIZE or cfg.MODEL.DINOV3SEG.VIEW_SIZE)


def _load_sam(cfg, source: WeightSource) -> str:
    with torch.device("meta"):
        sam = _sam_encoder(cfg)
    dropped = sam.load_state_dict_from_sam(source.state_dict)
    return (f"{len(source.state_dict) - len(dropped)} image_encoder keys loaded strictly into the SAM image encoder "
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


def _get(spec: dict) -> str:
    return f"{spec['expected_name']}: request it at {spec['request_url']}" + (
        f", or use {spec['also_at']}" if spec.get("also_at") else "")


def check_one(cfg, key: str, spec_name: str, enabled: bool, loader: Callable,
              check_hash: Union[bool, str] = True) -> CheckResult:
    """``check_hash``: a MODEL.WEIGHT_HASH_CHECK mode, True (the config's mode) or False ("off")."""
    value = _value(cfg, key)
    spec = WEIGHT_SPECS[spec_name]
    mode = cfg.MODEL.WEIGHT_HASH_CHECK if check_hash is True else "off" if check_hash is False else check_hash
    if mode not in HASH_CHECK_MODES:
        raise ValueError(f"MODEL.WEIGHT_HASH_CHECK must be one of {HASH_CHECK_MODES}, got {mode!r}")
    if not enabled:
        return CheckResult(key, value, False, "skipped", "SKIP", "component disabled in this config")
    if not value:
        return CheckResult(key, "", False, "skipped", "SKIP",
                           f"empty: random initialisation (set it to {spec['expected_name']})", get=_get(spec))
    result = CheckResult(key, value, False, "not checked", "FAIL", "", get=_get(spec))
    try:
        path, result.found = find_weights(value, **spec, weights_dir=cfg.MODEL.ENCODER_WEIGHTS_DIR)
        result.file, result.exists = path, Path(path).exists()
        source = read_weights(path, **spec, check_hash=mode, hash_cache=False)  # a check reads the bytes afresh
        result.hash, result.size = source.hash, source.size
        result.message = loader(cfg, source)
        result.layout = f"{source.container}, {source.layout} keys" + "".join(f"; {n}" for n in source.notes)
        result.status = "WARN" if source.hash.startswith("MISMATCH") else "OK"
        if result.status == "WARN":
            result.hash += (f": loaded anyway (MODEL.WEIGHT_HASH_CHECK {mode}; a re-saved or converted copy?); "
                            "error refuses such files")
        if result.status != "FAIL":
            result.get = ""
    except (WeightFileError, RuntimeError, KeyError, ValueError) as err:
        text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        if "has sha256" in str(text):  # refused by MODEL.WEIGHT_HASH_CHECK error
            result.hash = f"MISMATCH (MODEL.WEIGHT_HASH_CHECK {mode} refuses it; --no-hash-check accepts a copy)"
        result.message = f"{key}: {text}" if key not in str(text) else text
    finally:
        gc.collect()
    return result


def check_weights(cfg, check_hash: Union[bool, str] = True) -> List[CheckResult]:
    """One CheckResult per weight key of ``cfg`` (see the module doc). ``check_hash`` True follows
    MODEL.WEIGHT_HASH_CHECK; False (``--no-hash-check``) or "off" skips hashing; "error" / "warn" override it."""
    return [check_one(cfg, key, spec(cfg), enabled(cfg), loader, check_hash)
            for key, spec, enabled, loader in CHECKS]


def human_size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def format_result(r: CheckResult) -> str:
    lines = [f"[{r.status}] {r.key}", f"    file:   {r.file or '(empty)'}" + (f"  ({r.found})" if r.found else "")]
    if r.layout:
        lines += [f"    layout: {r.layout}", f"    size:   {human_size(r.size)}"]
    if r.file:
        lines += [f"    exists: {'yes' if r.exists else 'no'}", f"    hash:   {r.hash}"]
    lines.append(f"    {'load:   ' if r.status in ('OK', 'WARN') else ''}{r.message}".replace("\n", "\n    "))
    if r.get:
        lines.append(f"    get:    {r.get}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="configs/vitl_384.yaml")
    parser.add_argument("--no-hash-check", action="store_true",
                        help="do not hash the files (MODEL.WEIGHT_HASH_CHECK off, whatever the config says): accepts "
                             "renamed or re-saved copies whose sha256 does not match the released name")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    results = check_weights(get_dinov3seg_cfg(args.config_file, args.opts), check_hash=not args.no_hash_check)
    for r in results:
        print(format_result(r), flush=True)
    failed = [r.key for r in results if r.status == "FAIL"]
    print(f"{len(results) - len(failed)}/{len(results)} weight keys OK, tolerated (WARN) or skipped" +
          (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
