"""Weights where users have them: DINOv3 in the Hugging Face layout (parity README §8), .safetensors for every
weight key (memory-mapped, no second copy), the weights folder, check_weights' per-key listing, convert_weights."""
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torch.testing import assert_close

from dinov3seg.config import get_dinov3seg_cfg
from dinov3seg.modeling.encoders import build_anyup, build_dinotxt, build_sam
from dinov3seg.modeling.encoders.anyup import AnyUp
from dinov3seg.modeling.encoders.dinov3_weights import load_dinov3_weights
from dinov3seg.modeling.encoders.weights import WEIGHT_SPECS, WeightFileError, find_weights, weight_path
from dinov3seg.tools import check_weights as cw
from dinov3seg.tools import convert_weights
from dinov3seg.tools.verify_parity import build_dinov3_vit
from conftest import load_parity_fixture

TOL = dict(atol=1e-4, rtol=1e-4)
CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")
EMPTY = ["MODEL.DINOV3.WEIGHTS", "", "MODEL.DINOTXT.WEIGHTS", "", "MODEL.ANYUP.WEIGHTS", "", "MODEL.SAM.WEIGHTS", ""]
OUTPUTS = {"cls_token": "x_norm_clstoken", "register_tokens": "x_storage_tokens", "patch_tokens": "x_norm_patchtokens"}


@pytest.fixture(scope="module")
def hf(parity_dir):
    return load_parity_fixture(parity_dir, "dinov3_hf_small.pt", "Hugging Face layout fixture")


def fixture_opts(hf) -> list:
    """quickstart.yaml with the fixture's backbone sizes and no other weight file."""
    m = hf["config"]["meta"]
    return EMPTY + ["MODEL.DINOV3.EMBED_DIM", str(m["embed_dim"]), "MODEL.DINOV3.DEPTH", str(m["depth"]),
                    "MODEL.DINOV3.NUM_HEADS", str(m["num_heads"])]


def write_hf_folder(hf, folder, config=None, shards=1):
    """The fixture as save_pretrained writes it: config.json + model.safetensors (or shards + their index)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or hf["config"]["transformers"]))
    keys = sorted(hf["state_dict"])
    if shards == 1:
        save_file(hf["state_dict"], str(folder / "model.safetensors"), metadata={"format": "pt"})
        return folder
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: hf["state_dict"][k] for k in keys[i::shards]}
        save_file(part, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def backbone_outputs(hf, path):
    """forward_features of the fixture-sized backbone loaded from ``path`` through the MODEL.DINOV3.WEIGHTS path."""
    cfg = get_dinov3seg_cfg(CONFIG, fixture_opts(hf) + ["MODEL.DINOV3.WEIGHTS", str(path)])
    backbone = build_dinotxt(cfg).backbone.eval()
    with torch.no_grad():
        return backbone.forward_features(hf["inputs"]["img_128x240"])


def assert_official(hf, ours):
    for key, name in OUTPUTS.items():
        assert_close(ours[name], hf["outputs_official"]["img_128x240"][key], **TOL)


def test_hf_folder_gives_metas_outputs_not_transformers(hf, tmp_path, caplog):
    """The folder save_pretrained writes: Meta's outputs at 1e-4 (periods rebuilt bf16-rounded), and as far
    from transformers' as the fixture documents (about 1e-2 on the patch tokens)."""
    with caplog.at_level("INFO"):
        ours = backbone_outputs(hf, write_hf_folder(hf, tmp_path / "dinov3-hf"))
    assert_official(hf, ours)
    gap = hf["diagnostics"]["maxabs_official_vs_transformers"]["img_128x240"]
    for key, name in OUTPUTS.items():
        measured = float((ours[name] - hf["outputs_transformers"]["img_128x240"][key]).abs().max())
        assert abs(measured - gap[key]) < 1e-4, (key, measured, gap[key])
    assert "Hugging Face folder (model.safetensors)" in caplog.text and "RoPE periods rebuilt" in caplog.text


