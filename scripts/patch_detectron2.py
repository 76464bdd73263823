"""The source changes our Detectron2 0.6 build makes (run by scripts/install_detectron2.sh).

    python scripts/patch_detectron2.py SDIST_DIR      # patch the unpacked pb1-detectron2-0.6 sdist
    python scripts/patch_detectron2.py --markdown     # the table in docs/install.md

Each entry replaces an exact string in one file of the upstream v0.6 sources (a whole word: ``np.int``
does not match ``np.int64``) and must match exactly ``count`` times, so a different sdist fails loudly
instead of being half-patched. They are fixes upstream Detectron2 made itself after 0.6: the renames for
numpy >= 1.24 / 2 and Pillow >= 10 (same behaviour), the ``pkg_resources`` import (setuptools 84 no longer
ships it), ``random.sample`` on a set (Python 3.11), the import of caffe2 that torch 2 dropped (optional upstream since 0.6), and the state that ``--resume`` lost: a torch 2
scheduler's and, with any scheduler, the optimizer's.
"""
import argparse
import re
import sys
from pathlib import Path
from typing import NamedTuple


class Patch(NamedTuple):
    path: str  # relative to the sdist root
    old: str
    new: str
    count: int  # exact number of occurrences of `old` in `path`
    why: str

    def pattern(self) -> "re.Pattern":
        """``old`` as a literal; when it ends in a name character, not followed by another one."""
        return re.compile(re.escape(self.old) + (r"(?!\w)" if re.match(r"\w", self.old[-1]) else ""))


_NUMPY = "numpy 1.24 removed the alias"
_LR = ("torch 2's own schedulers derive from `LRScheduler` (torch >= 2.0), not `_LRScheduler`: "
       "their state was silently lost on `--resume`")
_RUN_STEP = """    def run_step(self):
        self._trainer.iter = self.iter
        self._trainer.run_step()
"""
_TRAINER_STATE = """
    def state_dict(self):
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()  # optimizer (and AMP grad scaler) state
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        else:
            logging.getLogger(__name__).warning(
                "this checkpoint has no optimizer state (saved by an unpatched Detectron2 0.6): "
                "the optimizer starts afresh")
"""
_EXPORT_API = """try:
    from .api import *  # the Caffe2 / ONNX exporters
except ModuleNotFoundError as e:  # they need caffe2, which torch 2 no longer ships
    if e.name != "caffe2":
        raise
"""
PATCHES = (
    Patch("detectron2/data/build.py", "dtype=np.int", "dtype=int", 2, _NUMPY),
    Patch("detectron2/data/datasets/pascal_voc.py", "dtype=np.str", "dtype=str", 1, _NUMPY),
    Patch("detectron2/evaluation/pascal_voc_evaluation.py", "astype(np.bool)", "astype(bool)", 2,
          _NUMPY + " (one of the two is in a comment)"),
    Patch("detectron2/evaluation/sem_seg_evaluation.py", "dtype=np.int", "dtype=int", 2, _NUMPY),
    Patch("detectron2/evaluation/sem_seg_evaluation.py", "dtype=np.float", "dtype=float", 2, _NUMPY),
    Patch("detectron2/evaluation/sem_seg_evaluation.py", "astype(np.float)", "astype(float)", 3, _NUMPY),
    Patch("detectron2/structures/masks.py", "astype(np.bool)", "astype(bool)", 2, _NUMPY),
    Patch("detectron2/structures/masks.py", "dtype=np.bool", "dtype=bool", 1, _NUMPY),
    Patch("detectron2/utils/visualizer.py", "astype(np.bool)", "astype(bool)", 3, _NUMPY),
    Patch("detectron2/utils/video_visualizer.py", "dtype=np.bool", "dtype=bool", 1, _NUMPY),
    Patch("detectron2/layers/mask_ops.py", "np.array(mask, copy=False)", "np.asarray(mask)", 1,
          "numpy 2: `copy=False` raises when a copy is needed (here always: a PIL image)"),
    Patch("detectron2/data/transforms/transform.py", "interp=Image.LINEAR", "interp=Image.BILINEAR", 1,
          "Pillow 10 removed `Image.LINEAR`, an alias of `BILINEAR` (same value, 2)"),
    Patch("detectron2/model_zoo/model_zoo.py", "import pkg_resources\n", "", 1,
          "setuptools 84 (what pip installs today) no longer ships `pkg_resources`"),
    Patch("detectron2/model_zoo/model_zoo.py",
          'pkg_resources.resource_filename(\n        "detectron2.model_zoo", os.path.join("configs", config_path)\n    )',
          'os.path.join(os.path.dirname(__file__), "configs", config_path)', 1,
          "the configs are package data next to model_zoo.py (the wheel is never zipped)"),
    Patch("detectron2/data/common.py", "self._rng.sample(self._fallback_candidates, k=1)",
          "self._rng.sample(sorted(self._fallback_candidates), k=1)", 1,
          "Python 3.11: `random.sample` no longer accepts a set (reached when a mapper returns None)"),
    Patch("detectron2/engine/hooks.py", "isinstance(self.scheduler, torch.optim.lr_scheduler._LRScheduler)",
          "isinstance(self.scheduler, torch.optim.lr_scheduler.LRScheduler)", 2, _LR),
    Patch("detectron2/export/__init__.py", "from .api import *\n", _EXPORT_API, 1,
          "torch 2 no longer ships caffe2: `detectron2.export`, and with it `detectron2.utils.analysis` "
          "(fvcore's `FlopCountAnalysis`, `tools/analyze_model.py`), failed to import; only the Caffe2 "
          "exporters need it"),
    Patch("detectron2/engine/defaults.py", _RUN_STEP, _RUN_STEP + _TRAINER_STATE, 1,
          "0.6's DefaultTrainer left its SimpleTrainer's state out of checkpoints: `--resume` restarted the "
          "optimizer (AdamW moments, the LR of the first resumed iteration) and the AMP grad scaler"),
)


