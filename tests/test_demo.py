"""demo/demo.py end to end on a real photo (stand-in model built through the registry), image
conversions, and the clear refusals of bad inputs."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from PIL import Image
from torch import nn

from dinov3seg.inference.lga import LocalGlobalAggregation
from dinov3seg.inference.predictor import VocabularyPredictor, read_image_rgb, to_uint8_rgb

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("dinov3seg_demo", ROOT / "demo" / "demo.py")
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)

COLOR_NAMES = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220), "white": (250, 250, 250),
               "black": (10, 10, 10), "gray": (128, 128, 128)}


@META_ARCH_REGISTRY.register()
class DemoColorSegmenter(nn.Module):
    """Stand-in for DINOv3Seg with its API: a class wins where the pixel colour is closest to the
    colour its first name says. Runs the real LGA over views, so the demo exercises that path too."""

    sem_seg_score_type = "sigmoid"  # the LGA averages sigmoid probabilities

    @configurable
    def __init__(self, *, lga, pixel_mean, pixel_std):
        super().__init__()
        self.lga = lga
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.class_names = []
        self.calls = 0

    @classmethod
    def from_config(cls, cfg):
        return {"lga": LocalGlobalAggregation(cfg), "pixel_mean": cfg.MODEL.PIXEL_MEAN,
                "pixel_std": cfg.MODEL.PIXEL_STD}

    def set_vocabulary(self, class_names):
        self.class_names = list(class_names)

    def forward(self, batched_inputs):
        assert not self.training
        colors = torch.tensor(
            [COLOR_NAMES.get(n.split(",")[0].strip(), (128, 128, 128)) for n in self.class_names], dtype=torch.float32
        )
        colors = (colors[:, :, None, None] - self.pixel_mean) / self.pixel_std  # T x 3 x 1 x 1

        def segment_views(views):  # V x 3 x S x S -> V x T x S/4 x S/4 logits
            self.calls += 1
            small = nn.functional.avg_pool2d(views, 4)
            return -((small[:, None] - colors[None]) ** 2).sum(2)

        results = []
        for x in batched_inputs:
            assert x["image"].shape[0] == 3 and x["image"].max() <= 255
            image = (x["image"].float() - self.pixel_mean) / self.pixel_std
            scores = self.lga(image, segment_views)
            scores = nn.functional.interpolate(scores[None], size=(x["height"], x["width"]), mode="bilinear")[0]
            results.append({"sem_seg": scores})
        return results


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "standin.yaml"
    path.write_text(
        "VERSION: 2\nMODEL:\n  META_ARCHITECTURE: DemoColorSegmenter\n  DEVICE: cpu\n  DINOV3SEG:\n    VIEW_SIZE: 64\n"
        "INPUT:\n  MIN_SIZE_TEST: 160\n  MAX_SIZE_TEST: 400\n"
        "TEST:\n  LGA:\n    CANVAS: 112\n    STRIDE: 24\n"
    )
    return str(path)


def real_photo(tmp_path) -> str:
    """A real photograph (matplotlib's sample Grace Hopper portrait) or, without it, a natural-ish JPEG."""
    import matplotlib

    sample = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if sample.is_file():
        return str(sample)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:300, 0:420]
    img = np.stack([120 + 80 * np.sin(x / 40), 100 + 60 * np.cos(y / 30), 140 + 50 * np.sin((x + y) / 55)], -1)
    img[80:220, 150:300] = (40, 200, 60)
    img += rng.normal(0, 8, img.shape)
    path = tmp_path / "photo.jpg"
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
    return str(path)


def run_demo(config_file, *args):
    return demo.main(["--config-file", config_file, *args])


def test_demo_on_a_real_photo(config_file, tmp_path, capsys):
    photo = real_photo(tmp_path)
    out = tmp_path / "out"
    assert run_demo(config_file, "--input", photo, "--vocabulary", "black, white|snow, blue, red",
                    "--output", str(out)) == 0
    stem = Path(photo).stem
    png = Image.open(out / f"{stem}.png")
    h, w = read_image_rgb(photo).shape[:2]
    assert png.mode == "RGB" and png.height >= h and png.width > w  # overlay + legend panel on the right
    record = json.loads((out / f"{stem}.json").read_text())
    assert (record["height"], record["width"]) == (h, w)
    shares = record["pixel_shares"]
    assert list(shares) == ["black", "white, snow", "blue", "red"]
    assert abs(sum(shares.values()) - 1) < 1e-4 and all(0 <= s <= 1 for s in shares.values())
    assert sum(s > 0 for s in shares.values()) >= 2
    assert json.loads((out / "results.json").read_text())["images"][stem] == record
    legend = np.asarray(png)[:, w:]
    assert (legend != 255).any()  # the legend has swatches and text


