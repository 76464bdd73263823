"""The dinov3.seg model end to end at quickstart size: shapes, loss, chunking, configs, errors."""
import json
import math
from pathlib import Path

import pytest
import torch

import dinov3seg  # noqa: F401
from detectron2.modeling import build_model
from dinov3seg import get_dinov3seg_cfg
from dinov3seg.checkpoint import CHECKPOINT_FORMAT, DINOv3SegCheckpointer
from dinov3seg.modeling.loss import sem_seg_bce_loss

REPO = Path(__file__).resolve().parents[1]


def quickstart_cfg(*opts):
    return get_dinov3seg_cfg(str(REPO / "configs/quickstart.yaml"), opts)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(quickstart_cfg())


def batch(b, t, size=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randint(0, 256, (3, size, size), generator=g).float(),
             "sem_seg": torch.randint(0, t, (size, size), generator=g)} for _ in range(b)]


def names(t):
    return [f"class {i}" for i in range(t)]


@pytest.mark.parametrize("b,t", [(1, 1), (2, 5), (3, 40), (1, 2000)])
def test_views_give_logits_per_class_at_quarter_resolution(model, b, t):
    model.eval()
    with torch.no_grad():
        text = model.text_embedder(names(t))
        logits = model.segment_views(torch.randn(b, 3, 128, 128), text)
    assert logits.shape == (b, t, 32, 32)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("t", [1, 7])
def test_training_loss_backpropagates_to_the_head_only_and_tuned_text(model, t):
    model.train()
    model.train_class_names = names(t)
    model.zero_grad()
    loss = model(batch(2, t))["loss_sem_seg"]
    loss.backward()
    assert loss.ndim == 0 and loss.item() > 0
    assert all(p.grad is not None for p in model.sem_seg_head.parameters())
    assert all(p.grad is None for p in model.dinotxt.backbone.parameters())
    assert all(p.grad is None for p in model.sam.parameters())
    assert model.dinotxt.text.head["linear_projection"].weight.grad is not None  # TEXT_FINETUNE embeddings
    model.eval()


@pytest.mark.parametrize("height,width,t", [(150, 170, 3), (96, 300, 12), (64, 64, 1)])
def test_inference_returns_scores_at_the_requested_size(model, height, width, t):
    model.eval()
    model.set_vocabulary(names(t))
    with torch.no_grad():
        out = model([{"image": torch.randint(0, 256, (3, height, width)).float(), "height": 2 * height,
                      "width": width}])
    assert out[0]["sem_seg"].shape == (t, 2 * height, width)
    assert ((out[0]["sem_seg"] >= 0) & (out[0]["sem_seg"] <= 1)).all()  # averaged probabilities


def test_inference_resizes_the_lga_canvas_once_to_the_original_size(model, monkeypatch):
    """The LGA merge writes the original height x width directly (CAT-Seg's order), not the mapper's size."""
    model.eval()
    model.set_vocabulary(names(2))
    sizes = []
    merge = model.lga.merge
    monkeypatch.setattr(model.lga, "merge", lambda out, boxes, canvas, out_hw: sizes.append(out_hw) or merge(
        out, boxes, canvas, out_hw))
    with torch.no_grad():
        out = model([{"image": torch.randint(0, 256, (3, 100, 130)).float(), "height": 75, "width": 97}])
    assert sizes == [(75, 97)] and out[0]["sem_seg"].shape == (2, 75, 97)


def test_class_chunks_do_not_change_the_logits():
    for attention in ("linear", "full"):
        torch.manual_seed(1)
        a = build_model(quickstart_cfg("MODEL.DINOV3SEG.CLASS_ATTENTION", attention,
                                       "MODEL.DINOV3SEG.CLASS_CHUNK_SIZE", 0)).eval()
        b = build_model(quickstart_cfg("MODEL.DINOV3SEG.CLASS_ATTENTION", attention,
                                       "MODEL.DINOV3SEG.CLASS_CHUNK_SIZE", 7)).eval()
        assert (a.sem_seg_head.chunk, b.sem_seg_head.chunk) == (0, 7)
        b.load_state_dict(a.state_dict())
        views = torch.randn(2, 3, 128, 128)
        with torch.no_grad():
            text = a.text_embedder(names(23))
            torch.testing.assert_close(b.segment_views(views, text), a.segment_views(views, text),
                                       atol=1e-5, rtol=1e-5)
        assert b.train().sem_seg_head.chunk == 0  # test-time memory bound only


