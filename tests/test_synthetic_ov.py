"""The quickstart's synthetic dataset: colour x texture classes, every word seen in training, unseen pairs that
share their colour and their texture with seen ones, labels indexing each split's vocabulary."""
import json

import numpy as np
import pytest
from PIL import Image

from dinov3seg.data import synthetic


def test_vocabulary_is_compositional():
    assert len(synthetic.CLASSES) == len(synthetic.COLOURS) * len(synthetic.TEXTURES)
    assert sorted(synthetic.SEEN + synthetic.UNSEEN) == sorted(synthetic.CLASSES)
    assert not set(synthetic.SEEN) & set(synthetic.UNSEEN)
    seen_words = {w for name in synthetic.SEEN for w in name.split(" ")}
    assert seen_words == set(synthetic.COLOURS) | set(synthetic.TEXTURES)  # every word occurs in training
    for name in synthetic.UNSEEN:
        colour, texture = name.split(" ")
        # seen pairs share each attribute, so an unseen pixel has near misses among the seen names
        assert any(s.startswith(colour + " ") for s in synthetic.SEEN)
        assert any(s.endswith(" " + texture) for s in synthetic.SEEN)
    # one held-out pair per colour and per texture
    assert len({n.split(" ")[0] for n in synthetic.UNSEEN}) == len(synthetic.UNSEEN) == len(synthetic.COLOURS)
    assert len({n.split(" ")[1] for n in synthetic.UNSEEN}) == len(synthetic.TEXTURES)


def test_classes_look_different_in_colour_and_texture():
    rng = np.random.default_rng(0)
    label = np.zeros((32, 32), np.uint8)
    images = {n: synthetic.render(label, [n], rng).astype(float) for n in synthetic.CLASSES}
    for name, image in images.items():
        colour, texture = name.split(" ")
        # the texture shifts brightness (all channels alike), the colour sets the channels' differences
        mean, reference = image.mean(axis=(0, 1)), np.array(synthetic.COLOURS[colour], float)
        np.testing.assert_allclose(mean - mean.mean(), reference - reference.mean(), atol=12)
        spread = image.mean(axis=2).std()  # brightness swing of the texture (noise alone is ~4)
        assert (spread < 8) if texture == "plain" else (spread > 30), (name, spread)
    stripes, checks = images["red striped"].mean(axis=2), images["red checked"].mean(axis=2)
    assert stripes.std(axis=1).mean() < 8 < stripes.std(axis=0).mean()  # horizontal bands: rows are flat
    assert checks.std(axis=1).mean() > 30
    with pytest.raises(ValueError, match="unknown texture"):
        synthetic.texture_pattern("woven", (4, 4))


def test_generated_splits_index_their_vocabularies(tmp_path):
    synthetic.generate(tmp_path)
    stamp = json.loads((tmp_path / "split.json").read_text())
    assert stamp["version"] == synthetic.VERSION and stamp["unseen"] == synthetic.UNSEEN
    for split, vocabulary in (("train", synthetic.SEEN), ("val", synthetic.CLASSES)):
        assert json.loads((tmp_path / f"classes_{split}.json").read_text()) == vocabulary
        dicts = synthetic.load_split(tmp_path, split)
        assert len(dicts) == synthetic.SPLITS[split]["num_images"]
        used = set()
        for d in dicts:
            with Image.open(d["sem_seg_file_name"]) as label:
                used |= set(np.unique(np.asarray(label)).tolist())
        assert used == set(range(len(vocabulary)))  # every class occurs, no index beyond the vocabulary
    mtime = (tmp_path / "split.json").stat().st_mtime_ns
    synthetic.generate(tmp_path)  # a complete copy of this version is kept
    assert (tmp_path / "split.json").stat().st_mtime_ns == mtime


def test_processes_generating_at_once_leave_one_complete_copy(tmp_path):
    """The ranks of a multi-process run all call generate() on first use: one writes, the others wait for it."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=synthetic.generate, args=(tmp_path,)) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    for split, spec in synthetic.SPLITS.items():
        assert len(list((tmp_path / "images" / split).glob("*.jpg"))) == spec["num_images"]
        assert len(list((tmp_path / "labels" / split).glob("*.png"))) == spec["num_images"]
    assert json.loads((tmp_path / "split.json").read_text())["version"] == synthetic.VERSION
