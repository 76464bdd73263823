"""Your own dataset: register_sem_seg_folder on generated folders, its clear errors, $DINOV3SEG_DATASETS, and
train_net.py (2 processes, seen/unseen evaluation) + eval.sh ($EVAL_DATASETS) on it."""
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from dinov3seg.data.datasets import read_class_file, register_from_env, register_sem_seg_folder

REPO = Path(__file__).resolve().parents[1]
COLORS = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 230, 60)]


def make_split(root: Path, num_images: int, num_classes: int, size=(48, 64), seed=0, image_ext="jpg"):
    """images/ + labels/ under root: a background class and a rectangle of another, in flat colours."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    h, w = size
    for i in range(num_images):
        label = np.full((h, w), i % num_classes, np.uint8)
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        label[y : y + h // 2, x : x + w // 2] = (i + 1) % num_classes
        label[:2, :2] = 255  # some ignored pixels
        image = np.array(COLORS, np.uint8)[np.minimum(label, num_classes - 1)]
        Image.fromarray(image).save(root / "images" / f"im{i:03d}.{image_ext}")
        Image.fromarray(label).save(root / "labels" / f"im{i:03d}.png")
    return root / "images", root / "labels"


@pytest.fixture
def unregister():
    names = []
    yield names
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_register_a_folder_pair_and_load_it(tmp_path, unregister, caplog):
    images, labels = make_split(tmp_path, 5, 3)
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(images / "extra_unlabelled.png")
    classes = tmp_path / "classes.txt"
    classes.write_text("# my classes\nred\ngreen, lime\n\nblue\n")
    assert read_class_file(classes) == ["red", "green, lime", "blue"]
    unregister.append("mine_test_a")
    with caplog.at_level(logging.WARNING):
        register_sem_seg_folder("mine_test_a", images, labels, classes)
    assert "1 images have no label map" in caplog.text and "extra_unlabelled" in caplog.text
    dicts = DatasetCatalog.get("mine_test_a")
    assert [Path(d["file_name"]).name for d in dicts] == [f"im{i:03d}.jpg" for i in range(5)]
    assert all(Path(d["sem_seg_file_name"]).stem == Path(d["file_name"]).stem for d in dicts)
    meta = MetadataCatalog.get("mine_test_a")
    assert meta.stuff_classes == ["red", "green, lime", "blue"] and len(meta.stuff_colors) == 3
    assert (meta.ignore_label, meta.evaluator_type) == (255, "sem_seg")

    (tmp_path / "classes.json").write_text(json.dumps(["red", "green", "blue", "yellow"]))
    unregister.append("mine_test_b")  # a JSON class file, a list of names, 16-bit labels
    register_sem_seg_folder("mine_test_b", images, labels, tmp_path / "classes.json")
    assert MetadataCatalog.get("mine_test_b").stuff_classes == ["red", "green", "blue", "yellow"]
    l16 = tmp_path / "l16"
    l16.mkdir()
    for p in labels.glob("*.png"):
        Image.fromarray(np.asarray(Image.open(p)).astype(np.uint16) * 0 + 2).save(l16 / p.name)
    Image.fromarray(np.full((48, 64), 65535, np.uint16)).save(l16 / "im000.png")
    register_sem_seg_folder("mine_test_b", images, l16, ["a", "b", "c"], ignore_label=65535)
    assert len(DatasetCatalog.get("mine_test_b")) == 5


@pytest.mark.parametrize("case, error, message", [
    ("no_images", FileNotFoundError, "the images folder"),
    ("orphan_label", FileNotFoundError, "1 of 4 label maps have no image with the same stem"),
    ("no_labels", FileNotFoundError, r"no \*.png label files"),
    ("no_class_file", FileNotFoundError, "class-name file .* does not exist"),
    ("empty_class_file", ValueError, "zero classes"),
    ("bad_json", ValueError, "is not valid JSON"),
    ("duplicate_classes", ValueError, "duplicate class names"),
    ("ignore_in_range", ValueError, "ignore_label 1 must be an integer outside the class values 0..2"),
    ("builtin_name", ValueError, "is a built-in dataset"),
    ("two_images_one_stem", ValueError, "two files with the stem 'im000'"),
])
def test_bad_folders_and_class_files_fail_at_registration(tmp_path, unregister, case, error, message):
    images, labels = make_split(tmp_path, 3, 3)
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps(["red", "green", "blue"]))
    kwargs = {}
    name = "mine_test_bad"
    unregister.append(name)
    if case == "no_images":
        images = tmp_path / "nope"
    elif case == "orphan_label":
        Image.fromarray(np.zeros((48, 64), np.uint8)).save(labels / "lonely.png")
    elif case == "no_labels":
        labels = tmp_path / "empty_labels"
        labels.mkdir()
    elif case == "no_class_file":
        classes = tmp_path / "missing.txt"
    elif case == "empty_class_file":
        classes = tmp_path / "empty.txt"
        classes.write_text("# nothing here\n\n")
    elif case == "bad_json":
        classes.write_text("red, green, blue")
    elif case == "duplicate_classes":
        classes.write_text(json.dumps(["red", "Red"]))
    elif case == "ignore_in_range":
        kwargs["ignore_label"] = 1
    elif case == "builtin_name":
        name = "ade20k_150_sem_seg_val"
    elif case == "two_images_one_stem":
        Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(images / "im000.png")
    with pytest.raises(error, match=message):
        register_sem_seg_folder(name, images, labels, classes, **kwargs)


@pytest.mark.parametrize("case, message", [
    ("value_beyond_classes", r"values up to 7: the class count does not match the labels"),
    ("one_based", r"The labels look 1-based"),
    ("colour_label", r"1 label maps are not single-channel index images .*im001.png \(RGB\)"),
    ("size_mismatch", r"im002.png is 30x20, its image 64x48"),
])
def test_wrong_labels_are_refused_when_the_dataset_is_loaded(tmp_path, unregister, case, message):
    images, labels = make_split(tmp_path, 3, 3)
    if case == "value_beyond_classes":
        label = np.asarray(Image.open(labels / "im001.png")).copy()
        label[5, 5] = 7
        Image.fromarray(label).save(labels / "im001.png")
    elif case == "one_based":
        for p in labels.glob("*.png"):
            label = np.asarray(Image.open(p)).astype(np.int64)
            Image.fromarray(np.where(label == 255, 255, label + 1).astype(np.uint8)).save(p)
    elif case == "colour_label":
        Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(labels / "im001.png")
    elif case == "size_mismatch":
        Image.fromarray(np.zeros((20, 30), np.uint8)).save(labels / "im002.png")
    unregister.append("mine_test_labels")
    register_sem_seg_folder("mine_test_labels", images, labels, ["red", "green", "blue"])
    with pytest.raises(ValueError, match=message) as info:
        DatasetCatalog.get("mine_test_labels")
    assert "Dataset 'mine_test_labels'" in str(info.value)
    register_sem_seg_folder("mine_test_labels", images, labels, ["red", "green", "blue"], validate=False)
    assert len(DatasetCatalog.get("mine_test_labels")) == 3  # validate=False trusts the labels


def test_env_var_runs_each_registration_file_once(tmp_path, unregister):
    images, labels = make_split(tmp_path, 2, 2)
    script = tmp_path / "my_datasets.py"
    script.write_text("from dinov3seg.data.datasets import register_sem_seg_folder\n"
                      f"register_sem_seg_folder('mine_test_env', {str(images)!r}, {str(labels)!r}, ['a', 'b'])\n")
    unregister.append("mine_test_env")
    assert register_from_env(str(script)) == [str(script)]
    assert MetadataCatalog.get("mine_test_env").stuff_classes == ["a", "b"]
    assert register_from_env(str(script)) == []  # once per process
    with pytest.raises(FileNotFoundError, match="DINOV3SEG_DATASETS: .*missing.py' does not exist"):
        register_from_env(str(tmp_path / "missing.py"))
    broken = tmp_path / "broken.py"
    broken.write_text("from dinov3seg.data.datasets import register_sem_seg_folder\n"
                      "register_sem_seg_folder('mine_test_broken', '/no/such/images', '/no/labels', ['a'])\n")
    with pytest.raises(FileNotFoundError, match="mine_test_broken': the images folder") as info:
        register_from_env(str(broken))
    assert info.value.__notes__ == [f"(raised while running DINOV3SEG_DATASETS file '{broken}')"]


def run(args, env, cwd=REPO):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    return proc.returncode, proc.stdout + proc.stderr


def register_train_val(tmp_path, unregister):
    """mydata_train (2 classes) and mydata_val (the 2 + an unseen third), from class-name files."""
    data = tmp_path / "data"
    train = make_split(data / "train", 4, 2, seed=0)
    val = make_split(data / "val", 3, 3, seed=1)
    (data / "train_classes.txt").write_text("red\ngreen\n")
    (data / "val_classes.txt").write_text("red\ngreen\nblue\n")
    unregister += ["mine_test_train", "mine_test_val"]
    register_sem_seg_folder("mine_test_train", *train, data / "train_classes.txt")
    register_sem_seg_folder("mine_test_val", *val, data / "val_classes.txt")


def test_training_loader_and_seen_unseen_evaluator_on_your_dataset(tmp_path, unregister):
    import torch
    from detectron2.data import build_detection_train_loader

    from dinov3seg import get_dinov3seg_cfg
    from dinov3seg.data import SemSegDatasetMapper
    from dinov3seg.data.mapper import read_label
    from dinov3seg.evaluation import build_evaluator

    register_train_val(tmp_path, unregister)
    cfg = get_dinov3seg_cfg(str(REPO / "configs" / "quickstart.yaml"), [
        "DATASETS.TRAIN", '("mine_test_train",)', "DATASETS.TEST", '("mine_test_val",)',
        "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2"])
    batch = next(iter(build_detection_train_loader(cfg, mapper=SemSegDatasetMapper(cfg, is_train=True))))
    assert len(batch) == 2 and batch[0]["image"].shape == (3, 128, 128)
    assert set(torch.cat([b["sem_seg"].unique() for b in batch]).tolist()) <= {0, 1, 255}

    evaluator = build_evaluator(cfg, "mine_test_val", str(tmp_path / "eval"))
    evaluator.reset()
    for d in DatasetCatalog.get("mine_test_val"):  # a perfect prediction: one-hot ground truth
        gt = torch.as_tensor(read_label(d["sem_seg_file_name"]).astype(np.int64))
        scores = torch.nn.functional.one_hot(gt.clamp(max=2), 3).permute(2, 0, 1).float()
        evaluator.process([{"file_name": d["file_name"]}], [{"sem_seg": scores}])
    res = evaluator.evaluate()["sem_seg"]
    assert res["mIoU"] == pytest.approx(100) and (res["num_seen"], res["num_unseen"]) == (2, 1)
    assert res["mIoU_seen"] == pytest.approx(100) and res["mIoU_unseen"] == pytest.approx(100)


FAKE_TRAIN_NET = """
import json, os, sys
opts = dict(zip(sys.argv[6::2], sys.argv[7::2]))  # after --config-file C --eval-only --num-gpus N
name = opts["DATASETS.TEST"].strip("()\\"',")
os.makedirs(opts["OUTPUT_DIR"], exist_ok=True)
with open(os.path.join(opts["OUTPUT_DIR"], "eval_results.json"), "w") as f:
    json.dump({name: {"sem_seg": {"mIoU": 61.5}}}, f)
"""


def test_eval_sh_evaluates_the_datasets_in_EVAL_DATASETS(tmp_path):
    images, labels = make_split(tmp_path / "val", 2, 2)
    script = tmp_path / "my_datasets.py"
    script.write_text("from dinov3seg.data.datasets import register_sem_seg_folder\n"
                      f"register_sem_seg_folder('mydata_val', {str(images)!r}, {str(labels)!r}, ['a', 'b'])\n")
    (tmp_path / "train_net.py").write_text(FAKE_TRAIN_NET)
    out = tmp_path / "out"
    out.mkdir()
    (out / "model_final.pth").write_bytes(b"")
    env = dict(os.environ, DINOV3SEG_DATASETS=str(script), PYTHON=sys.executable, EVAL_DATASETS="mydata_val, nope",
               TRAIN_NET=str(tmp_path / "train_net.py"), PYTHONPATH=str(REPO))
    code, log = run(["bash", "eval.sh", "configs/quickstart.yaml", "0", str(out)], env)
    assert code == 1 and "'nope' (in EVAL_DATASETS) is not registered" in log  # the other one still ran
    rows = {r["dataset"]: r for r in json.loads((out / "results.json").read_text())["benchmarks"]}
    assert list(rows) == ["mydata_val", "nope"]
    assert (rows["mydata_val"]["status"], rows["mydata_val"]["mIoU"]) == ("ok", 61.5)
    assert rows["mydata_val"]["paper_mIoU"] is None and rows["nope"]["status"] == "missing"
    assert "| mydata_val | `mydata_val` | 61.50 | – | – | ok |" in (out / "results.md").read_text()


@pytest.mark.slow
def test_train_net_and_eval_sh_on_your_own_dataset(tmp_path):
    """Train 2 iterations in 2 CPU processes on a registered folder pair (2 seen classes), evaluate it on a
    validation pair with a third, unseen class (seen/unseen breakdown), then eval.sh with EVAL_DATASETS."""
    data = tmp_path / "data"
    train_images, train_labels = make_split(data / "train", 4, 2, seed=0)
    val_images, val_labels = make_split(data / "val", 3, 3, seed=1)
    (data / "train_classes.txt").write_text("red\ngreen\n")
    (data / "val_classes.txt").write_text("red\ngreen\nblue\n")
    script = tmp_path / "my_datasets.py"
    script.write_text(
        "from dinov3seg.data.datasets import register_sem_seg_folder\n"
        f"register_sem_seg_folder('mydata_train', {str(train_images)!r}, {str(train_labels)!r}, "
        f"{str(data / 'train_classes.txt')!r})\n"
        f"register_sem_seg_folder('mydata_val', {str(val_images)!r}, {str(val_labels)!r}, "
        f"{str(data / 'val_classes.txt')!r})\n")
    env = dict(os.environ, DINOV3SEG_DATASETS=str(script), OMP_NUM_THREADS="1")
    out = tmp_path / "out"
    code, log = run([sys.executable, "train_net.py", "--config-file", "configs/quickstart.yaml", "--num-gpus", "2",
                     "OUTPUT_DIR", str(out), "DATASETS.TRAIN", '("mydata_train",)', "DATASETS.TEST",
                     '("mydata_val",)', "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2",
                     "DATALOADER.NUM_WORKERS", "0", "TEST.LGA.ENABLED", "False"], env)
    assert code == 0, log[-3000:]
    assert (out / "model_final.pth").is_file()
    assert "mydata_val: mIoU seen" in log and "(2 classes), unseen" in log and "(1 classes)" in log

    env["EVAL_DATASETS"] = "mydata_val"
    env["PYTHON"] = sys.executable
    code, log = run(["bash", "eval.sh", "configs/quickstart.yaml", "0", str(out), "TEST.LGA.ENABLED", "False"], env)
    assert code == 0, log[-3000:]
    rows = json.loads((out / "results.json").read_text())["benchmarks"]
    assert [(r["dataset"], r["status"]) for r in rows] == [("mydata_val", "ok")]
    assert 0 <= rows[0]["mIoU"] <= 100 and rows[0]["paper_mIoU"] is None and "mIoU_unseen" in rows[0]
    assert "| mydata_val | `mydata_val` |" in (out / "results.md").read_text()

    env["EVAL_DATASETS"] = "mydata_val not_registered_anywhere"
    code, log = run(["bash", "eval.sh", "configs/quickstart.yaml", "0", str(out), "TEST.LGA.ENABLED", "False"], env)
    assert code == 1 and "'not_registered_anywhere' (in EVAL_DATASETS) is not registered" in log


def test_label_values_match_numpy_unique():
    from dinov3seg.data.datasets.custom import _label_values

    rng = np.random.default_rng(0)
    for label in (rng.integers(0, 256, (30, 40)).astype(np.uint8), rng.integers(0, 65536, (30, 40)).astype(np.uint16),
                  rng.integers(-3, 5, (30, 40)).astype(np.int32), np.array([[70000, 1]], np.int32),
                  np.array([[True, False]])):
        np.testing.assert_array_equal(_label_values(label), np.unique(label))
