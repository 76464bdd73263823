"""DINOv3 backbone weights in either key layout -> our ``DINOv3ViT`` (timm's ``checkpoint_filter_fn`` pattern).

Meta's ``.pth`` (or a ``.safetensors`` holding Meta's names) loads as it is. The Hugging Face layout, that of
transformers' ``DINOv3ViTModel`` (``config.json`` + ``model.safetensors``, written by ``save_pretrained`` or found in
the hub cache), is mapped to Meta's names here, in one place. Two things are not a renaming:

* **RoPE periods.** The Hugging Face files carry no RoPE tensor, and transformers recomputes the frequencies in
  fp32. Meta's ViT-L checkpoints hold ``periods`` rounded to bf16, and dinov3.txt and our head were trained on
  the model that uses them; transformers' outputs differ from Meta's by about 1e-2 (parity README §8). The periods
  are therefore rebuilt as Meta's checkpoint holds them: ``rope_periods(head_dim, rope_theta)`` in bf16.
* **The K bias.** Meta's ``attn.qkv`` has one bias, its K third masked by ``bias_mask``; the Hugging Face file has
  ``q_proj.bias`` and ``v_proj.bias`` and no ``k_proj.bias`` (``key_bias`` False). They become
  ``qkv.bias = [q, 0, v]`` with the mask 1/0/1 that Meta's ``init_weights_vit`` writes (a ``k_proj.bias``, if a
  file has one, is kept and unmasked: that is what transformers computes).
"""
import logging
from typing import Dict, Optional

import torch
from torch import Tensor

from .dinov3 import DINOv3ViT, rope_periods
from .weights import META_LAYOUT, WEIGHT_SPECS, WeightFileError, WeightSource, load_strict, read_weights

__all__ = ["HF_LAYOUT", "check_hf_config", "checkpoint_filter_fn", "dinov3_state_dict", "load_dinov3_weights"]

HF_LAYOUT = "Hugging Face"
logger = logging.getLogger(__name__)

# transformers' DINOv3ViTConfig defaults (what a file without config.json was saved with).
HF_DEFAULTS = dict(rope_theta=100.0, query_bias=True, key_bias=False, value_bias=True, proj_bias=True,
                   mlp_bias=True, use_gated_mlp=False, hidden_act="gelu", layer_norm_eps=1e-5, num_channels=3)


def _hf_sizes(model: DINOv3ViT) -> Dict[str, object]:
    """Our backbone's sizes under transformers' config names, with the config key (or fact) that sets each."""
    return {
        "hidden_size": (model.embed_dim, "MODEL.DINOV3.EMBED_DIM"),
        "num_hidden_layers": (len(model.blocks), "MODEL.DINOV3.DEPTH"),
        "num_attention_heads": (model.num_heads, "MODEL.DINOV3.NUM_HEADS"),
        "num_register_tokens": (model.n_storage_tokens, "DINOv3's storage tokens"),
        "patch_size": (model.patch_size, "DINOv3's patch size"),
        "intermediate_size": (model.blocks[0].mlp.fc1.out_features, "4 x MODEL.DINOV3.EMBED_DIM"),
        "num_channels": (model.patch_embed.proj.in_channels, "RGB input"),
        "layer_norm_eps": (model.norm.eps, "DINOv3's LayerNorm eps"),
    }


def check_hf_config(config: Dict[str, object], model: DINOv3ViT, source: str) -> None:
    """Raise one error naming every ``config.json`` value that differs from the backbone we build (both values
    and the key that sets ours) or that our backbone cannot compute (a gated MLP, another activation)."""
    problems = []
    for name, (ours, setting) in _hf_sizes(model).items():
        if name in config and config[name] != ours:
            problems.append(f"{name} {config[name]} but ours is {ours} ({setting})")
    if config.get("model_type", "dinov3_vit") != "dinov3_vit":
        problems.append(f"model_type {config['model_type']!r}, not 'dinov3_vit' (a DINOv3 ViT backbone)")
    if config.get("use_gated_mlp", False):
        problems.append("use_gated_mlp true (a SwiGLU backbone, ViT-H+/7B): only the ViT-S/B/L MLP is supported")
    if config.get("hidden_act", "gelu") != "gelu":
        problems.append(f"hidden_act {config['hidden_act']!r}, not 'gelu'")
    if problems:
        raise WeightFileError(f"MODEL.DINOV3.WEIGHTS: the Hugging Face config of '{source}' does not match the "
                              f"backbone: {'; '.join(problems)}. Use the ViT-L/16 checkpoint "
                              f"(facebook/dinov3-vitl16-pretrain-lvd1689m) or set the MODEL.DINOV3 sizes to match.")