def test_both_layouts_as_single_safetensors_files(hf, parity_dir, tmp_path):
    """A bare model.safetensors in the HF layout (no config.json: sizes checked from the keys) and Meta's own
    state dict saved as .safetensors both load and reproduce the official outputs."""
    path = tmp_path / "hf_only" / "dinov3.safetensors"
    path.parent.mkdir()
    save_file(hf["state_dict"], str(path))
    assert_official(hf, backbone_outputs(hf, path))

    meta_blob = torch.load(parity_dir / "dinov3_vit_small.pt", map_location="cpu", weights_only=True)
    meta_path = tmp_path / "dinov3_meta.safetensors"
    save_file(meta_blob["state_dict"], str(meta_path))
    c = meta_blob["config"]
    with torch.device("meta"):
        model = build_dinov3_vit(c)
    source = load_dinov3_weights(model, str(meta_path))
    assert (source.layout, source.container) == ("Meta", "safetensors")
    with torch.no_grad():
        ours = model.eval().forward_features(meta_blob["inputs"]["img_224"])
    for key in ("x_norm_clstoken", "x_storage_tokens", "x_norm_patchtokens"):
        assert_close(ours[key], meta_blob["outputs"]["img_224"][key], **TOL)


def test_sharded_and_hub_cache_folders(hf, tmp_path):
    """Three shards with their index, and the hub cache's models--org--name/snapshots/<hash> behind refs/main,
    load the same tensors as the single file; a missing shard is named."""
    single = build_dinov3(hf, write_hf_folder(hf, tmp_path / "single"))
    sharded = build_dinov3(hf, write_hf_folder(hf, tmp_path / "sharded", shards=3))
    repo = tmp_path / "models--facebook--dinov3-vitl16-pretrain-lvd1689m"
    write_hf_folder(hf, repo / "snapshots" / "0123abc")
    (repo / "snapshots" / "old").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc\n")
    cached = build_dinov3(hf, repo)
    for other in (sharded, cached):
        assert_close(other.state_dict(), single.state_dict(), atol=0, rtol=0)
    (tmp_path / "sharded" / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(WeightFileError, match=r"MODEL\.DINOV3\.WEIGHTS: shard\(s\) model-00002-of-00003"):
        build_dinov3(hf, tmp_path / "sharded")


def build_dinov3(hf, path):
    cfg = get_dinov3seg_cfg(CONFIG, fixture_opts(hf) + ["MODEL.DINOV3.WEIGHTS", str(path)])
    return build_dinotxt(cfg).backbone


@pytest.mark.parametrize("field, value, ours", [("hidden_size", 256, "MODEL.DINOV3.EMBED_DIM"),
                                                ("num_hidden_layers", 3, "MODEL.DINOV3.DEPTH"),
                                                ("num_attention_heads", 4, "MODEL.DINOV3.NUM_HEADS"),
                                                ("num_register_tokens", 0, "storage tokens"),
                                                ("patch_size", 14, "patch size")])
def test_mismatched_config_names_both_values(hf, tmp_path, field, value, ours):
    config = dict(hf["config"]["transformers"], **{field: value})
    mine = hf["config"]["transformers"][field]
    with pytest.raises(WeightFileError) as err:
        build_dinov3(hf, write_hf_folder(hf, tmp_path / "f", config=config))
    message = str(err.value)
    assert f"{field} {value} but ours is {mine}" in message and ours in message and "MODEL.DINOV3.WEIGHTS" in message


def test_every_hf_key_is_accounted_for(hf, tmp_path):
    state = dict(hf["state_dict"])
    del state["layer.1.attention.k_proj.weight"]
    state["layer.0.attention.extra.weight"] = torch.zeros(1)
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightFileError) as err:
        build_dinov3(hf, path)
    message = str(err.value)
    assert "layer.1.attention.k_proj.weight" in message and "layer.0.attention.extra.weight" in message


