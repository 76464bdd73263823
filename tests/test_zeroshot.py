"""The training-free model (configs/dinotxt_zeroshot.yaml): a drop-in for the trained one in the predictor,
train_net.py --eval-only and eval.sh, on small random weights written in the real file formats; its parity
check follows the fixture's config; clear errors without weight files or when asked to train."""
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinov3seg.config import get_dinov3seg_cfg
from dinov3seg.inference.predictor import VocabularyPredictor, read_image_rgb
from dinov3seg.modeling.encoders.anyup import AnyUp
from dinov3seg.modeling.encoders.dinotxt import FILE_PREFIXES, DINOTxt, DINOTxtTextTower, DINOTxtVisionHead
from dinov3seg.modeling.encoders.dinov3 import DINOv3ViT
from dinov3seg.modeling.encoders.weights import WEIGHT_SPECS, WeightFileError
from dinov3seg.tools.verify_parity import main as verify_parity

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "dinotxt_zeroshot.yaml")
# The real file formats at a small size: ViT width 64 (2 blocks), text tower width 64 (2 layers).
SMALL = ["MODEL.DINOV3.EMBED_DIM", "64", "MODEL.DINOV3.DEPTH", "2", "MODEL.DINOV3.NUM_HEADS", "2",
         "MODEL.DINOTXT.TEXT_WIDTH", "64", "MODEL.DINOTXT.TEXT_HEADS", "2", "MODEL.DINOTXT.TEXT_LAYERS", "2",
         "MODEL.DEVICE", "cpu", "DATASETS.TEST", "()"]


def sha_prefix(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:8]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Small random DINOv3 + dinov3.txt files with Meta's key names; the hash check expects their own sha256."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    backbone = DINOv3ViT(embed_dim=64, depth=2, num_heads=2)
    model = DINOTxt(backbone, DINOTxtVisionHead(64, 2), DINOTxtTextTower(width=64, heads=2, layers=2, output_dim=128))
    with torch.no_grad():  # trained-like vision head: LayerScale far from its 1e-5 init, an affine final norm
        for name, param in model.vision_head.named_parameters():
            if "gamma" in name or "ln_final" in name:
                param.copy_(torch.randn_like(param) * 0.5 + (1.0 if name.endswith("ln_final.weight") else 0.0))
    to_file = {ours: theirs for theirs, ours in FILE_PREFIXES.items()}
    dinotxt = {}
    for key, value in model.state_dict().items():
        ours = next(p for p in to_file if key.startswith(p))
        if ours != "backbone.":  # the dinov3.txt file holds no backbone
            dinotxt[to_file[ours] + key[len(ours):]] = value
    paths = {"dinov3": folder / "dinov3_small.pth", "dinotxt": folder / "dinotxt_small.pth",
             "anyup": folder / "anyup_small.pth"}
    torch.save(backbone.state_dict(), paths["dinov3"])
    torch.save(dinotxt, paths["dinotxt"])
    torch.save(AnyUp(qk_dim=16).state_dict(), paths["anyup"])
    with pytest.MonkeyPatch.context() as patch:
        for name in ("dinov3", "dinotxt"):
            patch.setitem(WEIGHT_SPECS[name], "sha_prefix", sha_prefix(paths[name]))
        yield paths


def zeroshot_cfg(weights, *opts):
    return get_dinov3seg_cfg(CONFIG, SMALL + ["MODEL.DINOV3.WEIGHTS", str(weights["dinov3"]),
                                              "MODEL.DINOTXT.WEIGHTS", str(weights["dinotxt"]), *opts])


def photo() -> np.ndarray:
    """A real photograph (matplotlib's Grace Hopper portrait, 600 x 512) or a photo-sized stand-in."""
    import matplotlib

    sample = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if sample.is_file():
        return read_image_rgb(str(sample))
    y, x = np.mgrid[0:480, 0:640]
    return np.stack([120 + 80 * np.sin(x / 40), 100 + 60 * np.cos(y / 30), 140 + 50 * np.sin((x + y) / 55)],
                    -1).astype(np.uint8)


