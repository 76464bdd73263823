"""Prepare scripts on synthetic raw releases -> registration -> label maps checked pixel by pixel."""
import os

import numpy as np
import pytest
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

from datasets_synthetic_raw import REPO, RELEASES, make_all, make_voc, run_prepare
from dinov3seg.data.datasets import BENCHMARKS, DATASETS, register_all


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    expected = make_all(root)
    register_all(root)
    yield root, expected
    register_all()  # back to $DETECTRON2_DATASETS for the other tests


def test_label_mappings_pixel_by_pixel(prepared):
    root, expected = prepared
    assert len(expected) == 18
    for rel, want in expected.items():
        got = np.array(Image.open(root / rel))
        assert got.dtype == (np.uint16 if rel.endswith(".tif") else np.uint8), rel
        np.testing.assert_array_equal(got, want, err_msg=rel)


def test_pc459_unlabeled_is_65535_not_459(prepared):
    root, _ = prepared
    label = np.array(Image.open(root / "VOCdevkit/VOC2010/annotations_detectron2/pc459_val/2008_000002.tif"))
    assert set(np.unique(label)) == {0, 284, 458, 65535}
    assert MetadataCatalog.get("pascal_context_459_sem_seg_val").ignore_label == 65535


def test_ade_full_resizes_large_images_to_short_side_512(prepared):
    root, _ = prepared
    out = root / "ADE20K_2021_17_01"
    label = np.array(Image.open(out / "annotations_detectron2/validation/ADE_val_00000003.tif"))
    image = Image.open(out / "images_detectron2/validation/ADE_val_00000003.jpg")
    assert label.shape == (512, 630) and image.size == (630, 512)
    assert set(np.unique(label)) <= {0, 1, 846, 65535}
    assert not (out / "annotations_detectron2/validation/ADE_train_00000001.tif").exists()  # train skipped


def test_registered_dicts_pair_images_and_labels(prepared):
    root, expected = prepared
    counts = {"coco_2017_train_stuff_sem_seg": 2, "coco_2017_val_stuff_sem_seg": 2, "ade20k_full_sem_seg_val": 3,
              "pascal_context_459_sem_seg_val": 3, "ade20k_150_sem_seg_val": 3, "pascal_context_59_sem_seg_val": 2,
              "voc_2012_sem_seg_val": 2, "voc_2012_background_sem_seg_val": 2}
    assert set(counts) == {d.name for d in DATASETS}
    for name, count in counts.items():
        dicts = DatasetCatalog.get(name)
        assert len(dicts) == count, name
        for d in dicts:
            assert os.path.isfile(d["file_name"]) and os.path.isfile(d["sem_seg_file_name"])
            assert os.path.splitext(os.path.basename(d["file_name"]))[0] == \
                os.path.splitext(os.path.basename(d["sem_seg_file_name"]))[0]
        meta = MetadataCatalog.get(name)
        assert meta.sem_seg_root == str(root / os.path.relpath(os.path.dirname(dicts[0]["sem_seg_file_name"]), root))
        assert len(meta.stuff_colors) == len(meta.stuff_classes)


def test_metadata_of_the_benchmarks():
    sizes = {"ade20k_full_sem_seg_val": 847, "pascal_context_459_sem_seg_val": 459, "ade20k_150_sem_seg_val": 150,
             "pascal_context_59_sem_seg_val": 59, "voc_2012_sem_seg_val": 20, "voc_2012_background_sem_seg_val": 59}
    assert list(BENCHMARKS) == list(sizes)
    for name, size in sizes.items():
        meta = MetadataCatalog.get(name)
        assert len(meta.stuff_classes) == size
        assert meta.evaluator_type == ("sem_seg_background" if "background" in name else "sem_seg")
    assert "person, individual, someone, somebody, mortal, soul" in \
        MetadataCatalog.get("ade20k_full_sem_seg_val").stuff_classes
    bg = MetadataCatalog.get("voc_2012_background_sem_seg_val")
    assert bg.eval_classes[:20] == bg.stuff_classes[:20] and bg.eval_classes[20] == "background"
    assert len(MetadataCatalog.get("coco_2017_train_stuff_sem_seg").stuff_classes) == 171


def test_missing_data_names_the_prepare_script(tmp_path):
    register_all(tmp_path)
    try:
        with pytest.raises(FileNotFoundError, match=r"python datasets/prepare_pascal_context_459\.py"):
            DatasetCatalog.get("pascal_context_459_sem_seg_val")
    finally:
        register_all()


def test_prepare_names_missing_inputs_and_where_to_get_them(tmp_path):
    result = run_prepare("prepare_voc.py", tmp_path)
    assert result.returncode != 0
    assert "VOCdevkit/VOC2012/JPEGImages" in result.stderr and "host.robots.ox.ac.uk" in result.stderr
    result = run_prepare("prepare_ade20k_full.py", tmp_path)
    assert "index_ade20k.pkl" in result.stderr and "ade20k.csail.mit.edu" in result.stderr


def test_prepare_is_idempotent_and_rejects_bad_labels(tmp_path):
    make_voc(tmp_path)
    assert run_prepare("prepare_voc.py", tmp_path).returncode == 0
    out = tmp_path / "VOCdevkit/VOC2012/annotations_detectron2/val/2007_000033.png"
    stamp = out.stat().st_mtime_ns
    again = run_prepare("prepare_voc.py", tmp_path)
    assert again.returncode == 0 and "done before" in again.stderr and out.stat().st_mtime_ns == stamp
    # A label file that is not the official format (values 21..254) is flagged, not silently converted.
    Image.fromarray(np.full((4, 4), 100, dtype=np.uint8)).save(
        tmp_path / "VOCdevkit/VOC2012/SegmentationClassAug/2007_000042.png")
    flagged = run_prepare("prepare_voc.py", tmp_path, "--force")
    assert "raw ids outside the known class ids" in flagged.stdout


def test_every_release_has_a_synthetic_copy():
    scripts = {p.name for p in REPO.glob("datasets/prepare_*.py")}
    assert scripts == set(RELEASES)
    assert {d.prepare for d in DATASETS} <= scripts
