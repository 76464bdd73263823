"""Check our encoders (and the training-free recipe) against the parity fixtures produced by the official code
(see shared/parity/README.md).

    python -m dinov3seg.tools.verify_parity FIXTURE.pt [FIXTURE.pt ...] [--precision bf16]

Each fixture names its model in ``blob["kind"]``; ``PARITY_CHECKS[kind](blob, path)`` builds our module from
``blob["config"]``, loads the fixture weights strictly and yields ``(name, ours, expected)`` for every stored
output (and ``Reported`` distances, printed but not asserted). Float outputs must satisfy
|ours - expected| <= ATOL + RTOL * |expected|; integer outputs (token ids) must be equal. Exit status 1 if any
comparison fails or a fixture cannot be checked.

``--precision bf16`` runs our side under CPU bf16 autocast (with the fp32 parts of modeling/precision.py) against
the fp32 expectations: the errors are reported, not asserted at the fp32 tolerance (only an unreadable fixture
fails). It shows what bf16 costs each stored output; slow on CPUs without AMX / AVX512-BF16.
"""
import argparse
import contextlib
import hashlib
import sys
from pathlib import Path
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from dinov3seg.modeling.encoders.anyup import AnyUp
from dinov3seg.modeling.encoders.dinotxt import DINOTxt, DINOTxtTextTower, DINOTxtVisionHead
from dinov3seg.modeling.encoders.dinov3 import DINOv3ViT

ATOL = RTOL = 1e-4
Comparison = Tuple[str, Tensor, Tensor]


class Reported(NamedTuple):
    """A distance that is printed, not asserted (e.g. to transformers' outputs, which differ by design)."""

    name: str
    ours: Tensor
    reference: Tensor


class ParityError(RuntimeError):
    """A fixture that cannot be checked (unknown kind, unsupported config, corrupted or mismatched data)."""