def test_predictor_runs_the_training_free_model(weights):
    image = photo()
    predictor = VocabularyPredictor(zeroshot_cfg(weights))  # no MODEL.WEIGHTS: nothing is trained
    vocabulary = ["person", "military uniform", "wall, background", "flag"]
    predictor.set_vocabulary(vocabulary)
    scores = predictor(image)
    assert scores.shape == (4, *image.shape[:2]) and scores.dtype == torch.float32
    assert torch.allclose(scores.sum(0), torch.ones(image.shape[:2]), atol=1e-5)  # softmax over the vocabulary
    assert (scores > 0).all() and scores.std(dim=(1, 2)).min() > 0
    labels = predictor.segment(image)
    assert labels.shape == image.shape[:2] and set(np.unique(labels)) <= set(range(4))
    # The vocabulary is what the trained model takes: reordering it reorders the scores.
    predictor.set_vocabulary(vocabulary[::-1])
    assert torch.allclose(predictor(image), scores.flip(0), atol=1e-6)
    # Meta's recipe by default: short side 512, 384 windows at stride 192 (600 x 512 -> 2 x 2 windows).
    model = predictor.model
    resized = model.resize(torch.from_numpy(image.copy()).permute(2, 0, 1))
    assert min(resized.shape[-2:]) == 512 and len(model.window_boxes(*resized.shape[-2:])) == (
        len(range(0, resized.shape[-2] - 384, 192)) + 1) * (len(range(0, resized.shape[-1] - 384, 192)) + 1)


FAST = ["MODEL.ZEROSHOT.SHORT_SIDE", "128", "MODEL.ZEROSHOT.WINDOW", "96", "MODEL.ZEROSHOT.STRIDE", "64"]


