"""What every ``datasets/prepare_*.py`` does: find the raw release, check it, convert in parallel with a
progress bar (skipping finished outputs, so reruns are cheap), and validate what was written.

Each prepare script describes its conversion as a list of jobs plus a ``convert(job)`` function and calls
:func:`run_conversion`. Scripts read from and write under ``$DETECTRON2_DATASETS`` (default ``./datasets``).
"""
import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from functools import partial
from multiprocessing import Pool
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

REPO_DATASETS = Path(__file__).resolve().parent  # class-name JSONs and shipped split lists live here


def dataset_root() -> Path:
    """The folder that holds every dataset: ``$DETECTRON2_DATASETS``, default ``./datasets``."""
    return Path(os.environ.get("DETECTRON2_DATASETS", "datasets"))


def class_names(json_name: str) -> List[str]:
    """The class-name list shipped beside the scripts, e.g. ``class_names("ade847.json")``."""
    return json.loads((REPO_DATASETS / json_name).read_text())


def parse_args(description: str, extra: Sequence[Tuple[str, dict]] = ()) -> argparse.Namespace:
    """The (optional) arguments every prepare script accepts, plus ``extra`` (flag, add_argument kwargs)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="parallel conversion processes (default: min(8, CPU cores))")
    parser.add_argument("--force", action="store_true", help="rewrite outputs that already exist")
    for flag, kwargs in extra:
        parser.add_argument(flag, **kwargs)
    return parser.parse_args()


def require(inputs: Sequence[Tuple[Path, str]]) -> None:
    """Exit with one message naming every missing input and where to get it.

    Args:
        inputs: (path, hint) pairs; ``hint`` says which download provides the path.
    """
    missing = [(p, hint) for p, hint in inputs if not Path(p).exists()]
    if missing:
        lines = [f"  missing: {p}\n           -> {hint}" for p, hint in missing[:10]]
        lines += [f"  ... and {len(missing) - 10} more"] if len(missing) > 10 else []
        sys.exit(f"Cannot prepare: the raw release is incomplete under DETECTRON2_DATASETS={dataset_root()}\n"
                 + "\n".join(lines) + "\nSee datasets/README.md for the expected layout.")


@dataclass
class LabelMapping:
    """Raw ids -> train ids as a lookup table (vectorised: ``train = table[raw]``).

    Raw ids not in ``mapping`` become ``fill``; those not in ``mapping`` nor ``expected_unmapped`` are
    counted as unexpected (a hint that the input is not the official release).
    """
    mapping: Dict[int, int]
    fill: int
    dtype: type = np.uint8
    expected_unmapped: Sequence[int] = ()
    size: int = 256  # raw ids are 0 .. size - 1 (256 for uint8 inputs, 65536 for uint16)

    def __post_init__(self):
        self.table = np.full(self.size, self.fill, dtype=self.dtype)
        self.table[np.fromiter(self.mapping.keys(), dtype=np.int64)] = list(self.mapping.values())
        self.known = np.zeros(self.size, dtype=bool)
        self.known[list(self.mapping.keys()) + list(self.expected_unmapped)] = True

    def __call__(self, raw: np.ndarray) -> Tuple[np.ndarray, int]:
        """Returns the train-id map (same shape) and the number of pixels with unexpected raw ids."""
        return self.table[raw], int(np.count_nonzero(~self.known[raw]))


def save_atomic(path: Path, image: Image.Image, **kwargs) -> None:
    """Save through a temporary file, so an interrupted run never leaves a truncated output behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial" + path.suffix)
    image.save(tmp, **kwargs)
    os.replace(tmp, path)


def save_label(path: Path, label: np.ndarray) -> None:
    """Write a label map: uint8 -> PNG, uint16 -> TIFF (uncompressed, readable by PIL and tifffile)."""
    assert label.dtype in (np.uint8, np.uint16), label.dtype
    save_atomic(path, Image.fromarray(label))


def read_label(path: Path) -> np.ndarray:
    """Read a single-channel label map: PNG/TIFF, or a Pascal Context ``.mat`` (its ``LabelMap``)."""
    if Path(path).suffix == ".mat":
        from scipy.io import loadmat

        return loadmat(path)["LabelMap"]
    with Image.open(path) as img:
        return np.array(img)


def remap_file(job: Tuple[Path, Path], mapping: LabelMapping) -> "Stats":
    """``job = (raw_label_path, output_path)``: writes ``mapping(raw)`` to the output path."""
    label, unexpected = mapping(read_label(job[0]))
    save_label(job[1], label)
    return Stats.of(label, unexpected)


def remap_jobs(raw_dir: Path, pattern: str, out_dir: Path, out_suffix: str) -> List[Tuple[Path, Path]]:
    """(raw, output) pairs for every file matching ``pattern`` in ``raw_dir``, output named by stem."""
    return [(p, out_dir / (p.stem + out_suffix)) for p in sorted(Path(raw_dir).glob(pattern))]


@dataclass
class LabelSpec:
    """What a converted label set must look like."""
    num_classes: int  # valid train ids are 0 .. num_classes - 1
    ignore: int  # the one other value allowed
    dtype: type  # np.uint8 (PNG) or np.uint16 (TIFF)


