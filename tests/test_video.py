"""Videos and streams: demo/demo.py --video-input and Segmenter.video on short synthetic clips with the
quickstart model (random weights, LGA off: one view per frame, so a frame takes a fraction of a second), the
loader thread, temporal smoothing, and the one-line errors for unreadable videos."""
import importlib.util
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from dinov3seg import Segmenter
from dinov3seg.inference.video import TemporalSmoother, VideoReader, VideoWriter, flicker, prefetch, sniff_codec
from dinov3seg.tools.video_benchmark import moving_clip, noisy_static_clip, write

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("dinov3seg_demo_video", ROOT / "demo" / "demo.py")
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
FAST = ["--opts", "TEST.LGA.ENABLED", "False"]  # one view per frame
VOCABULARY = "red, blue, green, sky"
FPS, WIDTH, HEIGHT, FRAMES = 12.0, 80, 64, 8


def write_clip(path: Path, frames) -> Path:
    """RGB frames -> an mp4 (mp4v) at FPS."""
    write(str(path), frames, HEIGHT, WIDTH, FPS)
    return path


def moving_shapes(count: int = FRAMES):
    """A red box and a green disc moving over blue."""
    return moving_clip(HEIGHT, WIDTH, count)


def noisy_static(count: int = FRAMES, seed: int = 0):
    """The same two-colour picture every frame, with fresh Gaussian noise (sigma 40) on each."""
    return noisy_static_clip(HEIGHT, WIDTH, count, sigma=40.0, seed=seed)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", moving_shapes())


@pytest.fixture(scope="module")
def segmented(clip, tmp_path_factory):
    """One demo run over the clip, with per-frame label PNGs, two frames per model call."""
    out = tmp_path_factory.mktemp("out")
    torch.manual_seed(0)
    status = demo.main(["--config-file", QUICKSTART, "--video-input", str(clip), "--vocabulary", VOCABULARY,
                        "--output", str(out), "--save-labels", "--batch-size", "2", *FAST])
    assert status == 0
    return out


def test_video_in_video_out(clip, segmented):
    video = cv2.VideoCapture(str(segmented / "clip.mp4"))
    assert video.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS)
    assert (video.get(cv2.CAP_PROP_FRAME_WIDTH), video.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (WIDTH, HEIGHT)
    decoded = 0
    while video.read()[0]:
        decoded += 1
    assert decoded == FRAMES

    record = json.loads((segmented / "clip.json").read_text())
    assert record["frames"] == list(range(FRAMES)) and record["complete"] and not record["truncated"]
    assert record["times"] == pytest.approx([i / FPS for i in range(FRAMES)], abs=1e-3)
    table = json.loads((segmented / "label_names.json").read_text())
    assert table == record["label_names"] == {"0": "red", "1": "blue", "2": "green", "3": "sky"}
    per_frame = record["pixel_shares_per_frame"]
    for k, index in enumerate(record["frames"]):  # the JSON's shares are the label PNGs' pixel counts
        labels = np.asarray(Image.open(segmented / "labels" / "clip" / f"{index:06d}.png"))
        assert labels.shape == (HEIGHT, WIDTH)
        counts = np.bincount(labels.reshape(-1), minlength=4) / labels.size
        assert [per_frame[table[str(c)]][k] for c in range(4)] == pytest.approx(counts.tolist(), abs=1e-5)
    for name, values in per_frame.items():  # over the clip: the mean of the frames (all the same size)
        assert record["pixel_shares"][name] == pytest.approx(np.mean(values), abs=1e-5)
    assert sum(record["pixel_shares"].values()) == pytest.approx(1, abs=1e-4)
    plot = Image.open(segmented / "clip_classes.png")
    assert plot.width > 300 and len(np.unique(np.asarray(plot.convert("L")))) > 10
    summary = json.loads((segmented / "results.json").read_text())
    assert summary["videos"]["clip"] == record and summary["failed"] == []


def test_skip_existing_does_no_work_and_redoes_what_changed(clip, segmented, monkeypatch):
    before = {p: p.stat().st_mtime_ns for p in segmented.rglob("*") if p.is_file() and p.name != "results.json"}

    def no_model(*args, **kwargs):
        raise AssertionError("--skip-existing built the model although every output is complete")

    monkeypatch.setattr(demo, "Segmenter", no_model)
    args = ["--config-file", QUICKSTART, "--video-input", str(clip), "--output", str(segmented), "--save-labels",
            "--batch-size", "2", "--skip-existing", *FAST]
    assert demo.main(args[:4] + ["--vocabulary", VOCABULARY] + args[4:]) == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert json.loads((segmented / "results.json").read_text())["videos"]["clip"]["frames"] == list(range(FRAMES))
    with pytest.raises(AssertionError, match="built the model"):  # other classes: not the same output, redone
        demo.main(args[:4] + ["--vocabulary", "red, blue"] + args[4:])


def test_a_killed_run_is_not_skipped(clip, tmp_path):
    """A run killed mid-video leaves at most a temporary file: the outputs do not exist and are made again.
    Also: a video named in --input is segmented as a video; --every / --max-frames."""
    out = tmp_path / "out"
    out.mkdir()
    (out / ".clip.tmp123.mp4").write_bytes(b"half a video")  # what a killed writer leaves behind
    status = demo.main(["--config-file", QUICKSTART, "--input", str(clip), "--vocabulary", VOCABULARY,  # a video
                        "--output", str(out), "--every", "3", "--max-frames", "2", "--skip-existing", *FAST])
    assert status == 0
    record = json.loads((out / "clip.json").read_text())
    assert record["frames"] == [0, 3] and record["output_fps"] == pytest.approx(FPS / 3)
    video = cv2.VideoCapture(str(out / "clip.mp4"))
    assert video.get(cv2.CAP_PROP_FRAME_COUNT) == 2 and video.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS / 3)
    assert not (out / "labels" / "clip").exists()  # index PNGs only with --save-labels