def test_demo_runs_the_training_free_model(weights, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("dinov3seg_demo_zeroshot", REPO / "demo" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    path = tmp_path / "photo.jpg"
    Image.fromarray(photo()).save(path, quality=92)
    opts = SMALL[:-2] + ["MODEL.DINOV3.WEIGHTS", str(weights["dinov3"]), "MODEL.DINOTXT.WEIGHTS",
                         str(weights["dinotxt"])]
    assert demo.main(["--config-file", CONFIG, "--input", str(path), "--vocabulary", "person, uniform, wall",
                      "--output", str(tmp_path / "out"), "--opts", *opts]) == 0
    record = json.loads((tmp_path / "out" / "photo.json").read_text())
    assert list(record["pixel_shares"]) == ["person", "uniform", "wall"]
    assert abs(sum(record["pixel_shares"].values()) - 1) < 1e-4 and (tmp_path / "out" / "photo.png").is_file()


@pytest.mark.parametrize("switch", [
    ["MODEL.DINOTXT.USE_VISION_HEAD", "True"],
    ["MODEL.ZEROSHOT.MODE", "whole"],
    ["MODEL.ZEROSHOT.MODE", "lga", "MODEL.DINOV3SEG.VIEW_SIZE", "96", "TEST.LGA.CANVAS", "160",
     "TEST.LGA.STRIDE", "64"],
    ["MODEL.ANYUP.ENABLED", "True", "MODEL.ANYUP.QK_DIM", "16", "MODEL.ANYUP.OUTPUT_STRIDE", "8"],
], ids=["head_tokens", "whole", "lga", "anyup"])
def test_switches_change_the_scores(weights, switch):
    """Each switch runs end to end (softmax scores at the image size) and changes the result (on a smaller
    recipe than Meta's: short side 128, windows 96 at stride 64, for speed)."""
    image = photo()
    results = []
    for extra in ([], switch + ["MODEL.ANYUP.WEIGHTS", str(weights["anyup"])]):
        predictor = VocabularyPredictor(zeroshot_cfg(weights, *FAST, *extra))
        predictor.set_vocabulary(["person", "wall", "flag"])
        results.append(predictor(image))
    default, switched = results
    assert switched.shape == default.shape == (3, *image.shape[:2])
    assert torch.allclose(switched.sum(0), torch.ones(image.shape[:2]), atol=1e-5)
    assert (switched - default).abs().max() > 1e-4


def test_missing_weight_files_are_named(tmp_path):
    from detectron2.modeling import build_model

    cfg = get_dinov3seg_cfg(CONFIG, SMALL + ["MODEL.DINOV3.WEIGHTS", "", "MODEL.DINOTXT.WEIGHTS",
                                             str(tmp_path / "nope.pth")])
    with pytest.raises(WeightFileError) as err:
        build_model(cfg)
    message = str(err.value)
    for text in ("MODEL.DINOV3.WEIGHTS is not set", "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth",
                 f"MODEL.DINOTXT.WEIGHTS = '{tmp_path / 'nope.pth'}' does not exist",
                 "dinov3_vitl16_dinotxt_vision_head_and_text_encoder-a442d8f5.pth", "dinov3-downloads"):
        assert text in message


@pytest.mark.parametrize("opts, message", [
    (["MODEL.SAM.ENABLED", "True"], "MODEL.SAM.ENABLED must be False"),
    (["MODEL.DINOTXT.TEXT_FINETUNE", "full"], "TEXT_FINETUNE must be 'none'"),
    (["MODEL.ZEROSHOT.MODE", "tiles"], "MODEL.ZEROSHOT.MODE must be one of"),
    (["MODEL.ZEROSHOT.STRIDE", "0"], "STRIDE"),
])
def test_settings_it_cannot_honour_are_errors(weights, opts, message):
    from detectron2.modeling import build_model

    with pytest.raises(ValueError, match=message):
        build_model(zeroshot_cfg(weights, *opts))


def test_training_is_refused(weights, tmp_path):
    from detectron2.engine import default_argument_parser
    from detectron2.modeling import build_model

    sys.path.insert(0, str(REPO))
    import train_net

    model = build_model(zeroshot_cfg(weights))
    assert not model.training and model.trainable_state_dict() == {}
    with pytest.raises(RuntimeError, match="training-free"):
        model.train()
    args = default_argument_parser().parse_args(["--config-file", CONFIG, "OUTPUT_DIR", str(tmp_path), *SMALL])
    with pytest.raises(SystemExit, match="training-free.*--eval-only"):
        train_net.main(args)


TRAIN_NET = textwrap.dedent('''
    """train_net.py, with the hash check expecting the small test weight files' own sha256."""
    import runpy, sys
    from dinov3seg.modeling.encoders.weights import WEIGHT_SPECS
    WEIGHT_SPECS["dinov3"]["sha_prefix"], WEIGHT_SPECS["dinotxt"]["sha_prefix"] = {prefixes!r}
    sys.argv[0] = {train_net!r}
    runpy.run_path({train_net!r}, run_name="__main__")
''')


def test_eval_sh_runs_the_training_free_model(weights, tmp_path):
    """Synthetic ADE-150 and VOC (PAS-20, PAS-20b) -> eval.sh with the zero-shot config and no checkpoint: a row
    per benchmark, Meta's ADE-150 figure beside ours; the three unprepared benchmarks are reported missing."""
    from datasets_synthetic_raw import make_ade20k_150, make_voc, run_prepare

    root, out = tmp_path / "datasets", tmp_path / "out"
    for make, script in ((make_ade20k_150, "prepare_ade20k_150.py"), (make_voc, "prepare_voc.py")):
        make(root)
        assert run_prepare(script, root).returncode == 0
    wrapper = tmp_path / "train_net_small_weights.py"
    wrapper.write_text(TRAIN_NET.format(prefixes=(sha_prefix(weights["dinov3"]), sha_prefix(weights["dinotxt"])),
                                        train_net=str(REPO / "train_net.py")))
    env = dict(os.environ, DETECTRON2_DATASETS=str(root), PYTHON=sys.executable, TRAIN_NET=str(wrapper),
               PYTHONPATH=str(REPO))
    opts = SMALL[:-4] + ["MODEL.DINOV3.WEIGHTS", str(weights["dinov3"]), "MODEL.DINOTXT.WEIGHTS",
                         str(weights["dinotxt"]), "MODEL.DINOV3SEG.PROMPT_TEMPLATES", "single", *FAST]  # short
    result = subprocess.run(["bash", str(REPO / "eval.sh"), CONFIG, "0", str(out), *opts], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]  # 1: some benchmarks missing
    report = json.loads((out / "results.json").read_text())
    rows = {r["dataset"]: r for r in report["benchmarks"]}
    ran = ["ade20k_150_sem_seg_val", "voc_2012_sem_seg_val", "voc_2012_background_sem_seg_val"]
    assert len(rows) == 6 and all(rows[n]["status"] == "ok" and 0 <= rows[n]["mIoU"] <= 100 for n in ran)
    assert {r["status"] for n, r in rows.items() if n not in ran} == {"missing"}
    assert [r["paper_mIoU"] for r in rows.values()] == [24.7 if n == ran[0] else None for n in rows]
    assert "Table 16" in report["paper_source"] and "Table 16" in (out / "results.md").read_text()
    assert "No checkpoint found" not in (out / "eval" / ran[0] / "eval.log").read_text()


def test_parity_follows_the_fixture_config(parity_dir, tmp_path, capsys):
    """The fixture's class names drive the check (a permuted vocabulary with permuted outputs still passes);
    a config the outputs were not made with (another stride) fails."""
    blob = torch.load(parity_dir / "dinotxt_zeroshot_small.pt", map_location="cpu", weights_only=True)
    for name in ("dinov3_vit_small.pt", "dinotxt_small.pt"):
        os.symlink(parity_dir / name, tmp_path / name)
    order = [3, 0, 5, 1, 4, 2]
    permuted = {**blob, "inputs": {**blob["inputs"], "class_names": [blob["inputs"]["class_names"][i] for i in order]}}
    out = blob["outputs"]
    rank = torch.argsort(torch.tensor(order))  # old class index -> new index
    permuted["outputs"] = {**out, **{k: out[k][order] for k in ("text_features", "probs_slide", "cos_whole",
                                                                "token_ids")},
                           "pred_at_input_size": rank[out["pred_at_input_size"]]}
    torch.save(permuted, tmp_path / "permuted.pt")
    restrided = {**blob, "config": {**blob["config"], "stride": 128}}
    torch.save(restrided, tmp_path / "restrided.pt")
    assert verify_parity([str(tmp_path / "permuted.pt")]) == 0
    assert verify_parity([str(tmp_path / "restrided.pt")]) == 1
    lines = [line.split() for line in capsys.readouterr().out.split("== ")[-1].splitlines()]
    status = {words[0]: words[-1] for words in lines if words and words[-1] in ("PASS", "FAIL")}
    assert status["probs_slide"] == status["slide_windows_yyxx"] == "FAIL"
    assert status["text_features"] == status["image_resized_normalized"] == status["cos_whole"] == "PASS"


def test_precision_bf16_runs_the_encoders_in_bf16_and_keeps_the_answers(parity_dir):
    """MODEL.DINOV3SEG.PRECISION applies to the training-free model: bf16 autocasts the encoders (the backbone's
    matmuls see bf16), the scores stay fp32 probabilities, and on the fixture's photo and small model they
    pick the same class as fp32 (Meta's numbers) almost everywhere."""
    from dinov3seg.modeling.encoders.tokenizer import build_tokenizer
    from dinov3seg.modeling.meta_arch_zeroshot import DINOTxtZeroShot
    from dinov3seg.modeling.text_embeddings import TextEmbedder
    from dinov3seg.tools.verify_parity import load_dinotxt, referenced_fixture

    path = parity_dir / "dinotxt_zeroshot_small.pt"
    blob = torch.load(path, map_location="cpu", weights_only=True)
    c = blob["config"]
    dinotxt = load_dinotxt(referenced_fixture(path, c, "dinotxt")[1], referenced_fixture(path, c, "backbone")[1])
    embedder = TextEmbedder(text_encoder=dinotxt.text, tokenizer=build_tokenizer(),
                            templates=[t.replace("{0}", "{}") for t in c["prompt_templates"]])
    image = torch.as_tensor(blob["inputs"]["image_uint8"]).permute(2, 0, 1)
    scores, dtypes = {}, {}
    for precision in ("fp32", "bf16"):
        model = DINOTxtZeroShot(
            dinotxt=dinotxt, anyup=None, text_embedder=embedder, lga=None,
            pixel_mean=[255 * m for m in c["normalize"]["mean"]], pixel_std=[255 * s for s in c["normalize"]["std"]],
            test_class_names=list(blob["inputs"]["class_names"]), precision=precision)
        hook = dinotxt.backbone.blocks[0].mlp.register_forward_hook(lambda m, i, o: dtypes.update({precision: o.dtype}))
        scores[precision] = model([{"image": image}])[0]["sem_seg"]
        hook.remove()
    assert dtypes == {"fp32": torch.float32, "bf16": torch.bfloat16}
    fp32, bf16 = scores["fp32"], scores["bf16"]
    assert bf16.dtype == torch.float32 and torch.allclose(bf16.sum(0), torch.ones_like(bf16[0]), atol=1e-5)
    assert torch.equal(fp32.argmax(0), blob["outputs"]["pred_at_input_size"])  # fp32: Meta's labels exactly
    assert 0 < (fp32 - bf16).abs().max() < 1e-3
    assert (fp32.argmax(0) == bf16.argmax(0)).float().mean() > 0.99
