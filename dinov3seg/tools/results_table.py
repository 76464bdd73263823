"""Helper of eval.sh: which benchmarks have data, and the final results table.

    python -m dinov3seg.tools.results_table check OUTDIR    # prints the benchmarks whose data is prepared;
                                                         # writes OUTDIR/eval/<name>/MISSING for the others
    python -m dinov3seg.tools.results_table collect OUTDIR [--model META_ARCH]
                                                         # OUTDIR/results.md + results.json from
                                                         # OUTDIR/eval/<name>/eval_results.json; exit 1 if
                                                         # any benchmark is missing or failed. The "Paper"
                                                         # column holds META_ARCH's published figures
                                                         # (PUBLISHED_MIOU), else the dinov3.seg paper's
    python -m dinov3seg.tools.results_table model CONFIG [OPTS...]
                                                         # prints "<META_ARCHITECTURE> trained" or
                                                         # "<META_ARCHITECTURE> training-free"

$EVAL_DATASETS (registered names, separated by spaces or commas) replaces the six benchmarks, e.g. with your
own datasets registered through $DINOV3SEG_DATASETS; rows of datasets without a published figure leave it empty.
"""
import argparse
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from detectron2.data import DatasetCatalog

from dinov3seg.data.datasets import BENCHMARKS, check_prepared

EXTRA_METRICS = ("mIoU_seen", "mIoU_unseen", "hIoU")


def evaluated_datasets() -> List[str]:
    """$EVAL_DATASETS if set, else the six benchmarks (+ PAS-20b), in table order."""
    names = [n for n in re.split(r"[\s,]+", os.environ.get("EVAL_DATASETS", "")) if n]
    return names or list(BENCHMARKS)


def _not_registered(name: str) -> Optional[str]:
    if name in DatasetCatalog.list():
        return None
    return (f"dataset '{name}' (in EVAL_DATASETS) is not registered: register it in a Python file named by "
            "$DINOV3SEG_DATASETS (see README, 'Your own dataset'), or fix the name")


def check(outdir: Path) -> None:
    for name in evaluated_datasets():
        dataset = BENCHMARKS.get(name)
        folder = outdir / "eval" / name
        folder.mkdir(parents=True, exist_ok=True)
        message = check_prepared(dataset) if dataset else _not_registered(name)
        if message:
            (folder / "MISSING").write_text(message + "\n")
            print(f"skipping {dataset.label if dataset else name}: {message}", file=sys.stderr)
        else:
            (folder / "MISSING").unlink(missing_ok=True)
            print(name)


def _sem_seg_metrics(results: dict, name: str) -> Optional[Dict[str, float]]:
    """The "sem_seg" dict of an eval_results.json ({name: {"sem_seg": ...}} or, for one dataset, {"sem_seg": ...})."""
    results = results.get(name, results)
    return results.get("sem_seg") if isinstance(results, dict) else None


def _number(value) -> Optional[float]:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(float(value), 2)


PAPER_SOURCE = "dinov3.seg paper, Table 1"


def reference_figures(meta_arch: Optional[str] = None) -> Tuple[Dict[str, float], str]:
    """(published mIoU by dataset name, its source) to print beside ours: the META_ARCHITECTURE's own
    ``PUBLISHED_MIOU`` / ``PUBLISHED_SOURCE`` if it has them, else the dinov3.seg paper's figures."""
    from detectron2.modeling import META_ARCH_REGISTRY

    import dinov3seg.modeling  # noqa: F401  (registers the meta-architectures)

    model = META_ARCH_REGISTRY.get(meta_arch) if meta_arch else None
    if getattr(model, "PUBLISHED_MIOU", None) is not None:
        return dict(model.PUBLISHED_MIOU), model.PUBLISHED_SOURCE
    return {name: d.paper_miou for name, d in BENCHMARKS.items() if d.paper_miou is not None}, PAPER_SOURCE