def state_dict_sha256(state_dict: Dict[str, Tensor]) -> str:
    """The fixtures' digest: over sorted keys, the key, str(dtype), str(tuple(shape)) and the raw bytes."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key]
        for part in (key, str(t.dtype), str(tuple(t.shape))):
            h.update(part.encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def load_fixture(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ParityError(message)


def build_dinov3_vit(config: dict) -> DINOv3ViT:
    """Our backbone from a fixture config (the official ``DinoVisionTransformer`` arguments)."""
    require(
        config["ffn_layer"] == "mlp" and config["qkv_bias"] and config["mask_k_bias"]
        and config["pos_embed_rope_normalize_coords"] == "separate"
        and not config.get("untie_cls_and_patch_norms", False),
        f"unsupported DINOv3 config: {config}",
    )
    return DINOv3ViT(
        embed_dim=config["embed_dim"],
        depth=config["depth"],
        num_heads=config["num_heads"],
        patch_size=config["patch_size"],
        n_storage_tokens=config["n_storage_tokens"],
        ffn_ratio=config["ffn_ratio"],
        rope_base=config["pos_embed_rope_base"],
        norm_eps=config["layernorm_eps"],
        in_chans=config["in_chans"],
    ).eval()


def load_dinov3_vit(blob: dict) -> DINOv3ViT:
    require(state_dict_sha256(blob["state_dict"]) == blob["state_dict_sha256"], "state_dict sha256 mismatch")
    model = build_dinov3_vit(blob["config"])
    model.load_state_dict(blob["state_dict"], strict=True)
    return model


def vit_outputs(model: DINOv3ViT, x: Tensor, expected: dict) -> Dict[str, object]:
    """Our values for the output names a DINOv3 fixture may hold."""
    ours: Dict[str, object] = dict(model.forward_features(x))
    if "gil_n" in expected:
        layers = model.get_intermediate_layers(x, n=expected["gil_n"], reshape=True, return_class_token=True)
        ours["gil_patch"] = [patches for patches, _ in layers]
        ours["gil_cls"] = [cls for _, cls in layers]
    h, w = x.shape[-2] // model.patch_size, x.shape[-1] // model.patch_size
    ours["rope_sin"], ours["rope_cos"] = model.rope_embed(H=h, W=w)
    if "blocks_out_unnormed" in expected:
        ours["blocks_out_unnormed"] = list(model.get_intermediate_layers(x, n=len(model.blocks), norm=False))
    ours["patch_embed"] = model.patch_embed(x)
    return ours


def paired(prefix: str, ours: Dict[str, object], expected: dict, skip=("gil_n",)) -> Iterator[Comparison]:
    """(name, ours, expected) for every expected output; list outputs are compared item by item."""
    for key, exp in expected.items():
        if key in skip or not isinstance(exp, (Tensor, list)):
            continue
        require(key in ours, f"no check implemented for output '{key}'")
        if isinstance(exp, list):
            require(len(ours[key]) == len(exp), f"{prefix}{key}: {len(ours[key])} items, expected {len(exp)}")
            for i, (a, e) in enumerate(zip(ours[key], exp)):
                yield f"{prefix}{key}[{i}]", a, e
        else:
            yield f"{prefix}{key}", ours[key], exp


def check_dinov3_vit(blob: dict, path: Path) -> Iterator[Comparison]:
    model = load_dinov3_vit(blob)
    for name, x in blob["inputs"].items():
        yield from paired(f"{name}/", vit_outputs(model, x, blob["outputs"][name]), blob["outputs"][name])
    extra = blob.get("extra_random_qkv_bias")
    if extra is not None:
        model.load_state_dict({**blob["state_dict"], **extra["state_dict_overrides"]}, strict=True)
        ours = model.forward_features(blob["inputs"][extra["input"]])
        yield from paired("extra_random_qkv_bias/", ours, extra)


def check_dinov3_hf(blob: dict, path: Path) -> Iterator[Comparison]:
    """DINOv3 weights in the Hugging Face layout (parity README §8) through the loader ``MODEL.DINOV3.WEIGHTS``
    uses: the state dict written as a ``save_pretrained`` folder (``model.safetensors`` + ``config.json``), read
    memory-mapped, its config checked, its keys mapped and the RoPE periods rebuilt, into a backbone built on the
    meta device from the fixture's Meta config. Matches ``outputs_official``; the distance to
    ``outputs_transformers`` is reported, and matched only with transformers' unrounded fp32 periods."""
    import json
    import tempfile

    from safetensors.torch import save_file

    from dinov3seg.modeling.encoders.dinov3 import rope_periods
    from dinov3seg.modeling.encoders.dinov3_weights import load_dinov3_weights

    require(state_dict_sha256(blob["state_dict"]) == blob["state_dict_sha256"], "state_dict sha256 mismatch")
    config = blob["config"]
    with torch.device("meta"):
        model = build_dinov3_vit(config["meta"])
    with tempfile.TemporaryDirectory() as folder:
        save_file(blob["state_dict"], str(Path(folder) / "model.safetensors"), metadata={"format": "pt"})
        (Path(folder) / "config.json").write_text(json.dumps(config["transformers"]))
        source = load_dinov3_weights(model, folder, check_hash="off")
        model = model.eval()
        require(source.layout == "Hugging Face", f"layout read as {source.layout}, not Hugging Face")
        yield "rope_embed.periods (rebuilt)", model.rope_embed.periods, torch.tensor(
            config["meta"]["rope_periods_checkpoint"])
        names = {"x_norm_clstoken": "cls_token", "x_storage_tokens": "register_tokens",
                 "x_norm_patchtokens": "patch_tokens"}
        fp32_periods = rope_periods(model.embed_dim // model.num_heads, config["transformers"]["rope_theta"], None)
        for name, x in blob["inputs"].items():
            expected = blob["outputs_official"][name]
            ours = {names.get(k, k): v for k, v in vit_outputs(model, x, expected).items()}
            yield from paired(f"{name}/", ours, expected)
            for key in ("cls_token", "register_tokens", "patch_tokens"):
                yield Reported(f"{name}/{key} vs outputs_transformers", ours[key],
                               blob["outputs_transformers"][name][key])
            model.rope_embed.periods = fp32_periods  # transformers' mode: its unrounded fp32 frequencies
            ours = {names.get(k, k): v for k, v in vit_outputs(model, x, expected).items()}
            model.rope_embed.periods = torch.tensor(config["meta"]["rope_periods_checkpoint"])
            transformers_outputs = {k: v for k, v in blob["outputs_transformers"][name].items() if k != "pooler_output"}
            yield from paired(f"{name}/fp32 periods/", ours, transformers_outputs)


def build_dinotxt(config: dict, backbone: DINOv3ViT) -> DINOTxt:
    """Our dinov3.txt from a fixture config (the official ``DINOTxtConfig`` + text transformer arguments)."""
    dc, tc, vc = config["dinotxt_config"], config["text_transformer"], config["vision_head"]
    require(
        dc["vision_model_use_class_token"] and dc["vision_model_use_patch_tokens"]
        and dc["vision_model_patch_tokens_pooler_type"] == "mean" and dc["vision_model_patch_token_layer"] == 1
        and not dc["vision_model_use_linear_projection"] and dc["text_model_tokens_pooler_type"] == "argmax"
        and dc["text_model_num_head_blocks"] == 0 and dc["text_model_use_linear_projection"]
        and tc["is_causal"] and tc["ls_init_value"] is None and vc["input_dim"] == backbone.embed_dim,
        f"unsupported dinov3.txt config: {config}",
    )
    head = DINOTxtVisionHead(vc["input_dim"], vc["num_heads"], vc["num_blocks"], embed_dim=dc["embed_dim"])
    text = DINOTxtTextTower(
        context_length=tc["context_length"],
        vocab_size=tc["vocab_size"],
        width=tc["dim"],
        heads=tc["num_heads"],
        layers=tc["num_layers"],
        output_dim=dc["embed_dim"],
        ffn_ratio=tc["ffn_ratio"],
    )
    return DINOTxt(backbone, head, text).eval()


def referenced_fixture(path: Path, config: dict, name: str) -> Tuple[Path, dict]:
    """The fixture ``config[name + "_fixture"]`` beside ``path``, checked against ``config[name +
    "_state_dict_sha256"]``."""
    ref = path.parent / config[f"{name}_fixture"]
    require(ref.is_file(), f"{name} fixture {ref} not found")
    blob = load_fixture(ref)
    require(state_dict_sha256(blob["state_dict"]) == config[f"{name}_state_dict_sha256"],
            f"{ref.name} is not the {name} this fixture was made with (state_dict sha256)")
    return ref, blob


def load_dinotxt(blob: dict, backbone_blob: dict) -> DINOTxt:
    """Our dinov3.txt from a ``dinotxt`` fixture and its backbone fixture, loaded strictly."""
    model = build_dinotxt(blob["config"], load_dinov3_vit(backbone_blob))
    result = model.load_dinotxt_state_dict(blob["state_dict"])
    require(not result.missing_keys, f"missing keys {result.missing_keys}")
    return model


def check_dinotxt(blob: dict, path: Path) -> Iterator[Comparison]:
    from dinov3seg.modeling.encoders.tokenizer import BPE_SHA256, build_tokenizer

    backbone_path, backbone_blob = referenced_fixture(path, blob["config"], "backbone")
    model = load_dinotxt(blob, backbone_blob)

    require(blob["bpe_sha256"] == BPE_SHA256, "fixture made with a different BPE vocabulary")
    tokenizer = build_tokenizer()
    prompts = blob["inputs"]["prompts"]
    ids = tokenizer(prompts, context_length=blob["token_ids"].shape[1])
    yield "token_ids", ids, blob["token_ids"]
    for i, (text, unpadded) in enumerate(zip(prompts, blob["tokens_unpadded"])):
        ours = [tokenizer.sot_id] + tokenizer.encode(text) + [tokenizer.eot_id]
        yield f"tokens_unpadded[{i}]", torch.tensor(ours), torch.tensor(unpadded)

    expected = blob["outputs"]
    text_features = model.encode_text(ids)
    ours = {
        "text_backbone_tokens": model.text.backbone(ids),
        "text_eot_index": ids.argmax(dim=-1),
        "text_features": text_features,
        "text_features_normalized": torch.nn.functional.normalize(text_features, dim=-1),
        "logit_scale_exp": model.logit_scale.exp(),
    }
    yield from paired("", ours, {k: v for k, v in expected.items() if not isinstance(v, dict)})

    for name, ref in blob["inputs"]["images"].items():
        file_name, _, key = ref.partition(":")
        require(file_name == backbone_path.name and key.startswith("inputs/"), f"unsupported image reference {ref}")
        images = backbone_blob["inputs"][key[len("inputs/") :]]
        digest = hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()
        require(digest == blob["inputs"]["images_sha256"][name], f"image {ref}: sha256 mismatch")
        cls, storage, patches = model.backbone_tokens(images)
        head_cls, head_patches = model.head_tokens(images)
        image_features = model.image_features(images)
        ours = {
            "backbone_class_token": cls,
            "backbone_register_tokens": storage,
            "backbone_patch_tokens": patches,
            "head_class_token": head_cls,
            "head_patch_tokens": head_patches,
            "image_features": image_features,
            "image_features_normalized": torch.nn.functional.normalize(image_features, dim=-1),
            "image_logits": model.get_logits(images, ids),
        }
        yield from paired(f"{name}/", ours, expected[name])


def check_anyup(blob: dict, path: Path) -> Iterator[Comparison]:
    """Our AnyUp at the fixture config: both output sizes, chunked queries and the key debug tensors."""
    c = blob["config"]
    require(c["input_dim"] == 3 and c["kernel_size"] == 1 and not c["use_natten"]
            and c["lfu_dim"] in (None, c["qk_dim"]), f"unsupported AnyUp config: {c}")
    require(state_dict_sha256(blob["state_dict"]) == blob["state_dict_sha256"], "state_dict sha256 mismatch")
    model = AnyUp(c["qk_dim"], c["num_heads"], c["window_ratio"], c["kernel_size_lfu"]).eval()
    model.load_state_dict(blob["state_dict"], strict=True)
    for name, inp in blob["inputs"].items():
        image, feats = inp["image"], inp["features"]
        ours = {
            "out_default": model(image, feats),
            "out_feature_grid": model(image, feats, output_size=feats.shape[-2:]),
            "key_features_encoder": model.key_features_encoder(torch.nn.functional.normalize(feats, dim=1)),
            "k_aggregated": model.encode_keys(model.encode_image(image), feats),
        }
        yield from paired(f"{name}/", ours, blob["outputs"][name])
        yield f"{name}/out_default(q_chunk_size=1000)", model(image, feats, q_chunk_size=1000), ours["out_default"]


def build_catseg_head(config: dict, class_chunk_size: int = 0):
    """Our head in its CAT-Seg configuration from a fixture config (CAT-Seg's ``Aggregator`` arguments).

    CAT-Seg's one text embedding per prompt is our patch-aligned half alone (TEXT_CHANNELS ["local"], one
    template per prompt channel); its appearance guidance takes the place of our SAM neck, and its decoder
    features (before ``upsample1`` / ``upsample2``) that of our hooked SAM maps.
    """
    from detectron2.layers import ShapeSpec

    from dinov3seg.modeling.head import DINOv3SegHead

    a = config["aggregator"]
    dim = a["text_guidance_dim"]
    require(dim > 0 and len(a["decoder_dims"]) == 2 and a["window_size"] > 0,
            f"unsupported CAT-Seg Aggregator config (needs text guidance and two decoder stages): {a}")
    shape = {"patches": ShapeSpec(channels=dim, stride=16), "text": ShapeSpec(channels=2 * dim)}
    if a["appearance_guidance_dim"] > 0:
        shape["guidance"] = ShapeSpec(channels=a["appearance_guidance_dim"], stride=16)
    if a["decoder_guidance_dims"][0] > 0:
        shape["decoder_guidance"] = ShapeSpec(channels=config["decoder_feature_dim"], stride=16)
    else:
        require(not any(a["decoder_guidance_proj_dims"]), f"decoder guidance projected from nothing: {a}")
    pooling = a["pooling_size"] if a["pooling_size"] is not None else (1, 1)
    return DINOv3SegHead(
        input_shape=shape, text_channels=["local"], num_templates=a["prompt_channel"], embed_dim=a["hidden_dim"],
        guidance_dim=a["appearance_guidance_proj_dim"], text_guidance_dim=a["text_guidance_proj_dim"],
        num_rounds=a["num_layers"], window_size=a["window_size"], num_heads=a["nheads"],
        class_attention=a["attention_type"], class_pooling=tuple(pooling), pad_len=a["pad_len"],
        decoder_dims=a["decoder_dims"], decoder_guidance_dims=a["decoder_guidance_proj_dims"],
        decoder_guidance_upsample_dims=a["decoder_guidance_dims"], class_chunk_size=class_chunk_size).eval()


def check_catseg_aggregator(blob: dict, path: Path) -> Iterator[Comparison]:
    """Our head against CAT-Seg's Aggregator: logits, cost volume and upsampled decoder guidance, in one pass
    and with classes in chunks of 3 (the test-time memory bound)."""
    from dinov3seg.modeling.head.catseg_weights import checkpoint_filter_fn
    from dinov3seg.modeling.head.cost_volume import cosine_cost_volume

    require(state_dict_sha256(blob["state_dict"]) == blob["state_dict_sha256"], "state_dict sha256 mismatch")
    state = checkpoint_filter_fn(blob["state_dict"])
    heads = [build_catseg_head(blob["config"], chunk) for chunk in (0, 3)]
    for head in heads:
        head.load_state_dict(state, strict=True)
    for name, inp in blob["inputs"].items():
        text = inp["text_feats"]  # B, T, P, C
        require(bool((text == text[:1]).all()), f"{name}: text_feats differ across the batch (one vocabulary)")
        text = torch.cat([torch.zeros_like(text[0]), text[0]], dim=-1)  # T, P, 2C: CAT-Seg's text = our local half
        features = inp["decoder_features"] if heads[0].decoder_guidance_projections is not None else None
        guidance = inp["appearance_guidance"] if heads[0].guidance_projection is not None else None
        args = (inp["img_feats"], text, guidance, features)
        local_half = text[..., text.shape[-1] // 2 :]
        ours = {"logits": heads[0](*args), "corr": cosine_cost_volume(inp["img_feats"], local_half)}
        if features is not None:
            ours["decoder_guidance"] = [p[0](f) for p, f in zip(heads[0].decoder_guidance_projections, features)]
        yield from paired(f"{name}/", ours, blob["outputs"][name])
        yield f"{name}/logits(class_chunk_size=3)", heads[1](*args), blob["outputs"][name]["logits"]


def check_dinotxt_zeroshot(blob: dict, path: Path) -> Iterator[Comparison]:
    """Meta's training-free dense recipe (parity README §7) through our DINOTxtZeroShot, set up from the
    fixture's config (sizes, windows, templates, normalisation, class names) on the referenced model fixtures."""
    from dinov3seg.modeling.encoders.tokenizer import BPE_SHA256, build_tokenizer
    from dinov3seg.modeling.meta_arch_common import to_output_size
    from dinov3seg.modeling.meta_arch_zeroshot import DINOTxtZeroShot
    from dinov3seg.modeling.text_embeddings import IMAGENET_TEMPLATES, TextEmbedder

    c, inputs, expected = blob["config"], blob["inputs"], blob["outputs"]
    require(c["bpe_sha256"] == BPE_SHA256, "fixture made with a different BPE vocabulary")
    require(c["mode"] in ("slide", "whole") and c["resize_interpolation"].startswith("bicubic"),
            f"unsupported recipe: mode {c['mode']!r}, resize {c['resize_interpolation']!r}")
    names = list(inputs["class_names"])
    require(not any("," in n for n in names), f"class names {names}: commas separate synonyms in our "
            "vocabularies, Meta's recipe keeps them inside the prompt")
    templates = [t.replace("{0}", "{}") for t in c["prompt_templates"]]
    require(c["templates"] != "imagenet80" or tuple(templates) == IMAGENET_TEMPLATES,
            "the fixture's 80 ImageNet templates differ from IMAGENET_TEMPLATES")
    _, backbone_blob = referenced_fixture(path, c, "backbone")
    _, dinotxt_blob = referenced_fixture(path, c, "dinotxt")
    dinotxt = load_dinotxt(dinotxt_blob, backbone_blob)
    require(dinotxt.backbone.patch_size == c["patch_size"], f"patch size {c['patch_size']} != ours")

    token_ids = []  # what the model's text embedder tokenizes, in its order (class, template)
    tokenizer = build_tokenizer()

    def recording_tokenizer(texts, context_length):
        token_ids.append(tokenizer(texts, context_length=context_length))
        return token_ids[-1]

    embedder = TextEmbedder(text_encoder=dinotxt.text, tokenizer=recording_tokenizer, templates=templates,
                            context_length=c["context_length"])
    model = DINOTxtZeroShot(
        dinotxt=dinotxt, anyup=None, text_embedder=embedder, lga=None,
        pixel_mean=[255 * m for m in c["normalize"]["mean"]], pixel_std=[255 * s for s in c["normalize"]["std"]],
        test_class_names=names, mode=c["mode"], short_side=c["resize_short_side"], window=c["side"],
        stride=c["stride"], use_vision_head=False)

    text = model.text_features(names)
    ids = torch.cat(token_ids).view(len(names), len(templates), -1)
    width = expected["token_ids"].shape[-1]
    yield "token_ids", ids[..., :width], expected["token_ids"]
    yield "token_ids (beyond the stored columns: padding)", ids[..., width:], torch.zeros_like(ids[..., width:])
    image = torch.as_tensor(inputs["image_uint8"]).permute(2, 0, 1)
    resized = model.normalize(model.resize(image))
    height, width = resized.shape[-2:]
    slide = model.slide_probabilities(resized, text)
    ours = {"text_features": text, "image_resized_normalized": resized, "probs_slide": slide,
            "cos_whole": model.cosines(resized[None], text)[0]}
    yield from paired("", ours, {k: v for k, v in expected.items() if k not in ("token_ids", "pred_at_input_size")})
    yield ("slide_windows_yyxx", torch.tensor(model.window_boxes(height, width)),
           torch.tensor(c["slide_windows_yyxx"]))

    # The label map through the model's own forward. An argmax may flip only where the top-2 margin is within
    # twice the error of what is upsampled to it (bilinear weights sum to 1): those pixels are left out.
    before = slide if c["mode"] == "slide" else ours["cos_whole"]
    error = float((before - expected["probs_slide" if c["mode"] == "slide" else "cos_whole"]).abs().max())
    x = {"image": image, "height": image.shape[1], "width": image.shape[2]}
    pred = model([x])[0]["sem_seg"].argmax(dim=0)
    top2 = to_output_size(before, x).topk(2, dim=0).values
    keep = (top2[0] - top2[1]) > 2 * error + 1e-7
    yield (f"pred_at_input_size ({int((~keep).sum())} px with margin <= {2 * error:.1e} left out)", pred[keep],
           expected["pred_at_input_size"][keep])


PARITY_CHECKS: Dict[str, Callable[[dict, Path], Iterator[Comparison]]] = {
    "dinov3_vit": check_dinov3_vit,
    "dinotxt": check_dinotxt,
    "anyup": check_anyup,
    "catseg_aggregator": check_catseg_aggregator,
    "dinov3_hf": check_dinov3_hf,
    "dinotxt_zeroshot": check_dinotxt_zeroshot,
}


def compare(ours: Tensor, expected: Tensor) -> Tuple[bool, float, float]:
    """(pass, max abs error, max relative error) of ours against expected."""
    if ours.shape != expected.shape:
        return False, float("inf"), float("inf")
    if not expected.is_floating_point():
        diff = (ours.long() - expected.long()).abs()
        return bool((diff == 0).all()), float(diff.max()) if diff.numel() else 0.0, 0.0
    diff = (ours.double() - expected.double()).abs()
    rel = diff / expected.double().abs().clamp_min(torch.finfo(torch.float64).tiny)
    ok = bool((diff <= ATOL + RTOL * expected.double().abs()).all())
    if not diff.numel():
        return ok, 0.0, 0.0
    return ok, float(diff.max()), float(rel.max())


def verify(path: Path, precision: str = "fp32") -> bool:
    """Runs the check for one fixture and prints one line per output; True if everything passes (in bf16: if
    the fixture could be checked; the errors are reported only)."""
    print(f"== {path}" + (" (ours in bf16 autocast vs fp32 expected: errors reported, not asserted)"
                          if precision == "bf16" else ""))
    bf16 = precision == "bf16"
    try:
        blob = load_fixture(path)
        kind = blob.get("kind")
        if kind not in PARITY_CHECKS:
            raise ParityError(f"no parity check for kind '{kind}' (known: {', '.join(PARITY_CHECKS)})")
        results: List[bool] = []
        worst = 0.0
        with torch.no_grad(), (bf16_autocast_cpu() if bf16 else contextlib.nullcontext()):
            for item in PARITY_CHECKS[kind](blob, path):
                if isinstance(item, Reported):
                    _, max_abs, max_rel = compare(item.ours.float(), item.reference)
                    print(f"  {item.name:48s} max_abs {max_abs:.2e}  max_rel {max_rel:.2e}  (reported, not asserted)")
                    continue
                name, ours, expected = item
                ok, max_abs, max_rel = compare(ours.float() if bf16 and ours.is_floating_point() else ours, expected)
                results.append(ok)
                worst = max(worst, max_abs) if expected.is_floating_point() else worst
                verdict = ("within" if ok else "beyond") + " fp32 tol" if bf16 else ("PASS" if ok else "FAIL")
                print(f"  {name:48s} max_abs {max_abs:.2e}  max_rel {max_rel:.2e}  {verdict}")
    except ParityError as e:
        print(f"  ERROR: {e}")
        return False
    if bf16:
        print(f"  bf16: {sum(results)}/{len(results)} within the fp32 tolerance, largest max_abs {worst:.2e} ({kind})")
        return True
    print(f"  {sum(results)}/{len(results)} passed ({kind})")
    return all(results)


@contextlib.contextmanager
def bf16_autocast_cpu():
    """CPU bf16 autocast with the model's fp32 islands (norm layers take fp32 inputs)."""
    from dinov3seg.modeling.precision import norms_fp32_everywhere

    with torch.autocast("cpu", dtype=torch.bfloat16), norms_fp32_everywhere():
        yield


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fixtures", nargs="+", type=Path)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: run ours under CPU bf16 autocast and report the errors (not asserted)")
    args = parser.parse_args(argv)
    results = [verify(path, args.precision) for path in args.fixtures]
    print("PASS" if all(results) else "FAIL")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
