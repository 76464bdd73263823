"""Local-Global Aggregation: window layout, exact stitching, global weighting, one batch per image.

The stand-in network reads the canvas coordinates written into the image's channels (channel 0 = row,
channel 1 = column) and returns a known function of them. If LGA places, stitches and normalises the
windows correctly, it returns that function over the whole canvas, exactly.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from dinov3seg.config import add_dinov3seg_config
from dinov3seg.inference.lga import LocalGlobalAggregation, window_offsets

S = 48  # view size of these tests (384 in the paper; scaled down to keep them fast)


def position_function(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """T=4 known functions of the pixel position (y, x): ... x T x ... stacked on dim 1."""
    return torch.stack([y, x, torch.sin(0.3 * y) * torch.cos(0.2 * x) + 0.01 * y * x, -y - 2 * x], dim=1)


def coordinate_image(height: int, width: int) -> torch.Tensor:
    """3 x H x W image whose channels hold the row and column index of each pixel."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    return torch.stack([ys, xs, torch.zeros_like(ys)])


class PositionNet:
    """Stand-in segmenter: V x 3 x S x S views -> V x 4 x S x S 'logits' = position_function(y, x)."""

    def __init__(self):
        self.calls = []

    def __call__(self, views: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(views.shape))
        return position_function(views[:, 0], views[:, 1])


def make_lga(**kw) -> LocalGlobalAggregation:
    args = dict(view_size=S, canvas=80, stride=32, global_view=False, average="logits")
    args.update(kw)
    return LocalGlobalAggregation(**args)


def test_window_offsets_cover_every_pixel_and_last_is_flush():
    assert window_offsets(640, 384, 256) == [0, 256]  # 2x2 grid of the paper's canvas
    assert window_offsets(640, 384, 128) == [0, 128, 256]  # 3x3 grid
    assert window_offsets(384, 384, 256) == [0]
    assert window_offsets(100, 384, 256) == [0]  # smaller than a window: one (padded) window
    for side in range(S, 300, 7):
        for stride in (16, 32, 40, S):
            offs = window_offsets(side, S, stride)
            assert offs[0] == 0 and offs[-1] == side - S
            assert all(0 < b - a <= stride for a, b in zip(offs, offs[1:]))
            covered = torch.zeros(side)
            for o in offs:
                covered[o : o + S] += 1
            assert covered.min() >= 1


@pytest.mark.parametrize(
    "height, width, kw, grid",
    [
        (80, 80, dict(canvas=80, stride=32), (2, 2)),  # 2x2 (the paper's 640/384/256 scaled)
        (80, 80, dict(canvas=80, stride=16), (3, 3)),  # 3x3 (640/384/128 scaled)
        (90, 90, dict(canvas=90, stride=32), (3, 3)),  # side - S = 42 is no multiple of the stride
        (101, 101, dict(canvas=101, stride=20), (4, 4)),  # odd side, last window flush
        (80, 131, dict(canvas=80, stride=32, keep_aspect=True), (2, 4)),  # non-square, aspect kept
        (131, 80, dict(canvas=80, stride=32, keep_aspect=True), (4, 2)),
        (48, 48, dict(canvas=48, stride=32), (1, 1)),  # exactly one window
        (40, 40, dict(canvas=40, stride=32), (1, 1)),  # canvas smaller than a window: padded
        (40, 70, dict(canvas=40, stride=32, keep_aspect=True), (1, 2)),  # short side below S only
    ],
)
@pytest.mark.parametrize("average", ["logits", "probabilities"])
def test_stitching_is_exact(height, width, kw, grid, average):
    lga = make_lga(average=average, **kw)
    image = coordinate_image(height, width)
    net = PositionNet()
    scores = lga(image, net)

    assert net.calls == [(grid[0] * grid[1], 3, S, S)]  # all windows in one batch
    expected = position_function(*coordinate_image(height, width)[None, :2].unbind(1))[0]
    if average == "probabilities":
        expected = expected.sigmoid()
    assert scores.shape == (4, height, width)
    torch.testing.assert_close(scores, expected.float(), rtol=1e-6, atol=1e-5)


