"""Our Detectron2 0.6 build as its users know it (docs/install.md): every public package imports in a
fresh interpreter without dinov3seg, the patched call sites run on the installed numpy / Pillow,
compiled-only ops fail with one clear message, and LR scheduler state survives ``--resume``."""
import importlib.util
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import detectron2
import detectron2._C as d2_C
from detectron2.engine import HookBase

REPO = Path(__file__).resolve().parents[1]
OUR_BUILD = d2_C.__file__.endswith(".py")
needs_our_build = pytest.mark.skipif(not OUR_BUILD, reason="upstream compiled Detectron2: its ops are real")


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Run as a user script: a fresh interpreter that never imports dinov3seg (nothing aliases np.int or
# Image.LINEAR), with the deprecation warnings of the removed names as errors so the pinned stack
# (numpy 1.23, Pillow 9.5, where they still exist) catches them too.
USER_SCRIPT = r'''
import json, sys, warnings
warnings.filterwarnings("error", message=r".*is a deprecated alias", category=DeprecationWarning)
warnings.filterwarnings("error", message=r"LINEAR is deprecated", category=DeprecationWarning)
import numpy as np, torch
from PIL import Image
from detectron2 import model_zoo
from detectron2.config import LazyConfig, get_cfg
import detectron2.checkpoint, detectron2.data, detectron2.engine, detectron2.evaluation, detectron2.modeling
import detectron2.utils.testing
from detectron2.utils.visualizer import Visualizer
out = {"config_file": model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml")}
out["yaml_arch"] = model_zoo.get_config("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml").MODEL.META_ARCHITECTURE
target = LazyConfig.load(model_zoo.get_config_file("common/models/mask_rcnn_fpn.py")).model._target_
out["lazy_model"] = str(getattr(target, "__name__", target)).rsplit(".")[-1]

# The patched call sites, on whatever numpy / Pillow is installed.
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.build import print_instances_class_histogram
from detectron2.data.common import MapDataset
from detectron2.data.transforms import ExtentTransform
from detectron2.evaluation import SemSegEvaluator
from detectron2.layers.mask_ops import paste_mask_in_image_old
from detectron2.structures import PolygonMasks, polygons_to_bitmask
square = np.array([1.0, 1.0, 6.0, 1.0, 6.0, 6.0, 1.0, 6.0])
out["bitmask_sum"] = int(polygons_to_bitmask([square], 8, 8).sum())
out["nonempty"] = PolygonMasks([[square], [square]]).nonempty().tolist()
print_instances_class_histogram([{"annotations": [{"category_id": 1}, {"category_id": 1}]}], ["a", "b"])
out["extent_shape"] = list(ExtentTransform((0, 0, 4, 4), (8, 8)).apply_image(np.zeros((4, 4, 3), np.uint8)).shape)
pasted = paste_mask_in_image_old(torch.ones(4, 4), torch.tensor([0.0, 0.0, 3.0, 3.0]), 8, 8, 0.5)
out["pasted_sum"] = int(pasted.sum())
dropped = MapDataset(list(range(4)), lambda i: None if i == 0 else i)  # a mapper dropping a sample
out["fallback"] = dropped[0]
gt = sys.argv[1] + "/gt.png"
Image.fromarray(np.array([[0, 1], [1, 255]], np.uint8)).save(gt)
DatasetCatalog.register("d2_user_script", lambda: [{"file_name": "img.jpg", "sem_seg_file_name": gt}])
MetadataCatalog.get("d2_user_script").set(stuff_classes=["a", "b"], ignore_label=255)
evaluator = SemSegEvaluator("d2_user_script", distributed=False)
evaluator.reset()
evaluator.process([{"file_name": "img.jpg"}], [{"sem_seg": torch.tensor([[[9.0, 0.0], [0.0, 0.0]], [[0.0, 9.0], [9.0, 9.0]]])}])
out["miou"] = evaluator.evaluate()["sem_seg"]["mIoU"]
# Detectron2's FLOP tools (fvcore's FlopCountAnalysis, tools/analyze_model.py): detectron2.export without caffe2.
import detectron2.export
from detectron2.utils.analysis import FlopCountAnalysis
out["export_names"] = sorted(n for n in ("TracingAdapter", "dump_torchscript_IR") if hasattr(detectron2.export, n))
out["conv_macs"] = FlopCountAnalysis(torch.nn.Conv2d(3, 4, 3), (torch.zeros(1, 3, 6, 6),)).total()
out["dinov3seg_imported"] = any(m.split(".")[0] == "dinov3seg" for m in sys.modules)
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def user_script(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("d2_user_script")
    proc = subprocess.run([sys.executable, "-c", USER_SCRIPT, str(tmp)], cwd=tmp, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_public_packages_import_without_dinov3seg(user_script):
    assert not user_script["dinov3seg_imported"]
    config_file = Path(user_script["config_file"])
    assert config_file.is_file() and config_file.parts[-3:] == (
        "configs", "COCO-InstanceSegmentation", "mask_rcnn_R_50_FPN_3x.yaml")
    assert user_script["yaml_arch"] == "GeneralizedRCNN" and user_script["lazy_model"] == "GeneralizedRCNN"


def test_model_zoo_get_config_file_one_liner():
    """The issue's check, verbatim, in a fresh interpreter."""
    code = ("from detectron2 import model_zoo; "
            "print(model_zoo.get_config_file('COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert Path(proc.stdout.strip()).is_file()


def test_patched_call_sites_run_on_installed_numpy_and_pillow(user_script):
    assert user_script["bitmask_sum"] == 25 and user_script["nonempty"] == [True, True]
    assert user_script["extent_shape"] == [8, 8, 3] and user_script["pasted_sum"] == 16
    assert user_script["fallback"] in (1, 2, 3)
    # GT [[0, 1], [1, ignore]], prediction [[0, 1], [1, 1]]: both classes exact.
    assert user_script["miou"] == pytest.approx(100.0)


def test_flop_tools_import_and_count(user_script):
    """``detectron2.utils.analysis`` and all of ``detectron2.export`` import under torch 2 (no caffe2);
    fvcore counts a 3x3 conv 3 -> 4 on a 4 x 4 output as 4 * 4 * 4 * 3 * 9 multiply-adds."""
    assert user_script["export_names"] == ["TracingAdapter", "dump_torchscript_IR"]
    assert user_script["conv_macs"] == 4 * 4 * 4 * 3 * 9


@needs_our_build
def test_installed_sources_carry_every_patch():
    patch = _load_script("patch_detectron2")
    root = Path(detectron2.__file__).parent
    for p in patch.PATCHES:
        text = (root / p.path.removeprefix("detectron2/")).read_text()
        assert p.new in text, f"{p.path} lacks {p.new!r}"
        if not p.new.startswith(p.old):  # a replacement, not an insertion after `old`
            assert not p.pattern().search(text), f"{p.path} still has {p.old!r}"
    removed = re.compile(r"\bnp\.(int|float|bool|object|str|long|unicode|complex)\b(?!\d)|Image\.(LINEAR|ANTIALIAS|CUBIC)\b")
    hits = [f"{f.relative_to(root)}:{i}" for f in root.rglob("*.py") for i, line in enumerate(f.read_text().splitlines(), 1)
            if removed.search(line)]
    assert not hits, f"names removed from numpy / Pillow still used: {hits}"


def test_docs_list_every_patch():
    table = _load_script("patch_detectron2").markdown()
    assert table in (REPO / "docs" / "install.md").read_text(), "regenerate with scripts/patch_detectron2.py --markdown"


@needs_our_build
def test_stand_in_covers_every_compiled_op_detectron2_calls():
    root = Path(detectron2.__file__).parent
    called = set()
    for f in root.rglob("*.py"):
        text = f.read_text()
        if re.search(r"^from detectron2 import _C$", text, re.M):
            called |= set(re.findall(r"(?<![\w.])_C\.(\w+)\(", text))
        called |= set(re.findall(r"torch\.ops\.detectron2\.(\w+)", text))
    called -= {"get_compiler_version", "get_cuda_version"}  # the info functions, which answer
    assert called == set(d2_C.COMPILED_OPS)


def _rotated_calls():
    from detectron2.layers import ROIAlignRotated, batched_nms_rotated, nms_rotated
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated
    boxes = torch.tensor([[5.0, 5.0, 4.0, 4.0, 30.0], [6.0, 5.0, 4.0, 4.0, 0.0]])
    scores = torch.tensor([0.9, 0.8])
    return {
        "nms_rotated": lambda: nms_rotated(boxes, scores, 0.5),
        "batched_nms_rotated": lambda: batched_nms_rotated(boxes, scores, torch.tensor([0, 0]), 0.5),
        "box_iou_rotated": lambda: pairwise_iou_rotated(boxes, boxes),
        "roi_align_rotated_forward": lambda: ROIAlignRotated((2, 2), 1.0, 0)(
            torch.zeros(1, 1, 8, 8), torch.tensor([[0.0, 4.0, 4.0, 4.0, 4.0, 0.0]])),
    }


@needs_our_build
@pytest.mark.parametrize("entry", ["nms_rotated", "batched_nms_rotated", "box_iou_rotated", "roi_align_rotated_forward"])
def test_rotated_ops_fail_with_clear_message(entry):
    op = {"batched_nms_rotated": "nms_rotated"}.get(entry, entry)
    with pytest.raises(NotImplementedError, match=rf"Detectron2 op '{op}' .*needs upstream Detectron2 compiled from source"):
        _rotated_calls()[entry]()


@needs_our_build
@pytest.mark.parametrize("name", sorted(set(d2_C.COMPILED_OPS) - {"nms_rotated"}))
def test_every_c_entry_point_fails_with_clear_message(name):
    with pytest.raises(NotImplementedError, match=rf"Detectron2 op '{name}' .*compiled from source"):
        getattr(d2_C, name)(torch.zeros(1))


# ---- LR scheduler state across --resume (the real Trainer of train_net.py, with a tiny model) ----

class _TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 1)

    def forward(self, batch):
        x, y = batch
        return {"loss": nn.functional.mse_loss(self.linear(x), y)}

    def trainable_state_dict(self):
        return self.state_dict()


class _RecordLR(HookBase):
    def __init__(self, lrs):
        self.lrs = lrs

    def before_step(self):
        self.lrs.append(self.trainer.optimizer.param_groups[0]["lr"])


def _tiny_trainer_class(scheduler):
    spec = importlib.util.spec_from_file_location("train_net", REPO / "train_net.py")
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)

    class TinyTrainer(train_net.Trainer):
        def __init__(self, cfg):
            self.lrs = []  # LR of param group 0 before each step; build_hooks (in __init__) reads it
            super().__init__(cfg)

        @classmethod
        def build_model(cls, cfg):
            return _TinyModel()

        @classmethod
        def build_train_loader(cls, cfg):
            g = torch.Generator().manual_seed(0)
            return itertools.repeat((torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g)))

        @classmethod
        def build_lr_scheduler(cls, cfg, optimizer):
            if scheduler == "torch CosineAnnealingLR":  # a user's own Trainer with a torch 2 scheduler
                return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.SOLVER.MAX_ITER)
            return super().build_lr_scheduler(cfg, optimizer)

        def build_hooks(self):
            return super().build_hooks() + [_RecordLR(self.lrs)]

    return TinyTrainer


SCHEDULERS = ["WarmupCosineLR", "WarmupMultiStepLR"]  # every SOLVER.LR_SCHEDULER_NAME Detectron2 0.6 builds


def _cfg(out_dir, scheduler):
    from dinov3seg import get_dinov3seg_cfg
    name = scheduler if scheduler in SCHEDULERS else "WarmupCosineLR"
    cfg = get_dinov3seg_cfg(str(REPO / "configs" / "quickstart.yaml"), [
        "OUTPUT_DIR", str(out_dir), "SOLVER.LR_SCHEDULER_NAME", name, "SOLVER.MAX_ITER", "6",
        "SOLVER.WARMUP_ITERS", "2", "SOLVER.STEPS", "(4,)", "SOLVER.CHECKPOINT_PERIOD", "3",
        "SOLVER.AMP.ENABLED", "False", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()"])
    return cfg


def test_config_names_beyond_the_tested_schedulers_are_rejected(tmp_path):
    from detectron2.solver import build_lr_scheduler
    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
    for name in SCHEDULERS:
        build_lr_scheduler(_cfg(tmp_path, name), optimizer)
    cfg = _cfg(tmp_path, "WarmupCosineLR")
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupPolyLR"
    with pytest.raises(ValueError, match="Unknown LR scheduler"):
        build_lr_scheduler(cfg, optimizer)


@pytest.mark.parametrize("scheduler", SCHEDULERS + ["torch CosineAnnealingLR"])
def test_scheduler_state_survives_resume(tmp_path, scheduler):
    trainer_cls = _tiny_trainer_class(scheduler)

    full = trainer_cls(_cfg(tmp_path / "full", scheduler))
    full.train()

    first = trainer_cls(_cfg(tmp_path / "resumed", scheduler))
    first.max_iter = 3  # stop after iteration 2, where CHECKPOINT_PERIOD 3 saved model_0000002.pth
    first.train()
    resumed = trainer_cls(_cfg(tmp_path / "resumed", scheduler))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 3
    resumed.train()

    assert len(set(full.lrs)) >= 4, full.lrs  # the LR changes along the schedule
    assert first.lrs + resumed.lrs == pytest.approx(full.lrs, rel=1e-12)
    torch.testing.assert_close(resumed._trainer.model.state_dict(), full._trainer.model.state_dict(), rtol=0, atol=0)
