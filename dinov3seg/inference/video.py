"""Frames in and out for the Segmenter: OpenCV video decoding with one-line errors, a loader thread that
overlaps reading with inference, temporal smoothing of class scores, flicker, and an atomic video writer.

    reader = VideoReader("clip.mp4", every=2, max_frames=100)   # fails now, naming the file, if unreadable
    for index, seconds, rgb in prefetch(reader):                 # decoded in a background thread
        ...

Audio is not read, so videos written here have no sound track.
"""
import logging
import os
import queue
import threading
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import InputError

__all__ = ["VIDEO_EXTENSIONS", "VideoError", "VideoReader", "VideoWriter", "TemporalSmoother", "flicker",
           "prefetch", "sniff_codec"]

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
DEFAULT_FPS = 25.0  # for containers that declare no frame rate


class VideoError(InputError, ValueError):
    """A video file that cannot be read (missing, empty, damaged, not a video, or an unknown codec)."""


def _cv2():
    import cv2

    if hasattr(cv2, "setLogLevel"):
        cv2.setLogLevel(0)  # silent: our one-line errors say what OpenCV's log lines would
    return cv2


def sniff_codec(path: str) -> Optional[str]:
    """The video codec a file's header names (AVI fourcc, MP4/MOV sample entry, Matroska codec id), or None.
    Reads the first MiB only; used to name the codec when OpenCV cannot decode it."""
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        at = head.find(b"strh")  # "strh", size(4), "vids", codec fourcc(4)
        if at >= 0 and head[at + 8 : at + 12] == b"vids":
            return head[at + 12 : at + 16].decode("latin-1").strip("\x00 ") or None
    at = head.find(b"stsd")
    if at >= 0 and at + 20 <= len(head):
        entry = head[at + 16 : at + 20]  # size(4) "stsd" version/flags(4) count(4) | entry size(4) format(4)
        if entry.isalnum():
            return entry.decode("latin-1")
    at = head.find(b"\x86")  # Matroska CodecID element: 0x86, a 1-byte size, then "V_..."
    while 0 <= at < len(head) - 3:
        size = head[at + 1] & 0x7F
        name = head[at + 2 : at + 2 + size]
        if name.startswith(b"V_"):
            return name.decode("latin-1")
        at = head.find(b"\x86", at + 1)
    return None


