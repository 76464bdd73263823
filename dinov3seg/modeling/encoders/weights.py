"""Loading the user-supplied encoder checkpoints: clear errors for missing, unreadable or wrong files.

Each component's file is described by ``WEIGHT_SPECS[name]`` (config key, expected file name, where to
request it, keys that identify it); ``load_weight_file(path, **WEIGHT_SPECS[name])`` returns its state dict and
``load_strict`` loads it into a module, reporting every missing / unexpected / mis-shaped key at once.
"""
import hashlib
import logging
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Union

import torch
from torch import nn

from ...errors import InputError

__all__ = ["WEIGHT_SPECS", "WeightFileError", "hash_suffix", "load_strict", "load_weight_file", "sha256_of"]

DINOV3_URL = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"
ANYUP_URL = "https://github.com/wimmerth/anyup/releases"
SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"

WEIGHT_SPECS: Dict[str, dict] = {
    "dinov3": dict(config_key="MODEL.DINOV3.WEIGHTS", expected_name="dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth",
                   request_url=DINOV3_URL, expect_keys=("cls_token", "storage_tokens", "blocks.0.")),
    "dinotxt": dict(config_key="MODEL.DINOTXT.WEIGHTS",
                    expected_name="dinov3_vitl16_dinotxt_vision_head_and_text_encoder-a442d8f5.pth",
                    request_url=DINOV3_URL, expect_keys=("visual_model.head.", "text_model.")),
    "anyup": dict(config_key="MODEL.ANYUP.WEIGHTS", expected_name="anyup_multi_backbone.pth (or anyup_paper.pth)",
                  request_url=ANYUP_URL, expect_keys=("rope.freqs", "cross_decode.", "key_features_encoder.0.basis")),
    "sam_vit_l": dict(config_key="MODEL.SAM.WEIGHTS", expected_name="sam_vit_l_0b3195.pth",
                      request_url=SAM_URL + "sam_vit_l_0b3195.pth", expect_keys=("image_encoder.pos_embed",)),
    "sam_vit_b": dict(config_key="MODEL.SAM.WEIGHTS", expected_name="sam_vit_b_01ec64.pth",
                      request_url=SAM_URL + "sam_vit_b_01ec64.pth", expect_keys=("image_encoder.pos_embed",)),
}

_HASH_SUFFIX = re.compile(r"-([0-9a-f]{8,})\.pth$")
HASH_CHECK_KEY = "MODEL.WEIGHT_HASH_CHECK"
HASH_CHECK_MODES = ("error", "warn", "off")

logger = logging.getLogger(__name__)


class WeightFileError(InputError, RuntimeError):
    """A checkpoint file is missing, unreadable, corrupted or not the expected component."""


def hash_suffix(file_name: str) -> Optional[str]:
    """The torch.hub hash in ``name-<hex>.pth`` (first >= 8 hex digits of the file's sha256), or None."""
    match = _HASH_SUFFIX.search(file_name)
    return match.group(1) if match else None


def sha256_of(path: Path, block_size: int = 1 << 24) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(block_size):
            digest.update(block)
    return digest.hexdigest()


