"""The Python API (dinov3seg.Segmenter): build from a config name + weights, segment numpy / PIL / path
inputs, "none of these" pixels (threshold, distractors), the result's label image and name table, and
the README's example run as written."""
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import dinov3seg
from dinov3seg import Segmentation, Segmenter
from dinov3seg.data import synthetic
from dinov3seg.inference.segmenter import known_vocabulary, resolve_config

ROOT = Path(__file__).resolve().parents[1]
COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220), "white": (250, 250, 250)}


class ColorModel(nn.Module):
    """The generic model interface with known scores: a class scores exp(-distance / 40) between the pixel
    colour and the colour its first name says (0 for names that are no colour), as "sigmoid", "softmax"
    (normalised over the classes) or "logit" scores, or undeclared (score_type None)."""

    def __init__(self, score_type="sigmoid"):
        super().__init__()
        if score_type is not None:
            self.sem_seg_score_type = score_type
        self.class_names = []
        self.vocabularies = []

    def set_vocabulary(self, names):
        self.class_names = list(names)
        self.vocabularies.append(list(names))

    def forward(self, batched_inputs):
        results = []
        for x in batched_inputs:
            image = x["image"].float()
            assert x["image"].shape[0] == 3 and (x["height"], x["width"]) == tuple(image.shape[-2:])
            scores = []
            for name in self.class_names:
                color = COLORS.get(name.split(",")[0].strip())
                if color is None:
                    scores.append(torch.zeros(image.shape[-2:]))
                else:
                    dist = (image - torch.tensor(color, dtype=torch.float32).view(3, 1, 1)).norm(dim=0)
                    scores.append(torch.exp(-dist / 40))
            scores = torch.stack(scores)
            if getattr(self, "sem_seg_score_type", None) == "softmax":
                scores = torch.softmax(scores * 10, dim=0)
            elif getattr(self, "sem_seg_score_type", None) == "logit":
                scores = torch.logit(scores.clamp(1e-4, 1 - 1e-4))
            results.append({"sem_seg": scores})
        return results


def halves(h=20, w=30, left="red", right="blue"):
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2] = COLORS[left]
    image[:, w // 2 :] = COLORS[right]
    return image


@pytest.fixture(scope="module")
def quickstart_checkpoint(tmp_path_factory):
    """A quickstart DINOv3Seg with random weights, saved as train_net.py saves it, and the model itself."""
    from detectron2.modeling import build_model

    from dinov3seg.checkpoint import DINOv3SegCheckpointer

    folder = tmp_path_factory.mktemp("quick")
    cfg = dinov3seg.get_dinov3seg_cfg(str(ROOT / "configs" / "quickstart.yaml"))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():  # a distinctive head, so loading it visibly changes the scores
        for p in model.sem_seg_head.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    DINOv3SegCheckpointer(model, save_dir=str(folder)).save("model_final")
    return folder / "model_final.pth", model


def test_quickstart_by_name_with_weights_on_every_input_kind(quickstart_checkpoint, tmp_path):
    path, reference = quickstart_checkpoint
    # The frozen encoders are random here (no weight files): the checkpoint stores them, so another seed
    # at load time still rebuilds the model that was saved.
    torch.manual_seed(123)
    segmenter = Segmenter("quickstart", weights=str(path))
    assert segmenter.score_type == "sigmoid"
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)
    image[20:50, 30:70] = COLORS["green"]
    Image.fromarray(image).save(tmp_path / "photo.png")
    classes = ["grass", "sky", "brick wall, bricks"]

    result = segmenter(image, classes)
    assert isinstance(result, Segmentation) and result.class_names == classes
    assert result.labels.shape == (70, 90) and result.labels.dtype == np.int64
    assert result.scores.shape == (3, 70, 90) and result.scores.dtype == np.float32
    assert ((result.scores >= 0) & (result.scores <= 1)).all()  # sigmoid probabilities
    np.testing.assert_array_equal(result.labels, result.scores.argmax(0))
    assert result.threshold is None and (result.labels >= 0).all()

    # The checkpoint is the one loaded: same scores as the model it was saved from.
    reference.set_vocabulary(classes)
    with torch.no_grad():
        expected = reference([{"image": torch.as_tensor(image.transpose(2, 0, 1).copy()), "height": 70,
                               "width": 90}])[0]["sem_seg"]
    np.testing.assert_allclose(result.scores, expected.numpy(), rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)
    untrained = Segmenter("quickstart")  # the config's MODEL.WEIGHTS is empty: a random head
    assert np.abs(untrained(image, classes).scores - result.scores).max() > 1e-3

    for same in (Image.fromarray(image), str(tmp_path / "photo.png"), tmp_path / "photo.png",
                 image.astype(np.float32) / 255.0):
        again = segmenter(same, classes)
        np.testing.assert_array_equal(again.labels, result.labels)
        np.testing.assert_allclose(again.scores, result.scores, atol=1e-5)

    gray = segmenter(Image.fromarray(image[:, :, 0]), classes)  # a grayscale PIL image works too
    assert gray.labels.shape == (70, 90)
    # LGA averaging logits: the model says so, and the API still thresholds probabilities.
    segmenter.model.lga.average = "logits"
    assert segmenter.score_type == "logit"
    logit_result = segmenter(image, classes, threshold=0.5)
    assert logit_result.score_type == "sigmoid" and ((logit_result.scores > 0) & (logit_result.scores < 1)).all()
    segmenter.model.lga.average = "probabilities"