def test_api_video_smoothing_lowers_flicker_text_once(tmp_path):
    path = write_clip(tmp_path / "static.mp4", noisy_static())
    torch.manual_seed(0)
    segmenter = Segmenter("quickstart", opts=["TEST.LGA.ENABLED", "False"])
    names = ["red", "blue", "green", "sky"]
    segmenter(next(noisy_static()), names)
    text_calls = segmenter.model.text_embedder.num_encoder_calls
    frames = list(segmenter.video(path, names, batch_size=3))
    assert [f.index for f in frames] == list(range(FRAMES)) and frames[1].time == pytest.approx(1 / FPS)
    assert frames[0].image.shape == (HEIGHT, WIDTH, 3) and frames[0].result.labels.shape == (HEIGHT, WIDTH)
    smoothed = list(segmenter.video(path, names, batch_size=3, temporal_smoothing=0.7))
    assert segmenter.model.text_embedder.num_encoder_calls == text_calls  # the vocabulary's text: encoded once
    raw = flicker([f.result.labels for f in frames])
    calm = flicker([f.result.labels for f in smoothed])
    assert raw > 0.01 and calm < 0.7 * raw
    # The first frame has no history; later scores are the running average of the raw ones.
    np.testing.assert_allclose(smoothed[0].result.scores, frames[0].result.scores, atol=1e-6)
    expected = 0.7 * frames[0].result.scores + 0.3 * frames[1].result.scores
    np.testing.assert_allclose(smoothed[1].result.scores, expected, atol=1e-5)


def test_stream_keeps_order_and_survives_unreadable_images(tmp_path):
    torch.manual_seed(0)
    segmenter = Segmenter("quickstart", opts=["TEST.LGA.ENABLED", "False"])
    rgb = next(moving_shapes())
    Image.fromarray(rgb).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    items = [("a", rgb), ("b", str(tmp_path / "broken.png")), ("c", str(tmp_path / "ok.png")), ("d", rgb[:20])]
    out = list(segmenter.stream(items, ["red", "blue"], batch_size=2, skip_unreadable=True))
    assert [o.tag for o in out] == ["a", "b", "c", "d"]
    assert out[1].result is None and "cannot read image" in str(out[1].error)
    np.testing.assert_array_equal(out[0].result.labels, out[2].result.labels)
    assert out[3].result.labels.shape == (20, WIDTH)
    with pytest.raises(ValueError, match="cannot read image"):
        list(segmenter.stream(items, ["red", "blue"]))


def _bad_videos(tmp_path: Path):
    mjpg = tmp_path / "good.avi"
    writer = cv2.VideoWriter(str(mjpg), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (WIDTH, HEIGHT))
    for rgb in moving_shapes(3):
        writer.write(rgb)
    writer.release()
    (tmp_path / "codec.avi").write_bytes(mjpg.read_bytes().replace(b"MJPG", b"ZZZZ"))  # a codec nobody has
    full = write_clip(tmp_path / "full.mp4", moving_shapes()).read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(full[: len(full) // 2])
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "notes.mp4").write_text("not a video")
    Image.fromarray(next(moving_shapes())).save(tmp_path / "still.png")
    return tmp_path


@pytest.mark.parametrize("name, message", [
    ("missing.mp4", "does not exist"),
    ("empty.mp4", "is empty (0 bytes)"),
    ("truncated.mp4", "no readable video stream"),
    ("notes.mp4", "no readable video stream"),
    ("codec.avi", "cannot decode its codec 'ZZZZ'"),
    ("still.png", "is an image, not a video"),
])
def test_bad_videos_give_one_line_and_exit_2(tmp_path, capsys, name, message):
    path = _bad_videos(tmp_path) / name
    status = demo.main(["--config-file", QUICKSTART, "--video-input", str(path), "--vocabulary", "red",
                        "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.startswith("error: ") and len(err.splitlines()) == 1
    assert f"'{path}'" in err and message in err
    assert not (tmp_path / "o").exists()  # refused before the model is built or anything written


def test_video_helpers(tmp_path):
    smoother = TemporalSmoother(0.5)
    a, b = torch.zeros(2, 3, 3), torch.ones(2, 3, 3)
    assert torch.equal(smoother(a), a) and torch.allclose(smoother(b), torch.full_like(b, 0.5))
    assert smoother(torch.ones(1, 4, 4)).shape == (1, 4, 4)  # another size: starts again
    with pytest.raises(ValueError, match="temporal smoothing"):
        TemporalSmoother(1.0)
    assert flicker([np.zeros((2, 2)), np.array([[0, 1], [0, 0]]), np.array([[0, 1], [0, 0]])]) == 0.125

    def numbers():
        yield from range(5)
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for n in prefetch(numbers(), depth=2):
            got.append(n)
    assert got == list(range(5))

    path = tmp_path / "x.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(str(path), FPS, (WIDTH, HEIGHT)) as writer:
            writer.write(next(moving_shapes()))
            raise RuntimeError("killed")
    assert os.listdir(tmp_path) == []  # nothing half-written left, not even the temporary file
    with VideoWriter(str(path), FPS, (WIDTH, HEIGHT)) as writer:
        for rgb in moving_shapes(3):
            writer.write(rgb)
    reader = VideoReader(str(path), every=2)
    assert len(reader) == 2 and [i for i, _, _ in reader] == [0, 2] and sniff_codec(str(path)) == "mp4v"