def test_classes_beyond_pad_len_are_pruned_per_view_and_marked(model):
    """CLASS_PAD_LEN is the one class-count mechanism: T > pad_len keeps the top pad_len classes per view (the rest
    get logit -100); any positive pad_len loads the same weights, and one >= T keeps every class."""
    model.eval()
    pad_len = quickstart_cfg().MODEL.DINOV3SEG.CLASS_PAD_LEN
    assert model.sem_seg_head.pad_len == pad_len and 0 < pad_len < 20
    wide = build_model(quickstart_cfg("MODEL.DINOV3SEG.CLASS_PAD_LEN", 64)).eval()
    wide.load_state_dict(model.state_dict())
    with torch.no_grad():
        text = model.text_embedder(names(20))
        views = torch.randn(2, 3, 128, 128)
        pruned = (model.segment_views(views, text) == -100.0).all(dim=(2, 3))
        kept_all = (wide.segment_views(views, text) == -100.0).all(dim=(2, 3))
    assert pruned.sum(dim=1).tolist() == [20 - pad_len] * 2
    assert not kept_all.any()


def striped_batch(b, t, size=128):
    """Images of t vertical bands with distinct colours; each band's label is its index."""
    band = torch.arange(size) * t // size
    colours = torch.linspace(30, 220, t)[:, None] * torch.tensor([1.0, 0.4, 0.8])[None]
    image = colours[band].T[:, None, :].expand(3, size, size)
    return [{"image": image.clone(), "sem_seg": band[None, :].expand(size, size).clone()} for _ in range(b)]


def test_loss_falls_when_overfitting_one_batch():
    torch.manual_seed(0)
    model = build_model(quickstart_cfg()).train()
    model.train_class_names = names(3)
    data = striped_batch(2, 3)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-3)
    losses = []
    for _ in range(20):
        loss = model(data)["loss_sem_seg"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_bce_loss_excludes_ignore_pixels_unless_asked():
    logits = torch.zeros(1, 2, 1, 2)
    logits[0, 0, 0, 1] = 50.0  # a confident class-0 logit on the ignored pixel
    targets = torch.tensor([[[1, 255]]])
    excluded = sem_seg_bce_loss(logits, targets, 255)
    as_negative = sem_seg_bce_loss(logits, targets, 255, ignore_as_negative=True)
    assert excluded.item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), rel=1e-5)
    assert as_negative.item() > 10 * excluded.item()
    with pytest.raises(ValueError, match="must lie in"):
        sem_seg_bce_loss(logits, torch.tensor([[[2, 0]]]), 255)


def test_checkpoint_holds_only_trainable_state_and_round_trips(model, tmp_path):
    DINOv3SegCheckpointer(model, save_dir=str(tmp_path)).save("ckpt")
    saved = torch.load(tmp_path / "ckpt.pth", weights_only=True)["model"]
    # The quickstart's encoders have no weight files: their random values are stored, as no file can rebuild them.
    for part in ("anyup.", "sam.", "dinotxt.backbone.", "dinotxt.vision_head."):
        assert any(k.startswith(part) for k in saved), part
    assert not any(k.startswith("text_embedder.") for k in saved)  # the text tower once, under dinotxt.text
    assert any(k.startswith("sem_seg_head.") for k in saved)
    assert any(k.startswith("dinotxt.text.") for k in saved)  # tuned in the quickstart
    torch.manual_seed(123)
    other = build_model(quickstart_cfg())
    DINOv3SegCheckpointer(other).load(str(tmp_path / "ckpt.pth"))
    for k, v in saved.items():
        torch.testing.assert_close(other.state_dict()[k], v)
    torch.save({"model": saved}, tmp_path / "old.pth")  # saved before the format key: the pre-CAT-Seg head
    with pytest.raises(ValueError, match="older dinov3seg .* cannot be loaded into the current head"):
        DINOv3SegCheckpointer(other).load(str(tmp_path / "old.pth"))
    saved.pop(next(iter(saved)))
    torch.save({"model": saved, "format": CHECKPOINT_FORMAT}, tmp_path / "broken.pth")
    with pytest.raises(KeyError, match="missing"):
        DINOv3SegCheckpointer(other).load(str(tmp_path / "broken.pth"))


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml")))
def test_every_config_loads(path):
    cfg = get_dinov3seg_cfg(str(REPO / path))
    assert cfg.MODEL.META_ARCHITECTURE in ("DINOv3Seg", "DINOTxtZeroShot")