def load_weight_file(path: str, *, config_key: str, expected_name: str, request_url: str,
                     sha_prefix: Optional[str] = None, check_hash: Union[bool, str] = True,
                     expect_keys: Sequence[str] = ()) -> Dict[str, torch.Tensor]:
    """Load a flat checkpoint ``{key: tensor}`` with ``torch.load(weights_only=True, map_location="cpu")``.

    Args:
        path: the file named by ``config_key``.
        config_key / expected_name / request_url: named in every error, so the user knows what to set,
            which file is expected and where to request it.
        sha_prefix: leading hex digits of the file's sha256; defaults to the ``-<hex>.pth`` suffix of
            ``expected_name`` (torch.hub convention, used by the DINOv3 releases). None and no suffix: no check.
        check_hash: what a hash mismatch does (``MODEL.WEIGHT_HASH_CHECK``): "error" (or True) refuses the
            file, "warn" logs it and loads the file (the key and shape checks still apply), "off" (or False)
            does not hash at all.
        expect_keys: keys (or key prefixes) the component's checkpoint must contain.
    """
    hint = (f"Set {config_key} to the path of {expected_name} (request it at {request_url}), "
            f"or to '' for random initialisation.")
    file = Path(path)
    if not file.is_file():
        raise WeightFileError(f"{config_key}: weight file '{path}' does not exist. {hint}")
    mode = {True: "error", False: "off"}.get(check_hash, check_hash)
    if mode not in HASH_CHECK_MODES:
        raise ValueError(f"{HASH_CHECK_KEY} must be one of {HASH_CHECK_MODES}, got {check_hash!r}")
    expected_hash = sha_prefix if sha_prefix is not None else hash_suffix(expected_name)
    if mode != "off" and expected_hash:
        actual = sha256_of(file)
        if not actual.startswith(expected_hash.lower()):
            mismatch = (f"{config_key}: '{path}' has sha256 {actual[:16]}..., but the released {expected_name} "
                        f"starts with {expected_hash}")
            if mode == "error":
                raise WeightFileError(
                    f"{mismatch}: the file is corrupted or a different checkpoint. {hint} If it is a deliberately "
                    f"renamed, re-saved or converted copy, set {HASH_CHECK_KEY} warn (or off): the strict key and "
                    f"shape checks still apply.")
            logger.warning(f"{mismatch}: a re-saved or converted copy? Loading it anyway ({HASH_CHECK_KEY} "
                           f"{mode}); the strict key and shape checks follow. Set {HASH_CHECK_KEY} error to refuse "
                           f"such files, off to skip hashing.")
    try:
        state_dict = torch.load(file, weights_only=True, map_location="cpu")
    except Exception as err:  # unpickling, zip and I/O errors all mean "not a usable checkpoint"
        raise WeightFileError(f"{config_key}: cannot read '{path}' as a weights-only torch checkpoint "
                              f"({type(err).__name__}: {err}). {hint}") from err
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
        found = sorted(state_dict)[:8] if isinstance(state_dict, dict) else type(state_dict).__name__
        raise WeightFileError(f"{config_key}: '{path}' is not a flat {{key: tensor}} state dict "
                              f"(found {found}). {hint}")
    absent = [p for p in expect_keys if not any(k == p or k.startswith(p) for k in state_dict)]
    if absent:
        raise WeightFileError(f"{config_key}: '{path}' does not look like {expected_name}: no key {absent} "
                              f"(first keys: {sorted(state_dict)[:5]}). {hint}")
    return state_dict


def load_strict(module: nn.Module, state_dict: Dict[str, torch.Tensor], *, dropped_prefixes: Iterable[str] = (),
                component: str = "model") -> List[str]:
    """Load ``state_dict`` into ``module``, requiring every key to match by name and shape.

    Keys under ``dropped_prefixes`` are deliberately not loaded (e.g. SAM's prompt encoder). Raises one
    error listing all missing, unexpected and mis-shaped keys. Returns the sorted dropped keys.
    """
    prefixes = tuple(dropped_prefixes)
    dropped = sorted(k for k in state_dict if k.startswith(prefixes)) if prefixes else []
    kept = {k: v for k, v in state_dict.items() if not (prefixes and k.startswith(prefixes))}
    own = module.state_dict()
    missing = sorted(set(own) - set(kept))
    unexpected = sorted(set(kept) - set(own))
    mis_shaped = [f"{k}: file {tuple(kept[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in sorted(set(own) & set(kept)) if kept[k].shape != own[k].shape]
    if missing or unexpected or mis_shaped:
        lines = [f"{component}: checkpoint does not match the model."]
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mis_shaped)):
            if keys:
                lines.append(f"  {name} ({len(keys)}): " + ", ".join(keys[:20]) + (" ..." if len(keys) > 20 else ""))
        raise WeightFileError("\n".join(lines))
    module.load_state_dict(kept, strict=True)
    return dropped
