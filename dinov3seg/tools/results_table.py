"""Helper of eval.sh: which benchmarks have data, and the final results table.

    python -m dinov3seg.tools.results_table check OUTDIR    # prints the benchmarks whose data is prepared;
                                                         # writes OUTDIR/eval/<name>/MISSING for the others
    python -m dinov3seg.tools.results_table collect OUTDIR  # OUTDIR/results.md + results.json from
                                                         # OUTDIR/eval/<name>/eval_results.json; exit 1 if
                                                         # any benchmark is missing or failed

$EVAL_DATASETS (registered names, separated by spaces or commas) replaces the six benchmarks, e.g. with your
own datasets registered through $DINOV3SEG_DATASETS; rows of datasets without a paper figure leave it empty.
"""
import argparse
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional

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


def collect_rows(outdir: Path) -> List[dict]:
    """One row per benchmark: ours, the paper's mIoU, the difference, status and a note."""
    rows = []
    for name in evaluated_datasets():
        dataset = BENCHMARKS.get(name)
        folder = outdir / "eval" / name
        row = dict(benchmark=dataset.label if dataset else name, dataset=name, mIoU=None,
                   paper_mIoU=dataset.paper_miou if dataset else None, diff=None)
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
                row["diff"] = round(row["mIoU"] - dataset.paper_miou, 2)
        rows.append(row)
    return rows


def _cell(value, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def to_markdown(rows: List[dict], average: dict) -> str:
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
    return "\n".join(lines) + "\n"


def collect(outdir: Path) -> int:
    rows = collect_rows(outdir)
    paper = [r for r in rows if r["paper_mIoU"] is not None]
    complete = all(r["mIoU"] is not None for r in paper)
    average = dict(count=len(paper),
                   mIoU=round(sum(r["mIoU"] for r in paper) / len(paper), 2) if complete and paper else None,
                   paper_mIoU=round(sum(r["paper_mIoU"] for r in paper) / len(paper), 2) if paper else None)
    (outdir / "results.json").write_text(json.dumps(dict(benchmarks=rows, average=average), indent=2) + "\n")
    table = to_markdown(rows, average)
    (outdir / "results.md").write_text(f"# Results of {outdir}\n\n" + table)
    print(table)
    bad = [r for r in rows if r["status"] != "ok"]
    for r in bad:
        print(f"{r['benchmark']} ({r['dataset']}) {r['status']}: {r['note']}", file=sys.stderr)
    print(f"wrote {outdir / 'results.md'} and {outdir / 'results.json'}")
    return 1 if bad else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("command", choices=["check", "collect"])
    parser.add_argument("outdir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "check":
        check(args.outdir)
        return 0
    return collect(args.outdir)


if __name__ == "__main__":
    sys.exit(main())