def test_paper_config_holds_the_recipe():
    cfg = get_dinov3seg_cfg(str(REPO / "configs/vitl_384.yaml"))
    s = cfg.SOLVER
    assert (s.MAX_ITER, s.IMS_PER_BATCH, s.BASE_LR, s.ENCODER_LR_MULTIPLIER) == (80000, 4, 2e-4, 0.01)
    assert (s.OPTIMIZER, s.LR_SCHEDULER_NAME, s.WEIGHT_DECAY, s.CLIP_GRADIENTS.CLIP_VALUE) == \
        ("ADAMW", "WarmupCosineLR", 1e-4, 0.01)
    assert tuple(cfg.INPUT.CROP.SIZE) == (384, 384) and cfg.DATASETS.TRAIN == ("coco_2017_train_stuff_sem_seg",)
    assert cfg.MODEL.DINOV3SEG.TEXT_CHANNELS == ["local", "global"] and cfg.TEST.LGA.ENABLED
    assert not cfg.MODEL.DINOV3SEG.INIT_LOGITS_AT_CLASS_PRIOR  # CAT-Seg's default init


@pytest.mark.parametrize("prior", [False, True])
def test_logits_start_at_the_class_prior_when_asked(prior):
    torch.manual_seed(0)
    model = build_model(quickstart_cfg("MODEL.DINOV3SEG.INIT_LOGITS_AT_CLASS_PRIOR", prior)).train()
    t = len(model.train_class_names)
    prior_logit = -math.log(t - 1)
    bias = model.sem_seg_head.decoder.head.bias.item()
    with torch.no_grad():
        text = model.text_embedder(model.train_class_names)
        logits = model.segment_views(torch.randn(2, 3, 128, 128), text)
    prior_loss = -(math.log(1 / t) + (t - 1) * math.log(1 - 1 / t)) / t  # BCE of predicting 1/T everywhere
    loss = model(batch(2, t))["loss_sem_seg"].item()
    if prior:
        assert bias == pytest.approx(prior_logit)
        assert abs(logits.mean().item() - prior_logit) < 0.5
        assert loss == pytest.approx(prior_loss, rel=0.15)
    else:  # PyTorch's init: logits around 0, the loss far above the prior's
        assert abs(bias) < 0.2 and abs(logits.mean().item()) < 0.6
        assert loss > 1.5 * prior_loss


def test_class_prior_needs_two_training_classes(tmp_path):
    (tmp_path / "one.json").write_text(json.dumps(["thing"]))
    with pytest.raises(ValueError, match="INIT_LOGITS_AT_CLASS_PRIOR needs at least 2 training classes"):
        build_model(quickstart_cfg("MODEL.DINOV3SEG.INIT_LOGITS_AT_CLASS_PRIOR", True,
                                   "MODEL.DINOV3SEG.TRAIN_CLASS_JSON", str(tmp_path / "one.json")))


def test_unknown_class_json_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="TRAIN_CLASS_JSON.*does not exist"):
        build_model(quickstart_cfg("MODEL.DINOV3SEG.TRAIN_CLASS_JSON", str(tmp_path / "nope.json")))


def test_zero_classes_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps([]))
    with pytest.raises(ValueError, match="zero classes"):
        build_model(quickstart_cfg("MODEL.DINOV3SEG.TEST_CLASS_JSON", str(empty)))


def test_unknown_dataset_vocabulary_is_a_clear_error():
    with pytest.raises(KeyError, match="no registered class names"):
        build_model(quickstart_cfg("DATASETS.TRAIN", ("no_such_dataset",)))


def test_view_size_not_a_multiple_of_16_is_a_clear_error():
    with pytest.raises(ValueError, match="multiple of 16"):
        build_model(quickstart_cfg("MODEL.DINOV3SEG.VIEW_SIZE", 120))


def test_bad_switch_values_are_clear_errors():
    with pytest.raises(ValueError, match="TEXT_CHANNELS"):
        build_model(quickstart_cfg("MODEL.DINOV3SEG.TEXT_CHANNELS", ["patch"]))
    with pytest.raises(ValueError, match="CLASS_ATTENTION"):
        build_model(quickstart_cfg("MODEL.DINOV3SEG.CLASS_ATTENTION", "softmax"))
    with pytest.raises(ValueError, match="TEXT_FINETUNE"):
        build_model(quickstart_cfg("MODEL.DINOTXT.TEXT_FINETUNE", "some"))


@pytest.mark.parametrize("mode, tuned", [
    ("none", set()),
    ("attention", {"attention.qkv.weight", "attention.proj.weight", "attention.proj.bias"}),  # qkv has no bias
    ("embeddings", {"token_embedding.weight", "linear_projection.weight"}),
])
def test_text_finetune_modes_tune_only_their_parameters(mode, tuned):
    model = build_model(quickstart_cfg("MODEL.DINOTXT.TEXT_FINETUNE", mode))
    names = [n for n, p in model.named_parameters() if n.startswith("dinotxt.") and p.requires_grad]
    assert all(n.startswith("dinotxt.text.") for n in names)
    # each tuned parameter is one of the mode's kinds, and every kind is tuned
    kinds = {next((k for k in tuned if n.endswith("." + k)), n) for n in names}
    assert kinds == tuned, names