def test_resizes_like_the_test_mapper_and_returns_labels_at_image_size():
    model = ColorModel()
    segmenter = Segmenter("quickstart", model=model, opts=["INPUT.MIN_SIZE_TEST", "10", "INPUT.MAX_SIZE_TEST", "100"])
    result = segmenter(halves(20, 30), ["red", "blue"])
    assert result.scores.shape == (2, 10, 15)  # scored at the test resolution
    assert result.labels.shape == (20, 30)  # labels at the image's own size
    assert (result.labels[:, :14] == 0).all() and (result.labels[:, 16:] == 1).all()  # (the seam is blended)


def test_config_names_paths_and_bad_inputs(tmp_path):
    assert resolve_config("quickstart") == str(ROOT / "configs" / "quickstart.yaml")
    assert resolve_config(ROOT / "configs" / "vitl_384.yaml").endswith("vitl_384.yaml")
    with pytest.raises(FileNotFoundError, match="names: .*quickstart.*vitl_384"):
        resolve_config("no_such_model")
    with pytest.raises(FileNotFoundError, match="weights .*nope.pth.* do not exist"):
        Segmenter("quickstart", weights=str(tmp_path / "nope.pth"))
    segmenter = Segmenter("quickstart", model=ColorModel())
    with pytest.raises(TypeError, match="image must be a path"):
        segmenter(12, ["red"])
    with pytest.raises(ValueError, match="cannot read image"):
        segmenter(str(tmp_path / "missing.jpg"), ["red"])
    with pytest.raises(ValueError, match="duplicate class names"):
        segmenter(halves(), ["red", "Red"])
    with pytest.raises(ValueError, match=r"threshold is a probability.*1.5"):
        segmenter(halves(), ["red"], threshold=1.5)
    with pytest.raises(KeyError, match="unknown vocabulary 'klingon'"):
        segmenter(halves(), ["red"], distractors="klingon")
    undeclared = Segmenter("quickstart", model=ColorModel(score_type=None))
    assert undeclared(halves(), ["red", "blue"]).score_type is None  # plain use works
    with pytest.raises(ValueError, match="declares no sem_seg_score_type"):
        undeclared(halves(), ["red", "blue"], threshold=0.5)


@pytest.mark.parametrize("score_type", ["sigmoid", "softmax", "logit"])
def test_threshold_marks_none_of_these_pixels_unlabeled(score_type):
    segmenter = Segmenter("quickstart", model=ColorModel(score_type))
    image = halves(left="red", right="white")  # "white" is not in the vocabulary
    off = segmenter(image, ["red", "blue"])
    assert (off.labels >= 0).all()  # off by default: every pixel is forced into a class
    result = segmenter(image, ["red", "blue"], threshold=0.6)
    assert result.score_type in ("sigmoid", "softmax") and result.threshold == 0.6
    assert (result.labels[:, :15] == 0).all()
    if score_type == "softmax":  # probabilities over the vocabulary: white is an even 0.5 / 0.5 split
        np.testing.assert_allclose(result.scores[:, 0, 20], [0.5, 0.5], atol=0.05)
    assert (result.labels[:, 15:] == Segmenter.UNLABELED).all()
    np.testing.assert_array_equal(result.labels == -1, result.scores.max(0) < 0.6)
    assert result.pixel_shares() == pytest.approx({"red": 0.5, "blue": 0.0, "unlabeled": 0.5})
    index = result.label_image()
    assert index.dtype == np.uint8 and set(np.unique(index)) == {0, 255}
    assert result.name_table() == {0: "red", 1: "blue", 255: "unlabeled"}
    assert (result.mask("red") == (result.labels == 0)).all()


