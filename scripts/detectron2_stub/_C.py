"""Pure-Python stand-in for Detectron2's compiled extension ``detectron2._C`` (PyPI-only installs).

Semantic segmentation never reaches compiled code. Every compiled-only entry point that Detectron2 0.6
reaches -- the ``_C.<name>`` functions it calls and the ``torch.ops.detectron2.nms_rotated`` operator,
registered here with ``torch.library`` -- raises ``NotImplementedError`` naming the op and saying that it
needs upstream Detectron2 compiled from source. Copied into the sdist by scripts/install_detectron2.sh,
which appends ``BUILD_ID``; an upstream build has its own compiled ``_C`` instead.
"""
import torch

# Each compiled op Detectron2 0.6 calls -> the public entry point that reaches it (and any alternative).
COMPILED_OPS = {
    "box_iou_rotated": "detectron2.layers.pairwise_iou_rotated / structures.RotatedBoxes IoU",
    "nms_rotated": "detectron2.layers.nms_rotated / batched_nms_rotated (torch.ops.detectron2.nms_rotated)",
    "roi_align_rotated_forward": "detectron2.layers.ROIAlignRotated",
    "roi_align_rotated_backward": "detectron2.layers.ROIAlignRotated",
    "deform_conv_forward": "detectron2.layers.DeformConv",
    "deform_conv_backward_input": "detectron2.layers.DeformConv",
    "deform_conv_backward_filter": "detectron2.layers.DeformConv",
    "modulated_deform_conv_forward": "detectron2.layers.ModulatedDeformConv",
    "modulated_deform_conv_backward": "detectron2.layers.ModulatedDeformConv",
    "InstanceAnnotation": "COCOEvaluator's fast evaluation (use COCOEvaluator(..., use_fast_impl=False))",
    "COCOevalEvaluateImages": "COCOEvaluator's fast evaluation (use COCOEvaluator(..., use_fast_impl=False))",
    "COCOevalAccumulate": "COCOEvaluator's fast evaluation (use COCOEvaluator(..., use_fast_impl=False))",
}


def compiled_only_error(name: str) -> NotImplementedError:
    """The one error every compiled-only op raises."""
    return NotImplementedError(
        f"Detectron2 op '{name}' (reached from {COMPILED_OPS[name]}) needs upstream Detectron2 compiled from "
        "source: this environment has dinov3seg's pure-Python Detectron2 0.6 build "
        "(scripts/install_detectron2.sh), which has no compiled ops. With GitHub access: pip install "
        "--no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git' (see docs/install.md).")


def _compiled_only(name: str):
    def op(*args, **kwargs):
        raise compiled_only_error(name)

    op.__name__ = op.__qualname__ = name
    return op


for _name in COMPILED_OPS:
    if _name != "nms_rotated":  # reached only as torch.ops.detectron2.nms_rotated (layers/nms.py)
        globals()[_name] = _compiled_only(_name)

# torch.ops.detectron2.nms_rotated, with upstream's schema; the Library object must stay alive.
_LIBRARY = torch.library.Library("detectron2", "FRAGMENT")
if not hasattr(torch.ops.detectron2, "nms_rotated"):
    _LIBRARY.define("nms_rotated(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.impl("nms_rotated", _compiled_only("nms_rotated"), "CompositeExplicitAutograd")


def get_compiler_version():
    """Read by detectron2.utils.collect_env."""
    return "none (pure-Python Detectron2 build, no compiled ops)"


def get_cuda_version():
    """Read by detectron2.utils.collect_env."""
    return "none"


def has_cuda():
    """Read by detectron2.utils.collect_env: this build has no CUDA kernels."""
    return False