@pytest.mark.parametrize("opts", [
    ("MODEL.DINOV3SEG.TEXT_CHANNELS", ["local"]), ("MODEL.ANYUP.ENABLED", False), ("MODEL.SAM.ENABLED", False),
    ("MODEL.DINOV3SEG.NUM_REFINEMENT_ROUNDS", 1), ("MODEL.ANYUP.OUTPUT_STRIDE", 8),
    ("MODEL.DINOTXT.USE_VISION_HEAD", False), ("MODEL.DINOV3SEG.PROMPT_TEMPLATES", "imagenet"),
])
def test_every_ablation_switch_builds_and_runs(opts):
    model = build_model(quickstart_cfg(*opts)).train()
    model.train_class_names = names(3)
    loss = model(batch(1, 3))["loss_sem_seg"]
    loss.backward()
    assert torch.isfinite(loss)


def test_param_groups_scale_encoder_lr_and_skip_decay_on_norms_and_embeddings(model):
    from dinov3seg.solver import build_optimizer

    cfg = quickstart_cfg("SOLVER.ENCODER_LR_MULTIPLIER", "5.0")  # the quickstart's own is 1.0
    optimizer = build_optimizer(cfg, model)
    by_param = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    head_linear = named["sem_seg_head.text_projection.0.weight"]
    head_norm = named["sem_seg_head.spatial.0.blocks.0.norm1.weight"]
    text_embedding = named["dinotxt.text.backbone.token_embedding.weight"]
    text_linear = named["dinotxt.text.head.linear_projection.weight"]
    s = cfg.SOLVER
    assert by_param[id(head_linear)]["lr"] == s.BASE_LR and by_param[id(head_linear)]["weight_decay"] == s.WEIGHT_DECAY
    assert by_param[id(head_norm)]["weight_decay"] == 0.0
    assert by_param[id(text_embedding)]["weight_decay"] == 0.0
    assert by_param[id(text_linear)]["lr"] == pytest.approx(5 * s.BASE_LR)
    assert id(named["dinotxt.backbone.cls_token"]) not in by_param  # frozen: not optimised


def test_full_model_clipping_bounds_the_total_gradient_norm():
    from dinov3seg.solver import with_full_model_clipping

    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))
    optimizer = with_full_model_clipping(torch.optim.SGD, 0.01)([{"params": [a]}, {"params": [b]}], lr=1.0)
    a.grad, b.grad = torch.full((3,), 3.0), torch.full((4,), 4.0)
    optimizer.step()
    assert torch.cat([a, b]).norm().item() == pytest.approx(0.01, rel=1e-4)


def test_head_input_shape_from_the_config_matches_the_built_encoders(model):
    from dinov3seg.modeling.meta_arch import head_input_shape

    shape = head_input_shape(quickstart_cfg())
    assert shape["patches"].channels == model.dinotxt.backbone.embed_dim
    assert shape["guidance"].channels == model.sam.neck_channels
    assert shape["decoder_guidance"].channels == model.sam.guidance_channels
    for variant, width in (("vit_l", 1024), ("vit_b", 768)):
        assert head_input_shape(quickstart_cfg("MODEL.SAM.VARIANT", variant))["decoder_guidance"].channels == width
    assert "guidance" not in head_input_shape(quickstart_cfg("MODEL.SAM.ENABLED", False))
    with pytest.raises(ValueError, match="DECODER_GUIDANCE"):
        head_input_shape(quickstart_cfg("MODEL.SAM.DECODER_GUIDANCE", [1, 3]))
    with pytest.raises(ValueError, match="MODEL.SAM.VARIANT"):
        head_input_shape(quickstart_cfg("MODEL.SAM.VARIANT", "vit_h"))


def test_checkpoint_leaves_out_encoders_read_from_files(model, tmp_path):
    """An encoder built from a weight file is rebuilt from it: the checkpoint does not hold it."""
    torch.save(model.anyup.state_dict(), tmp_path / "anyup.pth")
    cfg = quickstart_cfg()
    cfg.defrost()
    cfg.MODEL.ANYUP.WEIGHTS = str(tmp_path / "anyup.pth")
    filed = build_model(cfg)
    assert "anyup" not in filed.random_init_encoders() and "sam" in filed.random_init_encoders()
    keys = filed.trainable_state_dict()
    assert not any(k.startswith("anyup.") for k in keys) and any(k.startswith("sam.") for k in keys)
