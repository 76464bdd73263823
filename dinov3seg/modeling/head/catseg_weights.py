"""CAT-Seg's ``Aggregator`` weights -> ``DINOv3SegHead`` weights (timm's ``checkpoint_filter_fn`` pattern).

The head in its CAT-Seg configuration (TEXT_CHANNELS ["local"], SAM guidance in the place of CAT-Seg's CLIP
guidance, no AnyUp) computes CAT-Seg's ``Aggregator`` together with the two transposed convolutions of its
meta-architecture (``upsample1`` / ``upsample2``); this is the one place where its key names meet ours.
"""
import re
from typing import Callable, Dict, List, Tuple, Union

import torch

Replacement = Union[str, Callable[["re.Match"], str]]

# (CAT-Seg key pattern, our name), first match wins. block_1/2 and decoder1/2 count from 1, ours from 0.
KEY_MAP: List[Tuple[str, Replacement]] = [
    (r"^layers\.(\d+)\.swin_block\.block_(\d)\.(?:attn\.)?", lambda m: f"spatial.{m[1]}.blocks.{int(m[2]) - 1}."),
    (r"^layers\.(\d+)\.swin_block\.guidance_norm\.", r"spatial.\1.guidance_norm."),
    (r"^layers\.(\d+)\.attention\.attention\.", r"classes.\1."),  # q, k, v (no output projection)
    (r"^layers\.(\d+)\.attention\.MLP\.0\.", r"classes.\1.mlp.fc1."),
    (r"^layers\.(\d+)\.attention\.MLP\.2\.", r"classes.\1.mlp.fc2."),
    (r"^layers\.(\d+)\.attention\.padding_tokens$", r"classes.\1.padding_token"),
    (r"^layers\.(\d+)\.attention\.(norm1|norm2|padding_guidance)", r"classes.\1.\2"),
    (r"^conv1\.", "cost_embedding.conv."),
    (r"^guidance_projection\.", "guidance_projection."),
    (r"^text_guidance_projection\.", "text_projection."),
    (r"^upsample(\d)\.", lambda m: f"decoder_guidance_projections.{int(m[1]) - 1}.0."),
    (r"^decoder_guidance_projection\.(\d+)\.0\.", r"decoder_guidance_projections.\1.1."),
    (r"^decoder(\d)\.up\.", lambda m: f"decoder.stages.{int(m[1]) - 1}.up."),
    (r"^decoder(\d)\.conv\.double_conv\.", lambda m: f"decoder.stages.{int(m[1]) - 1}.conv."),
    (r"^head\.", "decoder.head."),
]
DERIVED = re.compile(r"^layers\.\d+\.swin_block\.block_\d\.attn_mask$")  # shifted-window mask, built on the fly


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A CAT-Seg ``Aggregator`` state_dict (plus ``upsample1.*`` / ``upsample2.*``) under our head's names.

    Drops the derived ``attn_mask`` buffers and flattens the [1, 1, C] padding parameters to [C]. A key that
    is not CAT-Seg's is an error (load the result with ``strict=True`` to catch missing ones).
    """
    out = {}
    for key, value in state_dict.items():
        if DERIVED.match(key):
            continue
        for pattern, replacement in KEY_MAP:
            name, found = re.subn(pattern, replacement, key)
            if found:
                break
        else:
            raise KeyError(f"'{key}' is not a key of CAT-Seg's Aggregator (or its upsample1/2)")
        if name.endswith(("padding_token", "padding_guidance")):
            value = value.reshape(-1)
        out[name] = value
    return out