def test_distractors_map_their_pixels_to_other():
    model = ColorModel("sigmoid")
    segmenter = Segmenter("quickstart", model=model)
    image = halves(left="red", right="green")
    forced = segmenter(image, ["red", "blue"])
    assert (forced.labels[:, 15:] == 1).all()  # green is forced into "blue"
    result = segmenter(image, ["red", "blue"], distractors=["green", "Red", "white"])
    assert model.class_names == ["red", "blue", "green", "white"]  # "Red" is already a class
    assert result.distractors == ["green", "white"] and result.class_names == ["red", "blue", "other"]
    assert result.other_index == 2 and result.scores.shape == (3, 20, 30)
    assert (result.labels[:, :15] == 0).all() and (result.labels[:, 15:] == 2).all()
    assert result.pixel_shares() == pytest.approx({"red": 0.5, "blue": 0.0, "other": 0.5})
    raw = model([{"image": torch.as_tensor(image.transpose(2, 0, 1).copy()), "height": 20, "width": 30}])
    np.testing.assert_allclose(result.scores[2], raw[0]["sem_seg"][2:].max(0).values.numpy(), atol=1e-6)

    own_other = segmenter(image, ["red", "Other"], distractors=["green"])  # the user's own "other" class
    assert own_other.class_names == ["red", "Other"] and (own_other.labels[:, 15:] == 1).all()

    both = segmenter(halves(left="white", right="green"), ["red"], threshold=0.9, distractors=["green"])
    assert (both.labels[:, :15] == -1).all() and (both.labels[:, 15:] == 1).all()
    assert both.name_table() == {0: "red", 1: "other", 255: "unlabeled"}


def test_known_vocabularies_as_distractors():
    coco = known_vocabulary("coco_stuff")
    assert len(coco) == 171 and "person" in coco
    segmenter = Segmenter("quickstart", model=ColorModel())
    assert len(segmenter.check(["person", "red"], distractors="coco_stuff")) == 170
    assert known_vocabulary("synthetic_ov_sem_seg_val") == synthetic.CLASSES  # a registered dataset's classes


def test_label_image_is_uint16_beyond_255_classes():
    names = [f"class {i}" for i in range(300)]
    labels = np.array([[0, 299], [-1, 255]], np.int64)
    result = Segmentation(labels=labels, scores=np.zeros((300, 2, 2), np.float32), class_names=names,
                          score_type="sigmoid", threshold=0.5)
    index = result.label_image()
    assert index.dtype == np.uint16 and index.tolist() == [[0, 299], [65535, 255]]
    assert result.name_table()[65535] == "unlabeled" and result.name_table()[255] == "class 255"
    small = Segmentation(labels=labels.clip(max=254), scores=np.zeros((255, 2, 2), np.float32),
                         class_names=names[:255], score_type="sigmoid")
    assert small.label_image().dtype == np.uint8 and 255 not in small.name_table()


def test_the_readme_example_runs_as_written(quickstart_checkpoint, tmp_path, monkeypatch):
    """The Python block of README's "Python API" section, in a folder holding the quickstart's
    output/quickstart/model_final.pth (random weights here) and a photo.jpg."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "from dinov3seg import Segmenter" in code and 'Segmenter("quickstart"' in code
    (tmp_path / "output" / "quickstart").mkdir(parents=True)
    os.symlink(quickstart_checkpoint[0], tmp_path / "output" / "quickstart" / "model_final.pth")
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(
        tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert isinstance(namespace["result"], Segmentation)
    assert namespace["result"].labels.shape == (60, 80)


def test_checkpoint_without_the_random_encoders_is_refused_with_the_reason(quickstart_checkpoint, tmp_path):
    """A checkpoint of an older dinov3seg holds no random-init encoders: loading it would give noise, so it is refused."""
    from detectron2.modeling import build_model

    from dinov3seg.checkpoint import CHECKPOINT_FORMAT, DINOv3SegCheckpointer

    path, reference = quickstart_checkpoint
    random_parts = tuple(f"{m}." for m in reference.random_init_encoders())
    assert {"dinotxt.backbone", "sam", "anyup"} <= set(reference.random_init_encoders())
    state = torch.load(path, weights_only=True)["model"]
    assert any(k.startswith(random_parts) for k in state)
    tuned = {n for n, p in reference.named_parameters() if p.requires_grad}  # older versions stored these
    old = {k: v for k, v in state.items() if not k.startswith(random_parts) or k in tuned}
    torch.save({"model": old, "format": CHECKPOINT_FORMAT}, tmp_path / "old.pth")
    model = build_model(dinov3seg.get_dinov3seg_cfg(str(ROOT / "configs" / "quickstart.yaml")))
    with pytest.raises(KeyError, match="older dinov3seg, which did not store encoders built without a weight file"):
        DINOv3SegCheckpointer(model).load(str(tmp_path / "old.pth"))
