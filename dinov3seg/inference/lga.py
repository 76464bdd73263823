"""Local-Global Aggregation (LGA): the test-time sliding-window path of dinov3.seg (DESIGN.md §4).

One image becomes a batch of views:

* the image is resized to a ``canvas`` (``CANVAS x CANVAS``, or short side ``CANVAS`` with
  ``KEEP_ASPECT``);
* ``VIEW_SIZE`` windows are cut from the canvas at ``STRIDE``; along each axis the last window is
  flush with the border, so every canvas pixel is covered whatever ``(side - VIEW_SIZE) % STRIDE``
  is. A canvas side smaller than a window is padded (bottom/right, with zeros = the mean colour of
  the already normalised image) to one window, and the padding is cropped from the result;
* one global view, the whole image resized to ``VIEW_SIZE``, if ``GLOBAL_VIEW``.

All views go through the network as one batch. Window outputs are stitched on the canvas dividing
by the number of windows covering each pixel; the global output, upsampled to the canvas, is
combined as ``(1 - GLOBAL_WEIGHT) * local + GLOBAL_WEIGHT * global``. Averages are taken over
sigmoid probabilities or over logits (``AVERAGE``). The merged canvas is resized once, straight to
the requested output size (the dataset's original height x width), as CAT-Seg does; going through
the test mapper's resized size first would interpolate twice. With LGA disabled the only view is
the whole image resized to ``VIEW_SIZE``.
"""
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable

__all__ = ["LocalGlobalAggregation", "window_offsets"]


def window_offsets(side: int, window: int, stride: int) -> List[int]:
    """Start offsets of ``window``-long windows covering ``[0, side)`` at ``stride``.

    The last window ends exactly at ``side`` (it may overlap its neighbour by more than the others).
    A side not longer than one window gives the single offset 0.

    Examples (window 384): side 640, stride 256 -> [0, 256]; stride 128 -> [0, 128, 256];
    side 900, stride 256 -> [0, 256, 512, 516].
    """
    if window <= 0 or stride <= 0:
        raise ValueError(f"window ({window}) and stride ({stride}) must be positive")
    if side <= window:
        return [0]
    last = side - window
    offsets = list(range(0, last, stride))
    offsets.append(last)
    return offsets