def _sizes_from_keys(state_dict: Dict[str, Tensor]) -> Dict[str, object]:
    """The config.json values a Hugging Face state dict itself shows (for a file without its config.json)."""
    sizes = {"hidden_size": state_dict["embeddings.cls_token"].shape[-1],
             "num_register_tokens": state_dict["embeddings.register_tokens"].shape[1],
             "num_hidden_layers": 1 + max((int(k.split(".")[1]) for k in state_dict if k.startswith("layer.")),
                                          default=-1)}
    if "embeddings.patch_embeddings.weight" in state_dict:
        sizes["patch_size"] = state_dict["embeddings.patch_embeddings.weight"].shape[-1]
    if "layer.0.mlp.up_proj.weight" in state_dict:
        sizes["intermediate_size"] = state_dict["layer.0.mlp.up_proj.weight"].shape[0]
    return sizes


def checkpoint_filter_fn(state_dict: Dict[str, Tensor], model: DINOv3ViT,
                         config: Optional[Dict[str, object]] = None) -> Dict[str, Tensor]:
    """A transformers ``DINOv3ViTModel`` state dict (``layer.N.*`` or ``model.layer.N.*``) under Meta's names.

    Every key is accounted for: one the mapping does not know, or a block part that is absent, is an error
    (missing and unexpected keys listed together). ``config`` (the file's config.json, else transformers'
    defaults) gives ``rope_theta`` and which q/k/v biases exist. Adds ``rope_embed.periods`` (bf16-rounded, as
    Meta's checkpoint holds them) and each block's ``attn.qkv.bias_mask``.
    """
    config = {**HF_DEFAULTS, **(config or {})}
    source = {(k[len("model."):] if k.startswith("model.layer.") else k): v for k, v in state_dict.items()}
    out: Dict[str, Tensor] = {}
    missing = []

    def take(hf_key: str, meta_key: Optional[str] = None, required: bool = True) -> Optional[Tensor]:
        if hf_key not in source:
            if required:
                missing.append(hf_key)
            return None
        value = source.pop(hf_key)
        if meta_key is not None:
            out[meta_key] = value
        return value

    for hf, meta in (("embeddings.cls_token", "cls_token"), ("embeddings.register_tokens", "storage_tokens"),
                     ("embeddings.patch_embeddings.weight", "patch_embed.proj.weight"),
                     ("embeddings.patch_embeddings.bias", "patch_embed.proj.bias"),
                     ("norm.weight", "norm.weight"), ("norm.bias", "norm.bias")):
        take(hf, meta)
    mask_token = take("embeddings.mask_token")
    if mask_token is not None:
        out["mask_token"] = mask_token.reshape(1, -1)  # [1, 1, D] -> Meta's [1, D]
    source.pop("rope_embeddings.inv_freq", None)  # transformers' fp32 frequencies: rebuilt below, as Meta's
    for i in range(len(model.blocks)):
        hf, meta = f"layer.{i}.", f"blocks.{i}."
        for part in ("norm1", "norm2"):
            take(f"{hf}{part}.weight", f"{meta}{part}.weight")
            take(f"{hf}{part}.bias", f"{meta}{part}.bias")
        for hf_part, meta_part in (("attention.o_proj", "attn.proj"), ("mlp.up_proj", "mlp.fc1"),
                                   ("mlp.down_proj", "mlp.fc2")):
            take(f"{hf}{hf_part}.weight", f"{meta}{meta_part}.weight")
            has_bias = config["proj_bias" if hf_part == "attention.o_proj" else "mlp_bias"]
            take(f"{hf}{hf_part}.bias", f"{meta}{meta_part}.bias", required=bool(has_bias))
        take(f"{hf}layer_scale1.lambda1", f"{meta}ls1.gamma")
        take(f"{hf}layer_scale2.lambda1", f"{meta}ls2.gamma")
        weights = [take(f"{hf}attention.{p}_proj.weight") for p in "qkv"]
        biases = [take(f"{hf}attention.{p}_proj.bias", required=bool(config[f"{name}_bias"]))
                  for p, name in zip("qkv", ("query", "key", "value"))]
        if any(w is None for w in weights):
            continue
        out[f"{meta}attn.qkv.weight"] = torch.cat(weights, dim=0)
        zeros = torch.zeros_like(weights[0][:, 0])
        out[f"{meta}attn.qkv.bias"] = torch.cat([b if b is not None else zeros for b in biases])
        ones = torch.ones_like(zeros)
        out[f"{meta}attn.qkv.bias_mask"] = torch.cat([ones, ones if biases[1] is not None else zeros, ones])
    if missing or source:
        raise WeightFileError(
            f"MODEL.DINOV3.WEIGHTS: the Hugging Face state dict does not match a {len(model.blocks)}-block DINOv3 "
            f"ViT: missing ({len(missing)}) {missing[:8]}, unexpected ({len(source)}) {sorted(source)[:8]}")
    head_dim = model.embed_dim // model.num_heads
    out["rope_embed.periods"] = rope_periods(head_dim, float(config["rope_theta"]))
    return out


