"""Build the frozen encoders from the config, loading each from its user-supplied file.

A component whose file is given is built on the meta device and takes the file's memory-mapped tensors
(``load_strict`` / ``load_state_dict(assign=True)``): no random initialisation and no second copy of the weights.
"""
import contextlib
from typing import Optional

import torch

from .anyup import AnyUp
from .dinotxt import DINOTxt, DINOTxtTextTower, DINOTxtVisionHead
from .dinov3 import DINOv3ViT
from .dinov3_weights import load_dinov3_weights
from .sam import SAM_VARIANTS, SAMPriorEncoder
from .weights import WEIGHT_SPECS, read_weights, weight_path

# Text-tower parameters trained by MODEL.DINOTXT.TEXT_FINETUNE "attention" and "embeddings".
FINETUNED_PARAMS = {"attention": (".attention.qkv.", ".attention.proj."),
                    "embeddings": (".token_embedding.", ".linear_projection.")}


def built_for(path: str):
    """The meta device when ``path`` will fill the module being built (it is assigned, not copied), else no-op."""
    return torch.device("meta") if path else contextlib.nullcontext()


def mark_random_init(module: torch.nn.Module, path: str) -> torch.nn.Module:
    """Record whether ``module`` keeps its random initialisation (no weight file). Such a module cannot be
    rebuilt from a file, so training checkpoints store it (``DINOv3Seg.trainable_state_dict``)."""
    module.random_init = not path
    return module


def build_dinotxt(cfg) -> DINOTxt:
    """DINOv3 backbone + dinov3.txt head and text tower, frozen except the text parts TEXT_FINETUNE names."""
    c, t = cfg.MODEL.DINOV3, cfg.MODEL.DINOTXT
    backbone_path, dinotxt_path = weight_path(cfg, "dinov3"), weight_path(cfg, "dinotxt")
    with built_for(backbone_path):
        backbone = DINOv3ViT(embed_dim=c.EMBED_DIM, depth=c.DEPTH, num_heads=c.NUM_HEADS)
    with built_for(dinotxt_path):
        head = DINOTxtVisionHead(c.EMBED_DIM, c.NUM_HEADS, num_blocks=2)
        text = DINOTxtTextTower(width=t.TEXT_WIDTH, heads=t.TEXT_HEADS, layers=t.TEXT_LAYERS,
                                output_dim=2 * c.EMBED_DIM)
    mark_random_init(backbone, backbone_path)
    mark_random_init(head, dinotxt_path)
    mark_random_init(text, dinotxt_path)
    model = DINOTxt(backbone, head, text)
    check_hash = cfg.MODEL.WEIGHT_HASH_CHECK
    if backbone_path:
        load_dinov3_weights(backbone, backbone_path, check_hash=check_hash)
    if dinotxt_path:
        source = read_weights(dinotxt_path, **WEIGHT_SPECS["dinotxt"], check_hash=check_hash)
        model.load_dinotxt_state_dict(source.state_dict)
    model.requires_grad_(False)
    mode = t.TEXT_FINETUNE
    if mode == "full":
        text.requires_grad_(True)
    elif mode in FINETUNED_PARAMS:
        for name, param in text.named_parameters():
            param.requires_grad = any(p in f".{name}" for p in FINETUNED_PARAMS[mode])
    elif mode != "none":
        raise ValueError(f"MODEL.DINOTXT.TEXT_FINETUNE must be 'none', 'attention', 'embeddings' or 'full', "
                         f"got {mode!r}")
    return model


def build_anyup(cfg) -> Optional[AnyUp]:
    """Frozen AnyUp, or None when early refinement is off."""
    c = cfg.MODEL.ANYUP
    if not c.ENABLED:
        return None
    if c.OUTPUT_STRIDE not in (16, 8, 4):
        raise ValueError(f"MODEL.ANYUP.OUTPUT_STRIDE must be 16, 8 or 4, got {c.OUTPUT_STRIDE}")
    anyup = AnyUp(qk_dim=c.QK_DIM, q_chunk_size=c.QUERY_CHUNK_SIZE or None)
    path = weight_path(cfg, "anyup")
    return mark_random_init(anyup.load_weights(path).requires_grad_(False), path)


def sam_sizes(cfg) -> dict:
    """Image-encoder sizes (embed_dim, depth, num_heads, global_attn_indexes) of MODEL.SAM.VARIANT."""
    c = cfg.MODEL.SAM
    if c.VARIANT == "custom":
        return dict(embed_dim=c.EMBED_DIM, depth=c.DEPTH, num_heads=c.NUM_HEADS,
                    global_attn_indexes=list(c.GLOBAL_ATTN_INDEXES))
    if c.VARIANT not in SAM_VARIANTS:
        raise ValueError(f"MODEL.SAM.VARIANT must be one of {sorted(SAM_VARIANTS)} or 'custom', got {c.VARIANT!r}")
    return dict(SAM_VARIANTS[c.VARIANT])


def build_sam(cfg, view_size: int) -> Optional[SAMPriorEncoder]:
    """Frozen SAM image encoder at the view size (or MODEL.SAM.INPUT_SIZE), or None when SAM guidance is off."""
    c = cfg.MODEL.SAM
    if not c.ENABLED:
        return None
    variant = None if c.VARIANT == "custom" else c.VARIANT
    path = weight_path(cfg, f"sam_{c.VARIANT}" if f"sam_{c.VARIANT}" in WEIGHT_SPECS else "sam_vit_l")
    with built_for(path):
        sam = SAMPriorEncoder(variant, c.INPUT_SIZE or view_size, **sam_sizes(cfg))
    sam.load_weights(path)
    return mark_random_init(sam, path)