def apply(root: Path) -> None:
    """Apply every patch to the sources under ``root``; raise if any count differs."""
    for p in PATCHES:
        file = root / p.path
        text = file.read_text()
        text, found = p.pattern().subn(lambda _: p.new, text)
        if found != p.count:
            raise SystemExit(f"patch_detectron2: expected {p.count} x {p.old!r} in {p.path}, found {found}; "
                             "is this the pb1-detectron2 0.6 sdist?")
        file.write_text(text)
        short = [" ".join(x.split()) for x in (p.old, p.new)]
        print(f"  {p.path}: {p.count} x {short[0][:60]!r} -> {short[1][:60]!r}")


def markdown() -> str:
    """The patch list as a Markdown table (docs/install.md); inserted blocks follow it in full."""
    def cell(s):
        return "`" + " ".join(s.split()).replace("|", "\\|") + "`" if s.strip() else "(removed line)"

    rows = ["| file (under `detectron2/`) | from | to | times | why |", "|---|---|---|---|---|"]
    blocks = []
    for p in PATCHES:
        path = p.path.removeprefix("detectron2/")
        to = cell(p.new)
        if p.new.startswith(p.old) and "\n" in p.new[len(p.old):].strip():
            to = "the same, followed by the block below"
            blocks.append(f"Inserted in `{path}`:\n\n```python{p.new[len(p.old):].rstrip()}\n```")
        rows.append(f"| {path} | {cell(p.old)} | {to} | {p.count} | {p.why} |")
    return "\n\n".join(["\n".join(rows)] + blocks)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("sdist_dir", nargs="?", type=Path, help="unpacked pb1-detectron2-0.6 sdist")
    group.add_argument("--markdown", action="store_true", help="print the patch list as a Markdown table")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown())
    else:
        apply(args.sdist_dir)


if __name__ == "__main__":
    sys.exit(main())