def collect_rows(outdir: Path, reference: Optional[Dict[str, float]] = None) -> List[dict]:
    """One row per benchmark: ours, the published mIoU (``reference``, default the dinov3.seg paper's), the
    difference, status and a note."""
    reference = reference_figures()[0] if reference is None else reference
    rows = []
    for name in evaluated_datasets():
        dataset = BENCHMARKS.get(name)
        folder = outdir / "eval" / name
        row = dict(benchmark=dataset.label if dataset else name, dataset=name, mIoU=None,
                   paper_mIoU=reference.get(name), diff=None)
        metrics = None
        if (folder / "eval_results.json").is_file():
            metrics = _sem_seg_metrics(json.loads((folder / "eval_results.json").read_text()), name)
        if (folder / "MISSING").is_file():
            note = f"data not prepared: run `{dataset.prepare_command}`" if dataset else "not registered"
            row.update(status="missing", note=note)
        elif metrics is None or "mIoU" not in metrics:
            code = (folder / "exit_code").read_text().strip() if (folder / "exit_code").is_file() else "?"
            row.update(status="failed", note=f"exit code {code}; see {folder / 'eval.log'}")
        else:
            row.update(status="ok", note="", mIoU=_number(metrics["mIoU"]))
            row.update({k: _number(metrics[k]) for k in EXTRA_METRICS if k in metrics})
            if row["paper_mIoU"] is not None and row["mIoU"] is not None:
                row["diff"] = round(row["mIoU"] - row["paper_mIoU"], 2)
        rows.append(row)
    return rows


def _cell(value, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def to_markdown(rows: List[dict], average: dict, source: str = PAPER_SOURCE) -> str:
    extra = [k for k in EXTRA_METRICS if any(k in r for r in rows)]
    header = ["Benchmark", "Dataset", "mIoU", "Paper", "Δ"] + [k.replace("_", " ") for k in extra] + ["Status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["benchmark"], f"`{r['dataset']}`", _cell(r["mIoU"]), _cell(r["paper_mIoU"]),
                 _cell(r["diff"], signed=True)] + [_cell(r.get(k)) for k in extra]
        cells.append(r["status"] + (f": {r['note']}" if r["note"] else ""))
        lines.append("| " + " | ".join(cells) + " |")
    if not average["count"]:
        return "\n".join(lines) + "\n"
    lines.append("")
    lines.append(f"Average over the {average['count']} benchmarks with a paper number: ours "
                 f"{_cell(average['mIoU'])}, paper {_cell(average['paper_mIoU'])}.")
    lines.append(f"Paper column: {source}.")
    return "\n".join(lines) + "\n"


def collect(outdir: Path, meta_arch: Optional[str] = None) -> int:
    reference, source = reference_figures(meta_arch)
    rows = collect_rows(outdir, reference)
    paper = [r for r in rows if r["paper_mIoU"] is not None]
    complete = all(r["mIoU"] is not None for r in paper)
    average = dict(count=len(paper),
                   mIoU=round(sum(r["mIoU"] for r in paper) / len(paper), 2) if complete and paper else None,
                   paper_mIoU=round(sum(r["paper_mIoU"] for r in paper) / len(paper), 2) if paper else None)
    (outdir / "results.json").write_text(
        json.dumps(dict(benchmarks=rows, average=average, paper_source=source), indent=2) + "\n")
    table = to_markdown(rows, average, source)
    (outdir / "results.md").write_text(f"# Results of {outdir}\n\n" + table)
    print(table)
    bad = [r for r in rows if r["status"] != "ok"]
    for r in bad:
        print(f"{r['benchmark']} ({r['dataset']}) {r['status']}: {r['note']}", file=sys.stderr)
    print(f"wrote {outdir / 'results.md'} and {outdir / 'results.json'}")
    return 1 if bad else 0


def model_kind(config_file: str, opts: List[str]) -> str:
    """"<META_ARCHITECTURE> trained" or "<META_ARCHITECTURE> training-free" for a config + overrides."""
    from dinov3seg.config import get_dinov3seg_cfg
    from dinov3seg.modeling.meta_arch_common import is_training_free

    cfg = get_dinov3seg_cfg(config_file, opts)
    return f"{cfg.MODEL.META_ARCHITECTURE} {'training-free' if is_training_free(cfg) else 'trained'}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("command", choices=["check", "collect", "model"])
    parser.add_argument("path", type=Path, help="OUTDIR (check, collect) or CONFIG (model)")
    parser.add_argument("--model", default=None, help="collect: the evaluated META_ARCHITECTURE")
    parser.add_argument("opts", nargs="*", help="model: config overrides (KEY VALUE ...)")
    args = parser.parse_args(argv)
    if args.opts and args.command != "model":
        parser.error(f"unexpected arguments {args.opts}")
    if args.command == "check":
        check(args.path)
        return 0
    if args.command == "model":
        print(model_kind(str(args.path), args.opts))
        return 0
    return collect(args.path, args.model)


if __name__ == "__main__":
    sys.exit(main())
