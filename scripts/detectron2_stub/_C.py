"""Pure-Python stand-in for detectron2's compiled extension (PyPI-only installs).

Semantic segmentation never calls the compiled ops; the rotated-box ops, deformable
convolution and the fast COCO evaluator raise a clear error if something does.
Installed by ``scripts/install_detectron2.sh``; not used with an upstream build.
"""


def get_compiler_version():
    return "none (pure-Python detectron2 build)"


def get_cuda_version():
    return "none"


def has_cuda():
    return False


def _compiled_only(name):
    def op(*args, **kwargs):
        raise NotImplementedError(
            f"detectron2._C.{name} needs the compiled detectron2 extension; this environment "
            "uses the pure-Python build from scripts/install_detectron2.sh. Install upstream "
            "detectron2 from GitHub (see README) if you need it."
        )

    op.__name__ = name
    return op


for _name in (
    "box_iou_rotated", "nms_rotated", "deform_conv_forward", "deform_conv_backward_input",
    "deform_conv_backward_filter", "modulated_deform_conv_forward",
    "modulated_deform_conv_backward", "ROIAlignRotated_forward", "ROIAlignRotated_backward",
    "COCOevalAccumulate", "COCOevalEvaluateImages", "InstanceAnnotation", "ImageEvaluation",
):
    globals()[_name] = _compiled_only(_name)