def dinov3_state_dict(source: WeightSource, model: DINOv3ViT) -> Dict[str, Tensor]:
    """``source``'s tensors under Meta's names for ``model``: Meta's layout as it is, the Hugging Face layout
    checked against its config (config.json, else what the keys show) and mapped by ``checkpoint_filter_fn``."""
    if source.layout == META_LAYOUT:
        return source.state_dict
    if source.layout != HF_LAYOUT:
        raise WeightFileError(f"MODEL.DINOV3.WEIGHTS: no mapping for the {source.layout} layout of '{source.path}'")
    flat = {(k[len("model."):] if k.startswith("model.layer.") else k): v for k, v in source.state_dict.items()}
    config = source.hf_config if source.hf_config is not None else _sizes_from_keys(flat)
    check_hf_config(config, model, str(source.path))
    mapped = checkpoint_filter_fn(source.state_dict, model, source.hf_config)
    theta = (source.hf_config or {}).get("rope_theta", HF_DEFAULTS["rope_theta"])
    checked = "config.json checked" if source.hf_config is not None else "no config.json: sizes checked from the keys"
    note = (f"Hugging Face keys mapped to Meta's (q/k/v -> qkv with the K bias masked, {checked}); RoPE periods "
            f"rebuilt bf16-rounded from rope_theta {theta}, as Meta's checkpoint holds them")
    if note not in source.notes:
        source.notes.append(note)
    return mapped


def load_dinov3_weights(model: DINOv3ViT, path: str, check_hash="warn") -> WeightSource:
    """Load the DINOv3 weights at ``path`` (a resolved ``MODEL.DINOV3.WEIGHTS``: Meta's ``.pth``, a
    ``.safetensors`` in either layout, a Hugging Face folder) strictly into ``model``, built on the meta device
    to take the memory-mapped tensors without a copy (or a built model, to copy them). Logs the layout read."""
    source = read_weights(path, **WEIGHT_SPECS["dinov3"], check_hash=check_hash)
    load_strict(model, dinov3_state_dict(source, model), component="DINOv3 ViT")
    logger.info(f"MODEL.DINOV3.WEIGHTS: read '{source.path}' ({source.container}, {source.layout} layout"
                + "".join(f"; {note}" for note in source.notes) + ")")
    return source