def test_truncated_safetensors_is_one_line_naming_key_and_file(hf, tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(hf["state_dict"], str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightFileError) as err:
        build_dinov3(hf, path)
    message = str(err.value)
    assert "\n" not in message and message.startswith("MODEL.DINOV3.WEIGHTS: cannot read") and str(path) in message
    assert "truncated" in message
    anyup = tmp_path / "anyup_multi_backbone.safetensors"
    save_file(AnyUp(qk_dim=16).state_dict(), str(anyup))
    anyup.write_bytes(anyup.read_bytes()[:100])
    cfg = get_dinov3seg_cfg(CONFIG, EMPTY + ["MODEL.ANYUP.WEIGHTS", str(anyup)])
    with pytest.raises(WeightFileError, match=r"^MODEL\.ANYUP\.WEIGHTS: cannot read '.*anyup_multi_backbone") as err:
        build_anyup(cfg)
    assert "\n" not in str(err.value)


def mapped_ranges(path) -> list:
    """Address ranges of ``path`` in this process's memory maps."""
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            if line.rstrip().endswith(str(path)):
                start, end = line.split()[0].split("-")
                ranges.append((int(start, 16), int(end, 16)))
    return ranges


def is_view_of(tensor, ranges) -> bool:
    ptr = tensor.untyped_storage().data_ptr()
    return any(start <= ptr < end for start, end in ranges)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_every_weight_key_takes_safetensors_and_loads_without_a_copy(tmp_path, suffix):
    """DINOv3, dinov3.txt, AnyUp and SAM files, as .pth and as .safetensors, load strictly; the large encoders'
    parameters are views of the memory-mapped file (built on the meta device, assigned), not a second copy."""
    base = get_dinov3seg_cfg(CONFIG, EMPTY)
    torch.manual_seed(0)
    sources = {"dinotxt": build_dinotxt(base), "anyup": build_anyup(base), "sam": build_sam(base, 64)}
    files = {"MODEL.DINOV3.WEIGHTS": (tmp_path / f"dinov3{suffix}", sources["dinotxt"].backbone.state_dict()),
             "MODEL.DINOTXT.WEIGHTS": (tmp_path / f"dinotxt{suffix}", dinotxt_file_state(sources["dinotxt"])),
             "MODEL.ANYUP.WEIGHTS": (tmp_path / f"anyup{suffix}", sources["anyup"].state_dict()),
             "MODEL.SAM.WEIGHTS": (tmp_path / f"sam{suffix}", sources["sam"].state_dict())}
    for path, state in files.values():
        convert_weights.save_state_dict(state, path)
    cfg = get_dinov3seg_cfg(CONFIG, [x for key, (path, _) in files.items() for x in (key, str(path))])
    dinotxt, anyup, sam = build_dinotxt(cfg), build_anyup(cfg), build_sam(cfg, 64)
    assert_close(dinotxt.state_dict(), sources["dinotxt"].state_dict(), atol=0, rtol=0)
    assert_close(anyup.state_dict(), sources["anyup"].state_dict(), atol=0, rtol=0)
    assert_close(sam.state_dict(), sources["sam"].state_dict(), atol=0, rtol=0)
    for module, (path, _) in ((dinotxt.backbone, files["MODEL.DINOV3.WEIGHTS"]),
                              (dinotxt.text, files["MODEL.DINOTXT.WEIGHTS"]), (sam, files["MODEL.SAM.WEIGHTS"])):
        ranges = mapped_ranges(path)
        assert ranges, f"{path} is not memory-mapped"
        assert all(is_view_of(p, ranges) for p in module.parameters()), path


def dinotxt_file_state(model) -> dict:
    """Our dinov3.txt module's head + text tensors under the released file's names."""
    state = {f"visual_model.head.{k}": v for k, v in model.vision_head.state_dict().items()}
    state.update({f"text_model.{k}": v for k, v in model.text.state_dict().items()})
    state["logit_scale"] = model.logit_scale.detach()
    return state


def test_weights_folder_search_order_and_message(hf, tmp_path, monkeypatch):
    """A bare released name is looked up in MODEL.ENCODER_WEIGHTS_DIR, then $DINOV3SEG_WEIGHTS, then ./weights;
    a bare DINOv3 name also finds the Hugging Face folder; an explicit path wins; the error names every folder."""
    monkeypatch.chdir(tmp_path)
    env_dir, key_dir = tmp_path / "env", tmp_path / "key"
    write_hf_folder(hf, env_dir / "dinov3-vitl16-pretrain-lvd1689m")
    anyup = key_dir / "anyup_paper.pth"
    key_dir.mkdir()
    torch.save(AnyUp(qk_dim=16).state_dict(), anyup)
    monkeypatch.setenv("DINOV3SEG_WEIGHTS", str(env_dir))
    released = WEIGHT_SPECS["dinov3"]["expected_name"]
    cfg = get_dinov3seg_cfg(CONFIG, fixture_opts(hf) + ["MODEL.DINOV3.WEIGHTS", released,
                                                        "MODEL.ANYUP.WEIGHTS", "anyup_multi_backbone.pth"])
    with pytest.raises(WeightFileError) as err:
        weight_path(cfg, "anyup")
    message = str(err.value)
    assert "\n" not in message and "MODEL.ANYUP.WEIGHTS: 'anyup_multi_backbone.pth' was not found" in message
    for text in ("MODEL.ENCODER_WEIGHTS_DIR (not set)", f"$DINOV3SEG_WEIGHTS '{env_dir}'", "./weights",
                 "anyup_paper.pth", "github.com/wimmerth/anyup"):
        assert text in message
    cfg.MODEL.ENCODER_WEIGHTS_DIR = str(key_dir)
    assert weight_path(cfg, "anyup") == str(anyup)  # the other released AnyUp file, in the key's folder
    assert weight_path(cfg, "dinov3") == str(env_dir / "dinov3-vitl16-pretrain-lvd1689m")
    assert_official(hf, run_backbone(hf, cfg))
    (tmp_path / "weights").mkdir()
    torch.save({}, tmp_path / "weights" / "anyup_multi_backbone.pth")
    assert weight_path(cfg, "anyup") == str(anyup)  # MODEL.ENCODER_WEIGHTS_DIR comes before ./weights
    explicit = tmp_path / "elsewhere" / "mine.pth"
    path, how = find_weights(str(explicit), **WEIGHT_SPECS["anyup"], weights_dir=str(key_dir))
    assert (path, how) == (str(explicit), "the path given")  # used as it is, even if it does not exist


def run_backbone(hf, cfg):
    with torch.no_grad():
        return build_dinotxt(cfg).backbone.eval().forward_features(hf["inputs"]["img_128x240"])


def test_check_weights_lists_file_layout_size_and_hash(hf, tmp_path, monkeypatch, capsys):
    folder = write_hf_folder(hf, tmp_path / "w" / "dinov3-vitl16-pretrain-lvd1689m")
    monkeypatch.setenv("DINOV3SEG_WEIGHTS", str(folder.parent))
    opts = fixture_opts(hf) + ["MODEL.DINOV3.WEIGHTS", WEIGHT_SPECS["dinov3"]["expected_name"],
                               "MODEL.ANYUP.WEIGHTS", "anyup_multi_backbone.pth"]
    assert cw.main(["--config-file", CONFIG, "--opts", *opts]) == 1  # AnyUp's file is not there
    out = capsys.readouterr().out
    dinov3 = out.split("[OK] MODEL.DINOV3.WEIGHTS")[1].split("[")[0]
    assert f"{folder}  (found in $DINOV3SEG_WEIGHTS" in dinov3
    assert "layout: Hugging Face folder (model.safetensors), Hugging Face keys; Hugging Face keys mapped" in dinov3
    size = (folder / "model.safetensors").stat().st_size
    assert f"size:   {size / 1e6:.1f} MB" in dinov3 and "hash:   not applicable" in dinov3
    assert "38 keys loaded strictly into the DINOv3 ViT backbone (from the file's 41 Hugging Face keys)" in dinov3
    anyup = out.split("[FAIL] MODEL.ANYUP.WEIGHTS")[1].split("[")[0]
    assert "was not found" in anyup and "get:    anyup_multi_backbone.pth" in anyup and ANYUP_URL in anyup


ANYUP_URL = "https://github.com/wimmerth/anyup/releases"


def test_convert_weights_hf_folder_to_meta_files(hf, tmp_path, capsys):
    folder = write_hf_folder(hf, tmp_path / "hf", shards=2)
    opts = fixture_opts(hf)
    for suffix in (".pth", ".safetensors"):
        out = tmp_path / f"dinov3_vitl16_pretrain_lvd1689m{suffix}"
        assert convert_weights.main([str(folder), str(out), "--config-file", CONFIG, "--opts", *opts]) == 0
        report = capsys.readouterr().out
        assert "checked: config.json against MODEL.DINOV3" in report and "RoPE periods rebuilt" in report
        assert "read back, every tensor equal" in report and f"use it:  MODEL.DINOV3.WEIGHTS {out}" in report
        state = torch.load(out, weights_only=True) if suffix == ".pth" else None
        if state is not None:
            assert state["rope_embed.periods"].tolist() == hf["config"]["meta"]["rope_periods_checkpoint"]
            assert state["blocks.0.attn.qkv.bias_mask"].tolist() == [1.0] * 192 + [0.0] * 192 + [1.0] * 192
        assert_official(hf, backbone_outputs(hf, out))
    # a config of other sizes: one line, nothing written
    bad = tmp_path / "bad.pth"
    assert convert_weights.main([str(folder), str(bad), "--config-file", CONFIG]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hidden_size 192 but ours is" in err and not bad.exists()


def test_training_checkpoint_exports_to_safetensors_for_model_weights(tmp_path):
    from dinov3seg.checkpoint import DINOv3SegCheckpointer

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(3, 2)
            self.frozen = nn.Linear(2, 2).requires_grad_(False)

        def trainable_state_dict(self):
            return {k: v for k, v in self.state_dict().items() if k.startswith("head.")}

    torch.manual_seed(0)
    trained = Tiny()
    DINOv3SegCheckpointer(trained, save_dir=str(tmp_path)).save("model_final")
    exported = tmp_path / "model_final.safetensors"
    assert convert_weights.main([str(tmp_path / "model_final.pth"), str(exported)]) == 0
    fresh = Tiny()
    DINOv3SegCheckpointer(fresh).load(str(exported))
    assert_close(fresh.head.weight, trained.head.weight, atol=0, rtol=0)
    assert not torch.equal(fresh.frozen.weight, trained.frozen.weight)  # only the trainable part travels


def test_transformers_gap_is_what_we_document(hf, tmp_path):
    """With transformers installed: DINOv3ViTModel built from the fixture reproduces its stored outputs, sits
    about 1e-2 from Meta's (our loader's) outputs as shipped, and at the fp32 floor with 1 / our periods."""
    transformers = pytest.importorskip("transformers")
    folder = write_hf_folder(hf, tmp_path / "hf")
    model = transformers.DINOv3ViTModel.from_pretrained(str(folder)).eval()  # the same folder our loader reads
    config = model.config
    x = hf["inputs"]["img_128x240"]
    with torch.no_grad():
        tokens = model(pixel_values=x).last_hidden_state
    n = config.num_register_tokens
    theirs = {"cls_token": tokens[:, 0], "register_tokens": tokens[:, 1:1 + n], "patch_tokens": tokens[:, 1 + n:]}
    ours = build_dinov3_vit(hf["config"]["meta"])
    load_dinov3_weights(ours, str(folder))
    with torch.no_grad():
        official = ours.eval().forward_features(x)
    gap = hf["diagnostics"]["maxabs_official_vs_transformers"]["img_128x240"]
    for key, name in OUTPUTS.items():
        assert_close(theirs[key], hf["outputs_transformers"]["img_128x240"][key], **TOL)
        assert abs(float((theirs[key] - official[name]).abs().max()) - gap[key]) < 1e-4
    rope = next(m for m in model.modules() if hasattr(m, "inv_freq"))
    rope.inv_freq.copy_(1 / ours.rope_embed.periods)
    with torch.no_grad():
        tokens = model(pixel_values=x).last_hidden_state
    assert_close(tokens[:, 1 + n:], official["x_norm_patchtokens"], **TOL)



def test_hash_is_remembered_per_file_and_check_weights_rehashes(tmp_path, monkeypatch):
    """A model start reuses the sha256 of an unchanged file (the 1.2 GB files are read once, not every start);
    a rewritten file is hashed again; check_weights always reads the bytes afresh."""
    from dinov3seg.modeling.encoders import weights

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    calls = []
    real = weights.sha256_of
    monkeypatch.setattr(weights, "sha256_of", lambda p, *a: calls.append(p) or real(p, *a))
    path = tmp_path / WEIGHT_SPECS["dinov3"]["expected_name"]
    model = build_dinotxt(get_dinov3seg_cfg(CONFIG, EMPTY)).backbone
    torch.save(model.state_dict(), path)
    cfg = get_dinov3seg_cfg(CONFIG, EMPTY + ["MODEL.DINOV3.WEIGHTS", str(path)])
    for _ in range(2):
        build_dinotxt(cfg)
    assert len(calls) == 1 and weights.hash_cache_file().is_file()
    torch.save({k: v + 1 for k, v in model.state_dict().items()}, path)
    build_dinotxt(cfg)
    assert len(calls) == 2
    assert {r.key: r for r in cw.check_weights(cfg)}["MODEL.DINOV3.WEIGHTS"].status == "WARN"
    assert len(calls) == 3


def test_verify_parity_catches_transformers_periods(hf, parity_dir, monkeypatch, capsys):
    """The dinov3_hf check passes with the rebuilt bf16 periods and fails if the loader kept transformers'
    unrounded fp32 ones (the mistake the fixture exists to catch)."""
    from dinov3seg.modeling.encoders import dinov3, dinov3_weights
    from dinov3seg.tools.verify_parity import verify

    path = parity_dir / "dinov3_hf_small.pt"
    assert verify(path)
    assert "vs outputs_transformers" in capsys.readouterr().out
    monkeypatch.setattr(dinov3_weights, "rope_periods", lambda d, base: dinov3.rope_periods(d, base, None))
    assert not verify(path)
    out = capsys.readouterr().out
    assert "img_128x240/patch_tokens" in out and "FAIL" in out