def test_canvas_resize_then_back_to_image_size():
    """An image twice the canvas: the coordinates are written so the 2x downsampled canvas reads its
    own pixel indexes exactly; the result is then the canvas function resized to the image."""
    lga = make_lga(canvas=70, stride=16)
    H, W, C = 140, 140, 70
    image = coordinate_image(H, W)
    image[:2] = (image[:2] + 0.5) * C / H - 0.5  # image row r holds the canvas coordinate of its centre
    scores = lga(image, PositionNet())
    canvas_truth = position_function(*coordinate_image(C, C)[None, :2].unbind(1))
    expected = F.interpolate(canvas_truth.float(), size=(H, W), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("average", ["logits", "probabilities"])
@pytest.mark.parametrize("weight", [0.0, 0.25, 0.5, 1.0])
def test_global_view_is_last_in_the_batch_and_weighted(average, weight):
    lga = make_lga(canvas=80, stride=16, global_view=True, global_weight=weight, average=average)
    global_logits = torch.tensor([0.5, -1.0, 2.0, 3.0])
    calls = []

    def net(views):
        calls.append(views.shape[0])
        out = position_function(views[:, 0], views[:, 1])
        out[-1] = global_logits[:, None, None]  # the global view: a constant per class
        return out

    image = coordinate_image(80, 80)
    scores = lga(image, net)
    assert calls == [9 + 1]  # 3x3 windows + the global view, one batch
    local = position_function(*coordinate_image(80, 80)[None, :2].unbind(1))[0].float()
    glob = global_logits[:, None, None].expand_as(local)
    if average == "probabilities":
        local, glob = local.sigmoid(), glob.sigmoid()
    torch.testing.assert_close(scores, (1 - weight) * local + weight * glob, rtol=0, atol=1e-5)


def test_global_view_sees_the_whole_image():
    lga = make_lga(canvas=80, stride=32, global_view=True)
    image = torch.randn(3, 57, 93)
    views, boxes, canvas_hw = lga.make_views(image)
    assert views.shape == (5, 3, S, S) and canvas_hw == (80, 80)
    assert boxes == [(0, 0), (0, 32), (32, 0), (32, 32)]
    whole = F.interpolate(image[None], size=(S, S), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(views[-1], whole)


def test_low_resolution_outputs_are_upsampled():
    """The real head returns 1/4-resolution logits; LGA upsamples each view to S before stitching."""
    lga = make_lga(canvas=80, stride=32, global_view=True, average="probabilities")

    def net(views):
        return torch.full((views.shape[0], 7, S // 4, S // 4), 2.0)

    scores = lga(torch.randn(3, 61, 75), net)
    assert scores.shape == (7, 61, 75)
    torch.testing.assert_close(scores, torch.full_like(scores, 1 / (1 + math.exp(-2.0))))


def test_disabled_is_one_whole_image_view():
    lga = make_lga(enabled=False, average="logits")
    net = PositionNet()
    scores = lga(coordinate_image(30, 50), net)
    assert net.calls == [(1, 3, S, S)]
    assert scores.shape == (4, 30, 50)


def test_from_config_and_bad_values():
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_dinov3seg_config(cfg)
    cfg.TEST.LGA.STRIDE = 128
    cfg.TEST.LGA.KEEP_ASPECT = True
    lga = LocalGlobalAggregation(cfg)
    assert (lga.view_size, lga.canvas, lga.stride, lga.keep_aspect) == (384, 640, 128, True)
    assert lga.window_boxes(640, 640) == [(y, x) for y in (0, 128, 256) for x in (0, 128, 256)]
    assert lga.canvas_size(480, 640) == (640, 853)
    with pytest.raises(ValueError, match="AVERAGE"):
        make_lga(average="mean")
    with pytest.raises(ValueError, match="GLOBAL_WEIGHT"):
        make_lga(global_weight=1.5)
    with pytest.raises(ValueError, match="V x T x s x s"):
        make_lga()(torch.zeros(3, 80, 80), lambda v: torch.zeros(1, 2, S, S))


def catseg_sliding_window(image, net, kernel, canvas, stride, out_hw):
    """CAT-Seg's ``inference_sliding_window`` order of operations, written out with Unfold / Fold: the
    (test-mapper-resized) image is squashed to a square canvas, cut into windows plus one global view;
    outputs go to the window size, through the sigmoid, are folded / counted, averaged with the
    upsampled global view, and the canvas is resized once to the original ``out_hw``."""
    unfold = torch.nn.Unfold(kernel_size=kernel, stride=stride)
    fold = torch.nn.Fold((canvas, canvas), kernel_size=kernel, stride=stride)
    squashed = F.interpolate(image[None], size=(canvas, canvas), mode="bilinear", align_corners=False)[0]
    windows = unfold(squashed).T.reshape(-1, 3, kernel, kernel)
    whole = F.interpolate(image[None], size=(kernel, kernel), mode="bilinear", align_corners=False)
    outputs = net(torch.cat([windows, whole]))
    outputs = F.interpolate(outputs, size=kernel, mode="bilinear", align_corners=False).sigmoid()
    global_output = F.interpolate(outputs[-1:], size=(canvas, canvas), mode="bilinear", align_corners=False)
    count = fold(unfold(torch.ones(1, canvas, canvas, dtype=image.dtype)))
    local = fold(outputs[:-1].flatten(1).T) / count
    merged = (local + global_output) / 2
    return F.interpolate(merged, size=out_hw, mode="bilinear", align_corners=False)[0]


def test_one_resize_from_canvas_to_original_size_equals_catseg():
    """The test mapper resized a 75 x 97 original to 100 x 130; LGA must go from its canvas straight to
    75 x 97 (CAT-Seg's order), not through 100 x 130 first (which changes ~0.5 % of labels at 640)."""
    def quarter_res_net(views):  # V x 3 x S x S -> V x 4 x S/4 x S/4, moderate logits
        return F.avg_pool2d(torch.sin(0.5 * position_function(views[:, 0], views[:, 1])), 4)

    image = coordinate_image(100, 130)
    original = (75, 97)
    lga = make_lga(canvas=80, stride=32, global_view=True, global_weight=0.5, average="probabilities")
    ours = lga(image, quarter_res_net, out_hw=original)
    reference = catseg_sliding_window(image, quarter_res_net, kernel=S, canvas=80, stride=32, out_hw=original)
    assert ours.shape == (4, *original)
    torch.testing.assert_close(ours.double(), reference, rtol=0, atol=1e-6)
    # The former order (canvas -> mapper size -> original) is measurably different.
    twice = F.interpolate(lga(image, quarter_res_net)[None], size=original, mode="bilinear", align_corners=False)[0]
    assert (twice.double() - reference).abs().max() > 1e-3 and (twice.argmax(0) != reference.argmax(0)).any()