def red_blue_halves(height: int, width: int) -> np.ndarray:
    """An H x W x 3 uint8 image: left half red, right half blue."""
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[:, : width // 2] = COLOR_NAMES["red"]
    rgb[:, width // 2 :] = COLOR_NAMES["blue"]
    return rgb


def test_demo_many_images_odd_formats_and_tiny(config_file, tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    rgb = red_blue_halves(40, 50)
    Image.fromarray(rgb).save(d / "a_rgb.png")
    Image.fromarray(rgb).convert("L").save(d / "b_gray.png")
    rgba = np.concatenate([rgb, np.full((40, 50, 1), 128, np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(d / "c_rgba.png")
    Image.fromarray((rgb[:, :, 0].astype(np.uint16) * 257)).save(d / "d_gray16.png")
    Image.fromarray(rgb[:7, :9]).save(d / "e_tiny.png")  # far smaller than one window
    (d / "f_broken.jpg").write_bytes(b"not a jpeg at all")
    (d / "notes.txt").write_text("ignored: not an image")
    out = tmp_path / "out"
    status = run_demo(config_file, "--input", str(d), "--vocabulary", "red, blue, gray", "--output", str(out),
                      "--batch-size", "2")
    assert status == 0  # one unreadable input in the middle: logged and listed, the others written
    for stem in ("a_rgb", "b_gray", "c_rgba", "d_gray16", "e_tiny"):
        assert (out / f"{stem}.png").is_file() and (out / f"{stem}.json").is_file()
    summary = json.loads((out / "results.json").read_text())
    assert [f["input"] for f in summary["failed"]] == [str(d / "f_broken.jpg")]
    assert "cannot read image" in summary["failed"][0]["error"]
    shares = summary["images"]["a_rgb"]["pixel_shares"]
    assert shares["red"] == pytest.approx(0.5, abs=0.05) and shares["blue"] == pytest.approx(0.5, abs=0.05)
    assert summary["images"]["e_tiny"]["pixel_shares"]["red"] == pytest.approx(1.0)


def test_vocabulary_sources(config_file, tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    assert demo.parse_vocabulary("cat, dog|puppy , grass,") == ["cat", "dog, puppy", "grass"]
    txt = tmp_path / "v.txt"
    txt.write_text("# my classes\ncat\nsofa, couch\n\n")
    assert demo.read_vocabulary_file(str(txt)) == ["cat", "sofa, couch"]
    js = tmp_path / "v.json"
    js.write_text(json.dumps(["red", "blue"]))
    assert demo.read_vocabulary_file(str(js)) == ["red", "blue"]
    ade847 = ROOT / "datasets" / "ade847.json"
    if ade847.is_file():  # a benchmark list with synonyms shared by classes: accepted from a file
        assert len(demo.read_vocabulary_file(str(ade847))) == 847

    name = "demo_test_colors_val_sem_seg"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(stuff_classes=["red", "green"])
    assert demo.dataset_vocabulary("demo_test_colors") == ["red", "green"]
    out = tmp_path / "out"
    photo = real_photo(tmp_path)
    assert run_demo(config_file, "--input", photo, "--dataset", "demo_test_colors", "--output", str(out)) == 0
    assert list(json.loads((out / f"{Path(photo).stem}.json").read_text())["pixel_shares"]) == ["red", "green"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--vocabulary", " , ,"], "--vocabulary is empty"),
        (["--vocabulary", "cat, dog, Cat"], "duplicate class names"),
        (["--vocabulary", "dog, cat|dog"], "'dog' is in two classes"),
        (["--vocabulary-file", "VOCAB_EMPTY"], "has zero classes"),
        (["--vocabulary-file", "MISSING.txt"], "--vocabulary-file: class-name file"),
        (["--dataset", "no_such_benchmark"], "no registered dataset with class names matches"),
    ],
)
def test_bad_vocabulary_is_refused(config_file, tmp_path, capsys, args, message):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    args = [a.replace("VOCAB_EMPTY", str(empty)).replace("MISSING.txt", str(tmp_path / "missing.txt")) for a in args]
    photo = real_photo(tmp_path)
    assert run_demo(config_file, "--input", photo, *args, "--output", str(tmp_path / "o")) == 2
    assert message in capsys.readouterr().err


def test_missing_weights_and_bad_opts(config_file, tmp_path, capsys):
    photo = real_photo(tmp_path)
    common = ["--input", photo, "--vocabulary", "cat", "--output", str(tmp_path / "o"), "--opts"]
    assert run_demo(config_file, *common, "MODEL.WEIGHTS", str(tmp_path / "nope.pth")) == 2
    assert "MODEL.WEIGHTS" in capsys.readouterr().err
    assert run_demo(config_file, *common, "MODEL.NO_SUCH_KEY", "1") == 2
    assert "bad --opts" in capsys.readouterr().err


def test_missing_encoder_weights_end_in_one_line(tmp_path, capsys):
    photo = real_photo(tmp_path)
    zeroshot = str(Path(__file__).resolve().parents[1] / "configs" / "dinotxt_zeroshot.yaml")
    with pytest.raises(SystemExit) as exit_info:
        run_demo(zeroshot, "--input", photo, "--vocabulary", "cat", "--output", str(tmp_path / "o"),
                 "--opts", "MODEL.DINOV3.WEIGHTS", str(tmp_path / "no_dinov3.pth"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith("demo.py: error: ") and "Traceback" not in err
    assert "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth" in err


def test_no_input_matched_and_single_unreadable(config_file, tmp_path, capsys, caplog):
    assert run_demo(config_file, "--input", str(tmp_path / "*.jpg"), "--vocabulary", "cat",
                    "--output", str(tmp_path / "o")) == 2
    assert "matched no image files" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert run_demo(config_file, "--input", str(bad), "--vocabulary", "cat", "--output", str(tmp_path / "o")) == 1
    assert f"cannot read image '{bad}'" in caplog.text  # every input failed: exit status 1
    assert run_demo(config_file, "--input", str(tmp_path / "gone.png"), "--vocabulary", "cat",
                    "--output", str(tmp_path / "o")) == 2
    assert f"image '{tmp_path / 'gone.png'}' does not exist" in capsys.readouterr().err


def test_skip_existing_resumes_a_folder(config_file, tmp_path, monkeypatch):
    """A re-run with --skip-existing segments only the inputs without complete outputs: here one whose JSON
    (written last) is missing, as a run killed while writing it leaves it, and one added since."""
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        Image.fromarray(red_blue_halves(24 + 8 * i, 40)).save(d / f"im{i}.png")
    out = tmp_path / "out"
    args = ["--input", str(d), "--vocabulary", "red, blue", "--output", str(out), "--batch-size", "2"]
    assert run_demo(config_file, *args) == 0
    first = json.loads((out / "results.json").read_text())
    (out / "im1.json").unlink()
    Image.fromarray(red_blue_halves(16, 16)).save(d / "im3.png")
    segmented = []
    original = demo.Segmenter.segment_batch

    def counting(self, images, *a, **k):
        segmented.extend(image.shape[:2] for image in images)
        return original(self, images, *a, **k)

    monkeypatch.setattr(demo.Segmenter, "segment_batch", counting)
    assert run_demo(config_file, *args, "--skip-existing") == 0
    assert segmented == [(32, 40), (16, 16)]  # im1 and the new im3 only, in one batch of two
    summary = json.loads((out / "results.json").read_text())
    assert sorted(summary["images"]) == ["im0", "im1", "im2", "im3"]
    assert all(summary["images"][k] == first["images"][k] for k in ("im0", "im1", "im2"))
    segmented.clear()
    assert run_demo(config_file, *args, "--skip-existing", "--threshold", "0.3") == 0  # other settings: redone
    assert len(segmented) == 4


def test_image_conversions(tmp_path):
    g16 = np.array([[0, 65535], [257 * 100, 257 * 200]], np.uint16)
    assert to_uint8_rgb(g16)[..., 0].tolist() == [[0, 255], [100, 200]]
    assert to_uint8_rgb(np.array([[0.0, 1.0]]))[0, :, 1].tolist() == [0, 255]
    assert to_uint8_rgb(np.zeros((3, 4, 4), np.uint8)).shape == (3, 4, 3)  # RGBA -> RGB
    rgb16 = (np.arange(2 * 3 * 3).reshape(2, 3, 3) * 7000).astype(np.uint16)
    import cv2

    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16[:, :, ::-1])  # a 48-bit colour PNG
    img = read_image_rgb(str(tmp_path / "rgb16.png"))
    assert img.dtype == np.uint8 and img.shape == (2, 3, 3)
    np.testing.assert_allclose(img.astype(float), rgb16 / 257.0, atol=1.01)
    Image.fromarray(np.full((5, 6), 3, np.uint8), "P").save(tmp_path / "p.png")
    assert read_image_rgb(str(tmp_path / "p.png")).shape == (5, 6, 3)


def test_predictor_scores_at_image_size(config_file):
    from detectron2.config import get_cfg

    from dinov3seg.config import add_dinov3seg_config

    cfg = get_cfg()
    add_dinov3seg_config(cfg)
    cfg.merge_from_file(config_file)
    predictor = VocabularyPredictor(cfg)
    with pytest.raises(RuntimeError, match="set_vocabulary"):
        predictor(np.zeros((10, 10, 3), np.uint8))
    predictor.set_vocabulary(["red", "blue"])
    image = np.zeros((30, 45, 3), np.uint8)
    image[:] = COLOR_NAMES["blue"]
    scores = predictor(image)
    assert scores.shape == (2, 30, 45)
    assert (predictor.segment(image) == 1).all()
    assert predictor.model.calls == 2  # one batch of views per image


def test_demo_with_the_quickstart_model_and_a_checkpoint(tmp_path):
    """The real DINOv3Seg of configs/quickstart.yaml: save a checkpoint of it, then run the demo with it
    on the photo and on an image smaller than one window."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from dinov3seg.config import add_dinov3seg_config

    try:
        from dinov3seg.checkpoint import DINOv3SegCheckpointer as Checkpointer
    except ImportError:
        from detectron2.checkpoint import DetectionCheckpointer as Checkpointer

    config = str(ROOT / "configs" / "quickstart.yaml")
    cfg = get_cfg()
    add_dinov3seg_config(cfg)
    cfg.merge_from_file(config)
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    Checkpointer(build_model(cfg), save_dir=str(tmp_path)).save("quick")

    small = tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(small)
    out = tmp_path / "out"
    status = demo.main(["--config-file", config, "--input", real_photo(tmp_path), str(small),
                        "--vocabulary", "person, flag, hat, wall", "--output", str(out),
                        "--opts", "MODEL.WEIGHTS", str(tmp_path / "quick.pth"), "MODEL.DEVICE", "cpu"])
    assert status == 0
    summary = json.loads((out / "results.json").read_text())
    assert len(summary["images"]) == 2
    for record in summary["images"].values():
        assert abs(sum(record["pixel_shares"].values()) - 1) < 1e-4
        assert Image.open(out / record["overlay"]).width > record["width"]


def test_demo_writes_the_label_map_and_its_name_table(config_file, tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(red_blue_halves(40, 60)).save(d / "halves.png")
    out = tmp_path / "out"
    assert run_demo(config_file, "--input", str(d), "--vocabulary", "red, blue|navy, gray", "--output", str(out)) == 0
    index = np.asarray(Image.open(out / "labels" / "halves.png"))
    assert index.dtype == np.uint8 and index.shape == (40, 60)
    assert (index[:, :28] == 0).all() and (index[:, 32:] == 1).all()
    table = json.loads((out / "label_names.json").read_text())
    assert table == {"0": "red", "1": "blue, navy", "2": "gray"}
    record = json.loads((out / "halves.json").read_text())
    assert record["labels"] == "labels/halves.png"
    counts = np.bincount(index.reshape(-1), minlength=3) / index.size
    assert [record["pixel_shares"][table[str(i)]] for i in range(3)] == pytest.approx(counts.tolist(), abs=1e-6)
    assert json.loads((out / "results.json").read_text())["label_names"] == table


def test_demo_unlabeled_and_other_pixels(config_file, tmp_path):
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:, :20] = COLOR_NAMES["red"]
    rgb[:, 20:40] = COLOR_NAMES["green"]
    rgb[:, 40:] = COLOR_NAMES["white"]
    Image.fromarray(rgb).save(tmp_path / "three.png")
    out = tmp_path / "out"
    status = run_demo(config_file, "--input", str(tmp_path / "three.png"), "--vocabulary", "red, blue",
                      "--threshold", "0.25", "--distractors", "demo_test_distractors", "--output", str(out))
    assert status == 0
    index = np.asarray(Image.open(out / "labels" / "three.png"))
    assert (index[:, :18] == 0).all() and (index[:, 22:38] == 2).all() and (index[:, 42:] == 255).all()
    assert json.loads((out / "label_names.json").read_text()) == {"0": "red", "1": "blue", "2": "other",
                                                                  "255": "unlabeled"}
    shares = json.loads((out / "three.json").read_text())["pixel_shares"]
    assert list(shares) == ["red", "blue", "other", "unlabeled"] and abs(sum(shares.values()) - 1) < 1e-4
    counts = {name: float(np.mean(index == value)) for value, name in [(0, "red"), (1, "blue"), (2, "other"),
                                                                        (255, "unlabeled")]}
    assert shares == pytest.approx(counts, abs=1e-6) and min(counts["other"], counts["unlabeled"]) > 0.25
    overlay = np.asarray(Image.open(out / "three.png"))
    np.testing.assert_array_equal(overlay[:, 45:60], rgb[:, 45:])  # unlabeled pixels stay uncoloured
    assert (overlay[:, :15] != rgb[:, :15]).any()


@pytest.fixture(autouse=True, scope="module")
def _distractor_dataset():
    from detectron2.data import DatasetCatalog, MetadataCatalog

    name = "demo_test_distractors"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(stuff_classes=["green", "Red", "cat"])


def test_demo_uint16_label_map_beyond_255_classes(config_file, tmp_path):
    vocab = tmp_path / "many.txt"
    vocab.write_text("\n".join(["red", "blue"] + [f"thing {i}" for i in range(298)]))
    rgb = np.zeros((24, 24, 3), np.uint8)
    rgb[:, 12:] = COLOR_NAMES["blue"]
    rgb[:, :12] = COLOR_NAMES["red"]
    Image.fromarray(rgb).save(tmp_path / "x.png")
    out = tmp_path / "out"
    assert run_demo(config_file, "--input", str(tmp_path / "x.png"), "--vocabulary-file", str(vocab),
                    "--threshold", "0.25", "--output", str(out)) == 0
    import cv2

    index = cv2.imread(str(out / "labels" / "x.png"), cv2.IMREAD_UNCHANGED)  # the PNG's own bit depth
    assert index.dtype == np.uint16 and set(np.unique(index)) <= {0, 1, 65535} and (index[:, :10] == 0).all()
    table = json.loads((out / "label_names.json").read_text())
    assert len(table) == 301 and table["299"] == "thing 297" and table["65535"] == "unlabeled"


@pytest.mark.parametrize("args, message", [
    (["--threshold", "2"], "--threshold is a probability"),
    (["--distractors", "klingon"], "unknown vocabulary 'klingon'"),
])
def test_bad_none_of_these_options(config_file, tmp_path, capsys, args, message):
    assert run_demo(config_file, "--input", real_photo(tmp_path), "--vocabulary", "red", *args,
                    "--output", str(tmp_path / "o")) == 2
    assert message in capsys.readouterr().err


def test_demo_label_maps_register_as_a_dataset(config_file, tmp_path):
    """The README's promise: the demo's index PNGs (255 = unlabeled) and name table are training labels as
    they are, for register_sem_seg_folder."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from dinov3seg.data.datasets import register_sem_seg_folder

    d = tmp_path / "imgs"
    d.mkdir()
    for i, (a, b) in enumerate([("red", "white"), ("blue", "red")]):
        rgb = np.zeros((32, 48, 3), np.uint8)
        rgb[:, :24], rgb[:, 24:] = COLOR_NAMES[a], COLOR_NAMES[b]
        Image.fromarray(rgb).save(d / f"im{i}.png")
    out = tmp_path / "out"
    assert run_demo(config_file, "--input", str(d), "--vocabulary", "red, blue", "--threshold", "0.25",
                    "--output", str(out)) == 0
    table = json.loads((out / "label_names.json").read_text())
    classes = [name for index, name in sorted((int(k), v) for k, v in table.items()) if index != 255]
    register_sem_seg_folder("demo_test_pseudo_labels", d, out / "labels", classes)
    try:
        dicts = DatasetCatalog.get("demo_test_pseudo_labels")  # every label map checked: values 0, 1 or 255
        assert len(dicts) == 2 and MetadataCatalog.get("demo_test_pseudo_labels").stuff_classes == ["red", "blue"]
        assert 255 in np.asarray(Image.open(out / "labels" / "im0.png"))  # the white half is unlabeled
    finally:
        DatasetCatalog.remove("demo_test_pseudo_labels")
        MetadataCatalog.remove("demo_test_pseudo_labels")