class VideoReader:
    """The frames of a video file as H x W x 3 uint8 RGB, decoded with OpenCV (FFmpeg).

    Opening checks the file (exists, not empty, a video stream OpenCV can decode, a first frame) and raises
    :class:`VideoError` with a one-line message naming the file otherwise. Iterating yields
    ``(index, seconds, rgb)`` for every ``every``-th frame (index 0, every, 2 * every, ...), at most
    ``max_frames`` of them. A file that ends before its declared frame count sets ``truncated``.
    """

    def __init__(self, path: str, every: int = 1, max_frames: Optional[int] = None):
        path = os.fspath(path)
        if every < 1:
            raise VideoError(f"every must be >= 1 (take every N-th frame), got {every}")
        if max_frames is not None and max_frames < 1:
            raise VideoError(f"max_frames must be >= 1, got {max_frames}")
        if not os.path.isfile(path):
            raise VideoError(f"video '{path}' does not exist")
        if os.path.getsize(path) == 0:
            raise VideoError(f"video '{path}' is empty (0 bytes)")
        if path.lower().endswith(_IMAGE_EXTENSIONS):
            raise VideoError(f"'{path}' is an image, not a video: give it with --input")
        self.path, self.every, self.max_frames = path, every, max_frames
        capture = self._open()
        try:
            ok, frame = capture.read()
            if not ok or frame is None:
                codec = self._capture_codec(capture) or sniff_codec(path)
                raise VideoError(f"video '{path}': OpenCV opens it but decodes no frame" +
                                 (f" (codec '{codec}')" if codec else "") + "; it may be truncated or damaged")
            self.height, self.width = frame.shape[:2]
            fps = capture.get(_cv2().CAP_PROP_FPS)
            self.fps = float(fps) if fps and np.isfinite(fps) and 0 < fps < 1000 else DEFAULT_FPS
            count = capture.get(_cv2().CAP_PROP_FRAME_COUNT)
            self.frame_count: Optional[int] = int(count) if count and 0 < count < 1e9 else None
            self.codec = self._capture_codec(capture)
        finally:
            capture.release()
        self.decoded = 0  # frames decoded by the last iteration
        self.truncated = False

    def _open(self):
        cv2 = _cv2()
        capture = cv2.VideoCapture(self.path, cv2.CAP_FFMPEG)
        if capture.isOpened():
            return capture
        codec = sniff_codec(self.path)
        if codec:
            raise VideoError(f"video '{self.path}': OpenCV (FFmpeg) cannot decode its codec '{codec}'; "
                             "re-encode it, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4")
        raise VideoError(f"video '{self.path}': OpenCV finds no readable video stream in it "
                         "(not a video, or truncated / damaged)")

    @staticmethod
    def _capture_codec(capture) -> Optional[str]:
        code = int(capture.get(_cv2().CAP_PROP_FOURCC))
        text = code.to_bytes(4, "little").decode("latin-1").strip("\x00 ")
        return text if code and text.isprintable() else None

    def __len__(self) -> int:
        """The number of frames iteration yields (from the declared frame count; 0 if unknown)."""
        if self.frame_count is None:
            return self.max_frames or 0
        sampled = -(-self.frame_count // self.every)
        return min(sampled, self.max_frames) if self.max_frames else sampled

    def __iter__(self) -> Iterator[Tuple[int, float, np.ndarray]]:
        cv2 = _cv2()
        capture = self._open()
        self.decoded, self.truncated, yielded, index = 0, False, 0, 0
        try:
            while self.max_frames is None or yielded < self.max_frames:
                if index % self.every:
                    ok = capture.grab()  # skipped frame: demuxed, not converted
                else:
                    ok, frame = capture.read()
                if not ok:
                    break
                self.decoded = index + 1
                if index % self.every == 0:
                    yield index, index / self.fps, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                    yielded += 1
                index += 1
        finally:
            capture.release()
        reached_limit = self.max_frames is not None and yielded >= self.max_frames
        if self.frame_count is not None and not reached_limit and self.decoded < self.frame_count:
            self.truncated = True
            logger.warning(f"video '{self.path}' ends after {self.decoded} of its {self.frame_count} declared "
                           "frames: truncated or damaged; the frames read are kept")


class VideoWriter:
    """Writes H x W x 3 uint8 RGB frames to a video file atomically: into a temporary file beside ``path``,
    renamed to ``path`` when the ``with`` block ends without an error (removed otherwise). The codec is
    ``fourcc`` ("mp4v", MPEG-4 Part 2, for .mp4: the encoder opencv-python-headless ships; "MJPG" for .avi)."""

    FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}

    def __init__(self, path: str, fps: float, size: Tuple[int, int], fourcc: Optional[str] = None):
        """size: (width, height) of every frame."""
        stem, ext = os.path.splitext(path)
        self.path, self.size = path, tuple(size)
        self.fourcc = fourcc or self.FOURCC.get(ext.lower(), "mp4v")
        self.tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(stem)}.tmp{os.getpid()}{ext}")
        cv2 = _cv2()
        self._writer = cv2.VideoWriter(self.tmp, cv2.VideoWriter_fourcc(*self.fourcc), float(fps), self.size)
        if not self._writer.isOpened():
            raise RuntimeError(f"OpenCV cannot write '{ext}' video with codec '{self.fourcc}' here")
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        if (rgb.shape[1], rgb.shape[0]) != self.size:
            raise ValueError(f"frame of {rgb.shape[1]} x {rgb.shape[0]} for a {self.size[0]} x {self.size[1]} video")
        self._writer.write(_cv2().cvtColor(np.ascontiguousarray(rgb), _cv2().COLOR_RGB2BGR))
        self.frames += 1

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        self._writer.release()
        if kind is None and self.frames:
            os.replace(self.tmp, self.path)
        elif os.path.exists(self.tmp):
            os.remove(self.tmp)
        return False


class TemporalSmoother:
    """Exponential moving average of class scores over consecutive frames:
    ``s_t = alpha * s_(t-1) + (1 - alpha) * x_t`` with ``s_0 = x_0``; alpha 0 = off. Restarts when the
    score shape changes (another video or image size)."""

    def __init__(self, alpha: float = 0.0):
        if not 0.0 <= float(alpha) < 1.0:
            raise ValueError(f"temporal smoothing must be in [0, 1) (0 = off), got {alpha}")
        self.alpha = float(alpha)
        self.state: Optional[torch.Tensor] = None

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        """T x h x w scores -> T x h x w smoothed scores."""
        if self.alpha == 0.0:
            return scores
        if self.state is None or self.state.shape != scores.shape:
            self.state = scores.clone()
        else:
            self.state = self.state.mul_(self.alpha).add_(scores, alpha=1.0 - self.alpha)
        return self.state.clone()


def flicker(labels: Sequence[np.ndarray]) -> float:
    """Mean share of pixels whose label changes between consecutive H x W label maps (0 = stable)."""
    if len(labels) < 2:
        return 0.0
    return float(np.mean([np.mean(a != b) for a, b in zip(labels[:-1], labels[1:])]))


_DONE = object()


def prefetch(iterable: Iterable, depth: int = 4) -> Iterator:
    """Iterate ``iterable`` in a background thread, ``depth`` items ahead (decoding overlaps the model).
    Items come in order; an exception raised by the iterable is raised here. Closing the generator early
    stops the thread."""
    items: "queue.Queue" = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                items.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in iterable:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as err:  # handed to the consumer
            put((_DONE, err))

    thread = threading.Thread(target=produce, name="dinov3seg-loader", daemon=True)
    thread.start()
    try:
        while True:
            item, err = items.get()
            if item is _DONE:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def batches(iterable: Iterable, size: int) -> Iterator[List]:
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
