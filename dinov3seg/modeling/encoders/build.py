"""Build the frozen encoders from the config, loading each from its user-supplied file."""
from typing import Optional

from .anyup import AnyUp
from .dinotxt import DINOTxt, DINOTxtTextTower, DINOTxtVisionHead
from .dinov3 import DINOv3ViT
from .sam import SAM_VARIANTS, SAMPriorEncoder
from .weights import WEIGHT_SPECS, load_strict, load_weight_file

# Text-tower parameters trained by MODEL.DINOTXT.TEXT_FINETUNE="attention".
ATTENTION_PARAMS = (".attention.qkv.", ".attention.proj.")


def build_dinotxt(cfg) -> DINOTxt:
    """DINOv3 backbone + dinov3.txt head and text tower, frozen except the text parts TEXT_FINETUNE names."""
    c = cfg.MODEL.DINOV3
    backbone = DINOv3ViT(embed_dim=c.EMBED_DIM, depth=c.DEPTH, num_heads=c.NUM_HEADS)
    t = cfg.MODEL.DINOTXT
    head = DINOTxtVisionHead(c.EMBED_DIM, c.NUM_HEADS, num_blocks=2)
    text = DINOTxtTextTower(width=t.TEXT_WIDTH, heads=t.TEXT_HEADS, layers=t.TEXT_LAYERS, output_dim=2 * c.EMBED_DIM)
    model = DINOTxt(backbone, head, text)
    check_hash = cfg.MODEL.WEIGHT_HASH_CHECK
    if c.WEIGHTS:
        load_strict(backbone, load_weight_file(c.WEIGHTS, **WEIGHT_SPECS["dinov3"], check_hash=check_hash),
                    component="DINOv3 ViT")
    if t.WEIGHTS:
        model.load_dinotxt_state_dict(load_weight_file(t.WEIGHTS, **WEIGHT_SPECS["dinotxt"], check_hash=check_hash))
    model.requires_grad_(False)
    mode = t.TEXT_FINETUNE
    if mode == "full":
        text.requires_grad_(True)
    elif mode == "attention":
        for name, param in text.named_parameters():
            param.requires_grad = any(p in f".{name}" for p in ATTENTION_PARAMS)
    elif mode != "none":
        raise ValueError(f"MODEL.DINOTXT.TEXT_FINETUNE must be 'none', 'attention' or 'full', got {mode!r}")
    return model


def build_anyup(cfg) -> Optional[AnyUp]:
    """Frozen AnyUp, or None when early refinement is off."""
    c = cfg.MODEL.ANYUP
    if not c.ENABLED:
        return None
    if c.OUTPUT_STRIDE not in (16, 8, 4):
        raise ValueError(f"MODEL.ANYUP.OUTPUT_STRIDE must be 16, 8 or 4, got {c.OUTPUT_STRIDE}")
    return AnyUp(qk_dim=c.QK_DIM, q_chunk_size=c.QUERY_CHUNK_SIZE or None).load_weights(c.WEIGHTS).requires_grad_(False)


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
    sam = SAMPriorEncoder(variant, c.INPUT_SIZE or view_size, **sam_sizes(cfg))
    sam.load_weights(c.WEIGHTS)
    return sam