def _resize(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of an N x C x H x W tensor; a no-op (exact) when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class LocalGlobalAggregation:
    """Runs a per-view segmenter on an LGA batch of views and merges its outputs (see module doc).

    Call with ``image`` (3 x H x W float, already normalised) and ``segment_views``, a callable taking
    V x 3 x S x S views (S = ``view_size``) and returning V x T x s x s logits (any s; upsampled to
    S). Returns T x H x W scores at the image's own size: sigmoid probabilities if
    ``average == "probabilities"``, logits if ``average == "logits"``.
    """

    # Classes stitched at a time: bounds the T x canvas buffers for huge vocabularies.
    STITCH_CLASS_CHUNK = 64

    @configurable
    def __init__(
        self,
        *,
        view_size: int,
        enabled: bool = True,
        canvas: int = 640,
        keep_aspect: bool = False,
        stride: int = 256,
        global_view: bool = True,
        global_weight: float = 0.5,
        average: str = "probabilities",
    ):
        """
        Args:
            view_size: side S of one (square) view fed to the network.
            enabled: False = a single view, the whole image resized to S.
            canvas: side of the square canvas, or of its short side with ``keep_aspect``.
            keep_aspect: resize the short side to ``canvas`` instead of squashing to a square.
            stride: window stride on the canvas (640 canvas, 384 view: 256 -> 2x2, 128 -> 3x3).
            global_view: add the whole image resized to S as one more view.
            global_weight: weight w of the global view: final = (1 - w) * local + w * global.
            average: "probabilities" (average sigmoid outputs) or "logits".
        """
        if average not in ("probabilities", "logits"):
            raise ValueError(f'TEST.LGA.AVERAGE must be "probabilities" or "logits", got {average!r}')
        if not 0.0 <= global_weight <= 1.0:
            raise ValueError(f"TEST.LGA.GLOBAL_WEIGHT must be in [0, 1], got {global_weight}")
        if view_size <= 0 or canvas <= 0 or stride <= 0:
            raise ValueError(
                f"VIEW_SIZE ({view_size}), TEST.LGA.CANVAS ({canvas}) and TEST.LGA.STRIDE ({stride}) "
                "must be positive"
            )
        self.view_size = view_size
        self.enabled = enabled
        self.canvas = canvas
        self.keep_aspect = keep_aspect
        self.stride = stride
        self.global_view = global_view
        self.global_weight = global_weight
        self.average = average

    @classmethod
    def from_config(cls, cfg):
        lga = cfg.TEST.LGA
        return {
            "view_size": cfg.MODEL.DINOV3SEG.VIEW_SIZE,
            "enabled": lga.ENABLED,
            "canvas": lga.CANVAS,
            "keep_aspect": lga.KEEP_ASPECT,
            "stride": lga.STRIDE,
            "global_view": lga.GLOBAL_VIEW,
            "global_weight": lga.GLOBAL_WEIGHT,
            "average": lga.AVERAGE,
        }

    # ------------------------------------------------------------------ layout
    def canvas_size(self, height: int, width: int) -> Tuple[int, int]:
        """(height, width) of the canvas an ``height x width`` image is resized to."""
        if not self.keep_aspect:
            return self.canvas, self.canvas
        scale = self.canvas / min(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))

    def window_boxes(self, canvas_h: int, canvas_w: int) -> List[Tuple[int, int]]:
        """Top-left (y, x) of every window on a canvas, row-major."""
        ys = window_offsets(canvas_h, self.view_size, self.stride)
        xs = window_offsets(canvas_w, self.view_size, self.stride)
        return [(y, x) for y in ys for x in xs]

    def make_views(self, image: torch.Tensor) -> Tuple[torch.Tensor, List[Tuple[int, int]], Tuple[int, int]]:
        """Cut the views of one image.

        Returns:
            views: V x 3 x S x S, the windows (row-major) then the global view if any;
                with LGA disabled, the single global view.
            boxes: top-left (y, x) of each window on the (padded) canvas; [] with LGA disabled.
            canvas_hw: the canvas (height, width) before padding.
        """
        S = self.view_size
        batch = image[None]
        whole = _resize(batch, (S, S))
        if not self.enabled:
            return whole, [], (S, S)

        canvas_h, canvas_w = self.canvas_size(*image.shape[-2:])
        canvas = _resize(batch, (canvas_h, canvas_w))
        pad_h, pad_w = max(0, S - canvas_h), max(0, S - canvas_w)
        if pad_h or pad_w:
            canvas = F.pad(canvas, (0, pad_w, 0, pad_h))
        boxes = self.window_boxes(canvas_h + pad_h, canvas_w + pad_w)
        views = [canvas[:, :, y : y + S, x : x + S] for y, x in boxes]
        if self.global_view:
            views.append(whole)
        return torch.cat(views, dim=0), boxes, (canvas_h, canvas_w)

    # ------------------------------------------------------------------ merge
    def _to_scores(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid() if self.average == "probabilities" else logits

    def merge(
        self,
        outputs: torch.Tensor,
        boxes: List[Tuple[int, int]],
        canvas_hw: Tuple[int, int],
        out_hw: Tuple[int, int],
    ) -> torch.Tensor:
        """Merge V x T x s x s view logits (ordered as :meth:`make_views`) into T x H x W scores."""
        S = self.view_size
        num_classes = outputs.shape[1]
        outputs = outputs.float()
        if not self.enabled:
            return self._to_scores(_resize(outputs, out_hw))[0]

        canvas_h, canvas_w = canvas_hw
        padded_h = max(canvas_h, S)
        padded_w = max(canvas_w, S)
        coverage = outputs.new_zeros(1, padded_h, padded_w)
        for y, x in boxes:
            coverage[:, y : y + S, x : x + S] += 1
        coverage = coverage[:, :canvas_h, :canvas_w]

        w = self.global_weight if self.global_view else 0.0
        merged = outputs.new_empty(num_classes, *out_hw)
        # Stitch a chunk of classes at a time: the canvas buffers stay C x canvas, not T x canvas.
        for c0 in range(0, num_classes, self.STITCH_CLASS_CHUNK):
            chunk = outputs[:, c0 : c0 + self.STITCH_CLASS_CHUNK]
            local = chunk.new_zeros(chunk.shape[1], padded_h, padded_w)
            for i, (y, x) in enumerate(boxes):
                local[:, y : y + S, x : x + S] += self._to_scores(_resize(chunk[i : i + 1], (S, S)))[0]
            scores = local[:, :canvas_h, :canvas_w] / coverage
            if w > 0:
                global_scores = self._to_scores(_resize(chunk[-1:], (S, S)))
                global_scores = _resize(global_scores, (canvas_h, canvas_w))[0]
                scores = (1.0 - w) * scores + w * global_scores
            merged[c0 : c0 + chunk.shape[1]] = _resize(scores[None], out_hw)[0]
        return merged

    def __call__(
        self,
        image: torch.Tensor,
        segment_views: Callable[[torch.Tensor], torch.Tensor],
        out_hw: Optional[Tuple[int, int]] = None,
    ) -> torch.Tensor:
        """
        Args:
            image: 3 x H x W float tensor, already normalised.
            segment_views: maps V x 3 x S x S views to V x T x s x s logits.
            out_hw: (height, width) of the returned scores; None = the image's own H x W.

        Returns:
            T x out_h x out_w float32 scores (probabilities or logits, see ``average``).
        """
        if image.dim() != 3:
            raise ValueError(f"LGA takes one 3 x H x W image, got shape {tuple(image.shape)}")
        views, boxes, canvas_hw = self.make_views(image)
        outputs = segment_views(views)
        if outputs.dim() != 4 or outputs.shape[0] != views.shape[0]:
            raise ValueError(
                f"segment_views returned shape {tuple(outputs.shape)} for {views.shape[0]} views; "
                "expected V x T x s x s"
            )
        return self.merge(outputs, boxes, canvas_hw, tuple(out_hw or image.shape[-2:]))

    def __repr__(self):
        return (
            f"{type(self).__name__}(enabled={self.enabled}, view_size={self.view_size}, canvas={self.canvas}, "
            f"keep_aspect={self.keep_aspect}, stride={self.stride}, global_view={self.global_view}, "
            f"global_weight={self.global_weight}, average={self.average!r})"
        )