@dataclass
class Stats:
    """Per-job result of ``convert``: label values written and raw pixels outside the known ids."""
    values: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    unexpected_pixels: int = 0

    @classmethod
    def of(cls, label: np.ndarray, unexpected_pixels: int = 0) -> "Stats":
        """Stats of one written label map."""
        return cls(np.unique(label).astype(np.int64), int(unexpected_pixels))


@dataclass
class Conversion:
    """One output folder produced from a list of jobs."""
    name: str  # e.g. "A-847 validation labels"
    jobs: list  # anything picklable that ``convert`` understands
    convert: Callable  # convert(job) -> Stats; writes the outputs of one job
    outputs: Callable  # outputs(job) -> list of output paths of that job
    labels: Optional[LabelSpec] = None  # None: nothing to validate (e.g. image copies only)
    label_output: int = 0  # which of ``outputs(job)`` is the label map to validate
    official_count: Optional[int] = None  # size of the official split, for a warning on mismatch


def remap_conversion(name: str, jobs: List[Tuple[Path, Path]], mapping: LabelMapping, labels: LabelSpec,
                     official_count: Optional[int] = None) -> Conversion:
    """A conversion that maps each raw label file of ``jobs`` (see :func:`remap_jobs`) through ``mapping``."""
    return Conversion(name, jobs, partial(remap_file, mapping=mapping), outputs=lambda job: [job[1]],
                      labels=labels, official_count=official_count)


def _run(conversion: Conversion, workers: int, force: bool) -> Stats:
    todo = [j for j in conversion.jobs if force or not all(p.exists() for p in conversion.outputs(j))]
    skipped = len(conversion.jobs) - len(todo)
    total = Stats()
    desc = conversion.name + (f" ({skipped} done before)" if skipped else "")
    values = [total.values]
    if workers > 1 and len(todo) > 1:
        with Pool(workers) as pool:
            chunk = max(1, min(64, len(todo) // (4 * workers)))
            results = pool.imap_unordered(conversion.convert, todo, chunksize=chunk)
            for stats in tqdm(results, total=len(todo), desc=desc, unit="img"):
                values.append(stats.values)
                total.unexpected_pixels += stats.unexpected_pixels
    else:
        for job in tqdm(todo, desc=desc, unit="img"):
            stats = conversion.convert(job)
            values.append(stats.values)
            total.unexpected_pixels += stats.unexpected_pixels
    total.values = np.unique(np.concatenate(values))
    return total


def _validate(conversion: Conversion, stats: Stats, sample: int = 50) -> List[str]:
    """Outputs exist, label values are in range (in memory and re-read from disk). Returns errors."""
    errors = []
    outputs = [conversion.outputs(j) for j in conversion.jobs]
    missing = [p for paths in outputs for p in paths if not p.exists()]
    if missing:
        errors.append(f"{len(missing)} outputs were not written, e.g. {missing[0]}")
    spec = conversion.labels
    if spec is None:
        return errors
    rng = np.random.default_rng(0)
    picks = rng.choice(len(outputs), size=min(sample, len(outputs)), replace=False) if outputs else []
    on_disk = [stats.values]
    for i in picks:
        path = outputs[i][conversion.label_output]
        if path.exists():
            label = read_label(path)
            if label.dtype != spec.dtype:
                errors.append(f"{path} has dtype {label.dtype}, expected {np.dtype(spec.dtype).name}")
            on_disk.append(np.unique(label).astype(np.int64))
    values = np.unique(np.concatenate(on_disk))
    bad = values[(values >= spec.num_classes) & (values != spec.ignore)]
    if len(bad):
        errors.append(f"label values {bad[:10].tolist()} are outside 0..{spec.num_classes - 1} "
                      f"and not the ignore value {spec.ignore}")
    present = values[values < spec.num_classes]
    print(f"  {conversion.name}: {len(outputs)} images, {len(present)} of {spec.num_classes} classes "
          f"present in the labels checked, ignore value {spec.ignore}")
    return errors


def run_conversion(conversions: Sequence[Conversion], args: argparse.Namespace) -> None:
    """Run every conversion, then validate; exit non-zero with the reasons if anything is wrong."""
    errors = []
    for conversion in conversions:
        if not conversion.jobs:
            errors.append(f"{conversion.name}: nothing to convert (no input files found)")
            continue
        stats = _run(conversion, args.workers, args.force)
        if stats.unexpected_pixels:
            print(f"  warning: {conversion.name}: {stats.unexpected_pixels} pixels had raw ids outside the "
                  "known class ids; they were set to the ignore value. Is this the official release?")
        errors += [f"{conversion.name}: {e}" for e in _validate(conversion, stats)]
        if conversion.official_count and len(conversion.jobs) != conversion.official_count:
            print(f"  note: {conversion.name}: {len(conversion.jobs)} images, the official split has "
                  f"{conversion.official_count}; the benchmark numbers assume the full split.")
    if errors:
        sys.exit("Preparation failed:\n  " + "\n  ".join(errors))
    print("done; outputs are under", dataset_root())
