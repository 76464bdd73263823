"""Text embeddings: templates, synonym averaging, chunking, in-memory and disk cache, invalidation."""
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dinov3seg.modeling.text_embeddings import (
    IMAGENET_TEMPLATES,
    SINGLE_TEMPLATE,
    TextEmbedder,
    load_prompt_templates,
)

L = 77


def toy_tokenizer(texts, context_length=L):
    """Characters -> ids 1..96, zero padded (stand-in for the CLIP BPE tokenizer)."""
    ids = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, t in enumerate(texts):
        codes = [ord(c) % 96 + 1 for c in t][:context_length]
        ids[i, : len(codes)] = torch.tensor(codes)
    return ids


class ToyTextTower(nn.Module):
    """ids N x L -> N x 2D (2D = 6): embedding, position-weighted mean, linear."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = nn.Embedding(97, 8)
        self.proj = nn.Linear(8, 6, bias=False)
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(97, 8, generator=g))
            self.proj.weight.copy_(torch.randn(6, 8, generator=g))
        self.register_buffer("pos", torch.linspace(1, 2, L))

    def encode_text(self, ids):
        mask = (ids > 0).float() * self.pos
        return self.proj((self.embed(ids) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))


def frozen(module):
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def embedder(tower=None, **kw):
    tower = tower if tower is not None else frozen(ToyTextTower())
    return TextEmbedder(text_encoder=tower, tokenizer=toy_tokenizer, **kw)


def reference(tower, name, template):
    return F.normalize(tower.encode_text(toy_tokenizer([template.replace("{}", name)])), dim=-1)[0]


def test_templates():
    assert load_prompt_templates("single") == [SINGLE_TEMPLATE] == ["A photo of a {} in the scene"]
    imagenet = load_prompt_templates("imagenet")
    assert len(imagenet) == 80 == len(set(imagenet)) and all(t.count("{}") == 1 for t in imagenet)
    open_clip_meta = pytest.importorskip("open_clip.zero_shot_metadata")
    assert imagenet == [t("{}") for t in open_clip_meta.OPENAI_IMAGENET_TEMPLATES]


def test_template_file(tmp_path):
    good = tmp_path / "t.txt"
    good.write_text("# my prompts\na photo of a {}.\n\n  a {} in the wild  \n")
    assert load_prompt_templates(str(good)) == ["a photo of a {}.", "a {} in the wild"]
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo of a {}.\na photo without a slot\n")
    with pytest.raises(ValueError, match=r'line 2 of .*bad.txt must contain "\{\}"'):
        load_prompt_templates(str(bad))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(ValueError, match="holds no templates"):
        load_prompt_templates(str(empty))
    with pytest.raises(FileNotFoundError, match="PROMPT_TEMPLATES.*no such file"):
        load_prompt_templates(str(tmp_path / "missing.txt"))


def test_shape_norm_and_synonyms_averaged():
    templates = ["a photo of a {}.", "a {} in the scene", "{}"]
    emb_module = embedder(templates=templates)
    tower = emb_module.text_encoder
    out = emb_module(["cat", "sofa, couch,  settee", "grass"])
    assert out.shape == (3, 3, 6)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3, 3))
    for p, template in enumerate(templates):
        torch.testing.assert_close(out[0, p], reference(tower, "cat", template))
        mean = torch.stack([reference(tower, n, template) for n in ("sofa", "couch", "settee")]).mean(0)
        torch.testing.assert_close(out[1, p], F.normalize(mean, dim=0))


def test_chunked_encoding_equals_one_pass():
    names = [f"thing{i}, object{i}" for i in range(23)]
    a = embedder(templates=list(IMAGENET_TEMPLATES[:5]), chunk_size=7)
    b = embedder(templates=list(IMAGENET_TEMPLATES[:5]), chunk_size=10_000)
    torch.testing.assert_close(a(names), b(names))
    assert a.num_encoder_calls == -(-23 * 5 * 2 // 7) and b.num_encoder_calls == 1


def test_memory_cache_per_class_and_template_key():
    e = embedder()
    first = e(["cat", "dog"])
    assert e.num_encoder_calls == 1 and e.num_encoded_classes == 2
    assert e(["cat", "dog"]) is first and e.num_encoder_calls == 1  # hit
    reordered = e(["dog", "cat"])  # another vocabulary of known names: nothing encoded
    assert e.num_encoded_classes == 2
    torch.testing.assert_close(reordered, first.flip(0))
    edited = e(["cat", "dog", "bird", "sofa,couch"])  # an edit encodes only the new names, in one pass
    assert e.num_encoded_classes == 4 and e.num_encoder_calls == 2
    torch.testing.assert_close(edited, embedder()(["cat", "dog", "bird", "sofa, couch"]))
    e(["sofa, couch"])  # the same synonyms written otherwise: the same class
    assert e.num_encoded_classes == 4
    e.templates = ["{}", "a {}"]  # the templates are part of the key
    assert e(["cat", "dog"]).shape == (2, 2, 6) and e.num_encoded_classes == 6


def test_memory_cache_is_bounded():
    e = embedder(max_cached_class_bytes=3 * 6 * 4, max_cached_vocabularies=1)  # three 1 x 6 fp32 entries
    e(["a", "b", "c", "d"])
    assert len(e._class_cache) == 3 and e._class_bytes == 3 * 6 * 4
    e(["a"])
    assert e.num_encoded_classes == 5  # "a" was dropped (least recently used), then "b" for it
    e(["d"])
    assert e.num_encoded_classes == 5 and len(e._cache) == 1
    e(["b"])
    assert e.num_encoded_classes == 6


def test_invalidated_by_optimizer_step():
    tower = ToyTextTower()
    e = embedder(tower)
    with torch.no_grad():  # inference: cached even though the tower is trainable
        before = e(["cat"])
        assert e(["cat"]) is before and e.num_encoder_calls == 1
    opt = torch.optim.SGD(tower.parameters(), lr=0.5)
    tower.encode_text(toy_tokenizer(["x"])).sum().backward()
    opt.step()
    with torch.no_grad():
        after = e(["cat"])
    assert e.num_encoder_calls == 2
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after[0, 0], reference(tower, "cat", SINGLE_TEMPLATE))


def test_invalidated_by_load_state_dict_and_to():
    e = embedder()
    before = e(["cat"])
    e.text_encoder.load_state_dict(frozen(ToyTextTower(seed=1)).state_dict())
    after = e(["cat"])
    assert e.num_encoder_calls == 2 and not torch.allclose(before, after)
    torch.testing.assert_close(after, embedder(frozen(ToyTextTower(seed=1)))(["cat"]))
    e.text_encoder.double()  # dtype/device moves change the fingerprint too
    assert e(["cat"]).dtype == torch.float64 and e.num_encoder_calls == 3


def test_no_cache_while_training_a_tuned_tower():
    tower = ToyTextTower()
    tower.embed.weight.requires_grad_(False)  # partly tuned, like TEXT_FINETUNE="attention"
    e = embedder(tower).train()
    out1 = e(["cat", "dog"])
    out2 = e(["cat", "dog"])
    assert e.num_encoder_calls == 2 and out1 is not out2
    assert out1.requires_grad
    out1.sum().backward()
    assert tower.proj.weight.grad is not None and tower.proj.weight.grad.abs().sum() > 0


def test_cached_under_inference_mode_then_used_in_training():
    e = embedder()
    with torch.inference_mode():
        cached = e(["cat"])
    weight = nn.Parameter(torch.ones(6))
    out = e(["cat"])  # same weights: a cache hit, usable in a graph
    assert e.num_encoder_calls == 1 and not out.is_inference()
    torch.testing.assert_close(out, cached)
    (out * weight).sum().backward()
    assert weight.grad is not None


def cached_files(cache):
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*.pt"))


def test_disk_cache(tmp_path):
    cache = tmp_path / "text_cache"
    e1 = embedder(cache_dir=str(cache))
    out1 = e1(["cat", "sofa, couch"])
    files = cached_files(cache)
    assert len(files) == 2 and len({os.path.dirname(f) for f in files}) == 1  # one file per class
    assert not list(cache.rglob(".tmp-*"))  # written through a temporary file, renamed into place

    e2 = embedder(cache_dir=str(cache))  # a new process with the same weights: read from disk
    out2 = e2(["cat", "sofa, couch"])
    assert e2.num_encoder_calls == 0 and e2.num_disk_hits == 2
    torch.testing.assert_close(out1, out2)
    e2(["sofa, couch", "cat", "dog"])  # an edit after a restart: only the new name is encoded
    assert e2.num_encoded_classes == 1 and len(cached_files(cache)) == 3

    e3 = embedder(frozen(ToyTextTower(seed=2)), cache_dir=str(cache))  # other weights: other key
    out3 = e3(["cat", "sofa, couch"])
    assert e3.num_encoded_classes == 2 and e3.num_disk_hits == 0 and len(cached_files(cache)) == 5
    torch.testing.assert_close(out3, embedder(frozen(ToyTextTower(seed=2)))(["cat", "sofa, couch"]))

    e4 = embedder(cache_dir=str(cache), templates=["{}"])  # other templates: other key
    out4 = e4(["cat", "sofa, couch"])
    assert e4.num_encoded_classes == 2 and len(cached_files(cache)) == 7
    torch.testing.assert_close(out4, embedder(templates=["{}"])(["cat", "sofa, couch"]))

    tower = frozen(ToyTextTower())  # the same tower changed in place after a first use: not stale either
    e5 = embedder(tower, cache_dir=str(cache))
    torch.testing.assert_close(e5(["cat"]), out1[:1])
    with torch.no_grad():
        tower.proj.weight.mul_(-1)
    flipped = e5(["cat"])
    assert e5.num_encoded_classes == 1 and not torch.allclose(flipped, out1[:1])
    torch.testing.assert_close(flipped, embedder(tower)(["cat"]))

    for f in cached_files(cache):  # a corrupt file is recomputed, not trusted, and rewritten
        (cache / f).write_bytes(b"garbage")
    e6 = embedder(cache_dir=str(cache))
    torch.testing.assert_close(e6(["cat", "sofa, couch"]), out1)
    assert e6.num_encoded_classes == 2 and e6.num_disk_hits == 0
    assert embedder(cache_dir=str(cache))(["cat"]).shape == (1, 1, 6)  # rewritten: read back


def test_disk_cache_skipped_for_trainable_or_unwritable(tmp_path):
    tower = ToyTextTower()  # trainable text weights (TEXT_FINETUNE): memory only, they change as they train
    with torch.no_grad():
        embedder(tower, cache_dir=str(tmp_path / "a"))(["cat"])
    assert not (tmp_path / "a").exists()
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    e = embedder(cache_dir=str(blocked / "cache"))  # cannot be created: warned once, memory only
    torch.testing.assert_close(e(["cat", "dog"]), embedder()(["cat", "dog"]))
    assert e._disk_failed and e(["cat", "dog", "bird"]).shape == (3, 1, 6)


def test_auto_cache_folder(tmp_path, monkeypatch):
    from dinov3seg.modeling.text_embeddings import resolve_cache_dir

    monkeypatch.setenv("DINOV3SEG_CACHE_DIR", str(tmp_path / "mine"))
    assert resolve_cache_dir("auto") == str(tmp_path / "mine" / "text_embeddings")
    monkeypatch.delenv("DINOV3SEG_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir("auto") == str(tmp_path / "xdg" / "dinov3seg" / "text_embeddings")
    assert resolve_cache_dir("") == "" and resolve_cache_dir("some/folder") == "some/folder"


def test_bad_vocabularies():
    e = embedder()
    with pytest.raises(ValueError, match="empty"):
        e([])
    with pytest.raises(TypeError, match="list of names"):
        e("cat")
    with pytest.raises(ValueError, match="holds no name"):
        e(["cat", " , "])


def test_from_config(tmp_path):
    from detectron2.config import get_cfg

    from dinov3seg.config import add_dinov3seg_config

    cfg = get_cfg()
    add_dinov3seg_config(cfg)
    cfg.MODEL.DINOV3SEG.PROMPT_TEMPLATES = "imagenet"
    cfg.MODEL.DINOV3SEG.TEXT_CACHE_DIR = str(tmp_path)
    e = TextEmbedder(cfg, text_encoder=frozen(ToyTextTower()), tokenizer=toy_tokenizer)
    assert e.num_templates == 80 and e.cache_dir == str(tmp_path)
    assert e(["cat"]).shape == (1, 80, 6)


def test_real_text_tower_and_tokenizer():
    dinotxt = pytest.importorskip("dinov3seg.modeling.encoders.dinotxt")
    tokenizer_mod = pytest.importorskip("dinov3seg.modeling.encoders.tokenizer")
    torch.manual_seed(0)
    tower = frozen(dinotxt.DINOTxtTextTower(width=32, heads=2, layers=1, output_dim=16).eval())
    e = TextEmbedder(text_encoder=tower, tokenizer=tokenizer_mod.build_tokenizer(), chunk_size=2)
    out = e(["cat", "sofa, couch", "traffic light"])
    assert out.shape == (3, 1, 16)
    ids = tokenizer_mod.build_tokenizer()(["A photo of a cat in the scene"], context_length=77)
    torch.testing.assert_close(out[0, 0], F.normalize(tower(ids), dim=-1)[0])
    assert e(["cat", "sofa, couch", "traffic light"]) is out


def test_encode_vocabulary_tool(tmp_path, monkeypatch, capsys):
    """python -m dinov3seg.tools.encode_vocabulary fills the disk cache; a model with the same text weights
    and templates then encodes nothing."""
    import numpy as np

    from dinov3seg import Segmenter
    from dinov3seg.tools import encode_vocabulary

    monkeypatch.setenv("DINOV3SEG_CACHE_DIR", str(tmp_path / "cache"))
    mine = tmp_path / "mine.txt"
    mine.write_text("grass\nsofa, couch\nsky\n")
    args = ["voc20", str(mine), "--config-file", "quickstart", "--opts", "MODEL.DEVICE", "cpu"]
    torch.manual_seed(0)  # the quickstart's text tower is random: the seed makes it the same each time
    assert encode_vocabulary.main(args) == 0
    out = capsys.readouterr().out
    assert "voc20: 20 classes, 20 encoded, 0 already on disk" in out and f"{mine}: 3 classes, 3 encoded" in out
    assert len(list((tmp_path / "cache").rglob("*.pt"))) == 23
    torch.manual_seed(0)
    assert encode_vocabulary.main(args) == 0
    assert "voc20: 20 classes, 0 encoded, 20 already on disk" in capsys.readouterr().out

    torch.manual_seed(0)
    segmenter = Segmenter("quickstart", device="cpu")
    segmenter(np.zeros((40, 40, 3), np.uint8), ["sky", "sofa, couch"])
    embedder = segmenter.model.text_embedder
    assert embedder.num_encoded_classes == 0 and embedder.num_disk_hits == 2
    with pytest.raises(SystemExit) as exit_info:
        encode_vocabulary.main(["klingon", "--config-file", "quickstart"])
    assert exit_info.value.code == 2 and "unknown vocabulary 'klingon'" in capsys.readouterr().err


def test_random_text_tower_tells_short_names_apart():
    """A tower trained from scratch (the quickstart) starts from CLIP's initialisation, so the pooled EOT token
    depends on the words before it; with N(0, 1) token embeddings it is nearly the EOT embedding itself."""
    dinotxt = pytest.importorskip("dinov3seg.modeling.encoders.dinotxt")
    tokenizer_mod = pytest.importorskip("dinov3seg.modeling.encoders.tokenizer")
    names = ["red striped", "red dotted", "blue striped", "blue plain", "green checked", "yellow dotted"]
    ids = tokenizer_mod.build_tokenizer()(names)
    off_diagonal = ~torch.eye(len(names), dtype=torch.bool)

    def mean_cosine(tower):
        with torch.no_grad():
            e = F.normalize(tower(ids), dim=-1)
        return (e @ e.T)[off_diagonal].mean().item()

    for seed in range(3):
        torch.manual_seed(seed)
        tower = dinotxt.DINOTxtTextTower(width=64, heads=2, layers=2, output_dim=128).eval()
        clip_init = mean_cosine(tower)
        torch.nn.init.normal_(tower.backbone.token_embedding.weight)  # PyTorch's default for nn.Embedding
        assert clip_init < 0.85 and mean_cosine(tower) > clip_init + 0.1
