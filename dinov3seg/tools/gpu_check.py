"""One-shot GPU check (issue 12): the real architecture with random weights on one GPU, figures as JSON + a table.

    python -m dinov3seg.tools.gpu_check [--config-file configs/vitl_384.yaml] [--json OUT] [--tiny] [--skip-tests]

Parts, each reported as measured, skipped (with the reason) or failed (with the error; the others still run):
  inference   one 512x512 image at the paper setting (LGA canvas 640, 5 views of 384, text cached): seconds per
              image (median of 3 after 2 warm-ups) and peak memory, bf16 and fp32, at 150 classes, at 847 classes
              and at 2,000 classes, both with the protocol's top-256 pruning per view (MODEL.DINOV3SEG.CLASS_PAD_LEN
              256, as eval.sh runs A-847);
  training    seconds per iteration (median of 5 after 2 warm-ups) and peak memory, batch 4 of 384 crops, bf16,
              the training vocabulary (COCO-Stuff 171), AdamW over the trainable parameters;
  agreement   bf16 vs fp32 view logits of the same views: max |difference| and per-pixel argmax agreement;
  ddp         one training step under DistributedDataParallel with the NCCL backend, 1 process (CUDA only);
  cuda_tests  ``pytest -m cuda`` (CUDA only).
Without CUDA it says so, skips the CUDA-only parts and runs the rest on the CPU (``--tiny`` shrinks them to the
quickstart config, 3 and 5 classes, batch 2, 1 timed run: the suite's test of this tool).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from ..config import get_dinov3seg_cfg
from ..modeling.head.head import PRUNED_LOGIT
from . import benchmark as bench

REPO = Path(__file__).resolve().parents[2]
PAPER = {"seconds_per_image_gpu": 0.37, "gflops_per_image": 4500.0}


def set_precision(model, precision: str) -> None:
    """Switch a built DINOv3Seg between "fp32" and "bf16" (forced)."""
    model.precision = precision
    model._picked_precision.clear()


def inference(model, device, sizes: dict, class_counts) -> Dict[str, dict]:
    image = bench.random_image(sizes["image"], sizes["image"], device)
    rows = {}
    for classes in class_counts:
        names = bench.class_names(classes)
        model.set_vocabulary(names)
        bench.encode_vocabulary(model, names, device)
        for precision in ("bf16", "fp32"):
            set_precision(model, precision)
            m = bench.measure(model, image, device, sizes["runs"], sizes["warmup"], count_flops=False)
            rows[f"{classes}_{precision}"] = {
                "classes": classes, "precision": precision, "pad_len": model.sem_seg_head.pad_len,
                "seconds_per_image": m["seconds"], "peak_memory_bytes": m["peak_memory_bytes"]}
    return rows


def training(model, device, sizes: dict) -> dict:
    set_precision(model, "bf16")
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = bench.training_batch(sizes["batch"], sizes["crop"], len(model.train_class_names), device)
    for _ in range(sizes["warmup"]):
        bench.train_step(model, optimizer, batch)
    sync, times = bench._sync(device), []
    with bench.PeakMemory(device) as memory:
        for _ in range(sizes["train_runs"]):
            sync()
            t0 = time.perf_counter()
            loss = bench.train_step(model, optimizer, batch)
            sync()
            times.append(time.perf_counter() - t0)
    model.eval()
    return {"precision": "bf16", "batch": sizes["batch"], "crop": sizes["crop"],
            "classes": len(model.train_class_names), "seconds_per_iter": statistics.median(times),
            "peak_memory_bytes": memory.peak, "loss": loss}


def agreement(model, device, sizes: dict) -> dict:
    model.set_vocabulary(bench.class_names(sizes["agreement_classes"]))
    image = bench.random_image(sizes["image"], sizes["image"], device)
    views = model.lga.make_views((image - model.pixel_mean) / model.pixel_std)[0]
    logits = {}
    with torch.inference_mode():
        text = model._text(model.test_class_names)
        for precision in ("fp32", "bf16"):
            set_precision(model, precision)
            logits[precision] = model._segment_views_autocast(views, text)
    # Beyond CLASS_PAD_LEN classes each precision may prune other classes (logit PRUNED_LOGIT): compare the
    # logits that both kept, and report how often the kept sets differ.
    kept = (logits["bf16"] != PRUNED_LOGIT) & (logits["fp32"] != PRUNED_LOGIT)
    diff = (logits["bf16"] - logits["fp32"]).abs()[kept]
    same = (logits["bf16"].argmax(1) == logits["fp32"].argmax(1)).float().mean()
    pruned_differently = ((logits["bf16"] == PRUNED_LOGIT) != (logits["fp32"] == PRUNED_LOGIT)).flatten(2).any(-1)
    return {"views": views.shape[0], "classes": sizes["agreement_classes"], "max_abs_logit_diff": float(diff.max()),
            "mean_abs_logit_diff": float(diff.mean()), "argmax_agreement": float(same),
            "classes_pruned_differently": float(pruned_differently.float().mean())}


def ddp_step(cfg, device, sizes: dict) -> dict:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=device)
    try:
        model = bench.build_model(cfg, device)
        set_precision(model, "bf16")
        model.train()
        ddp = DistributedDataParallel(model, device_ids=[device.index or 0])
        optimizer = torch.optim.AdamW([p for p in ddp.parameters() if p.requires_grad], lr=1e-4)
        batch = bench.training_batch(sizes["batch"], sizes["crop"], len(model.train_class_names), device)
        loss = bench.train_step(ddp, optimizer, batch)
        torch.cuda.synchronize(device)
        return {"backend": dist.get_backend(), "world_size": dist.get_world_size(), "loss": loss}
    finally:
        dist.destroy_process_group()


def cuda_tests() -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests"]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    summary = (run.stdout.strip().splitlines() or [""])[-1]
    if run.returncode not in (0, 5):  # 5: no test selected
        raise RuntimeError(f"pytest -m cuda failed: {summary}\n{run.stdout[-3000:]}")
    return {"summary": summary, "returncode": run.returncode}


def run_part(name: str, fn: Callable[[], dict], results: dict, skip: str = "") -> None:
    if skip:
        results[name] = {"status": "skipped", "reason": skip}
        print(f"[gpu_check] {name}: skipped ({skip})", flush=True)
        return
    print(f"[gpu_check] {name} ...", flush=True)
    t0 = time.perf_counter()
    try:
        results[name] = {"status": "ok", **fn()}
    except Exception as e:  # one broken part must not hide the others' figures
        results[name] = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                         "traceback": traceback.format_exc()[-4000:]}
    results[name]["wall_seconds"] = time.perf_counter() - t0
    print(f"[gpu_check] {name}: {results[name]['status']} ({results[name]['wall_seconds']:.1f} s)", flush=True)


def environment(device) -> dict:
    import numpy

    env = {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": numpy.__version__,
           "cuda": torch.cuda.is_available(), "device": bench.device_description(device)}
    if device.type == "cuda":
        env.update(bf16_supported=torch.cuda.is_bf16_supported(), cuda_version=torch.version.cuda,
                   memory_bytes=torch.cuda.get_device_properties(device).total_memory)
    return env


def check(cfg, device, tiny: bool, skip_tests: bool) -> dict:
    cuda = device.type == "cuda"
    no_cuda = "" if cuda else "no CUDA device"
    sizes = (dict(image=96, runs=1, warmup=0, batch=2, crop=cfg.MODEL.DINOV3SEG.VIEW_SIZE, train_runs=1,
                  agreement_classes=5)
             if tiny else dict(image=512, runs=3, warmup=2 if cuda else 0, batch=4,
                               crop=cfg.MODEL.DINOV3SEG.VIEW_SIZE, train_runs=5 if cuda else 1, agreement_classes=150))
    class_counts = (3,) if tiny else (150, 847, 2000)
    results = {"environment": environment(device), "sizes": sizes, "paper": PAPER}
    print(f"[gpu_check] {results['environment']}" + ("" if cuda else ": no CUDA device, so the CUDA parts "
                                                      "(ddp, cuda_tests) are skipped and the rest runs on the CPU"))
    torch.manual_seed(0)
    model = bench.build_model(cfg, device)
    run_part("inference", lambda: {"rows": inference(model, device, sizes, class_counts)}, results)
    run_part("training", lambda: training(model, device, sizes), results)
    run_part("agreement", lambda: agreement(model, device, sizes), results)
    model = None  # noqa: F841  (frees the weights before the DDP part builds its own model)
    run_part("ddp", lambda: ddp_step(cfg, device, sizes), results, skip=no_cuda)
    run_part("cuda_tests", cuda_tests, results, skip=no_cuda or ("--skip-tests" if skip_tests else ""))
    return results


def format_table(r: dict) -> str:
    gib = 2**30
    lines = [f"dinov3seg GPU check on {r['environment']['device']} (torch {r['environment']['torch']})",
             f"{'part':<34}{'seconds':>10}{'peak GiB':>10}  note"]
    inf = r["inference"]
    if inf["status"] == "ok":
        for row in inf["rows"].values():
            note = f"top-{row['pad_len']} per view" if 0 < row["pad_len"] < row["classes"] else ""
            lines.append(f"{'inference ' + str(row['classes']) + ' cls ' + row['precision']:<34}"
                         f"{row['seconds_per_image']:>10.3f}{row['peak_memory_bytes'] / gib:>10.2f}  {note}")
    tr = r["training"]
    if tr["status"] == "ok":
        lines.append(f"{'training b' + str(tr['batch']) + ' ' + str(tr['crop']) + ' bf16 (s/iter)':<34}"
                     f"{tr['seconds_per_iter']:>10.3f}{tr['peak_memory_bytes'] / gib:>10.2f}  loss {tr['loss']:.3f}")
    ag = r["agreement"]
    if ag["status"] == "ok":
        lines.append(f"bf16 vs fp32 logits: max |diff| {ag['max_abs_logit_diff']:.3e}, argmax agreement "
                     f"{100 * ag['argmax_agreement']:.2f} % ({ag['views']} views, {ag['classes']} classes)")
    for name in ("inference", "training", "agreement", "ddp", "cuda_tests"):
        part = r[name]
        detail = {"ok": "ok", "skipped": f"skipped: {part.get('reason')}", "failed": f"FAILED: {part.get('error')}"}
        extra = f" ({part['summary']})" if name == "cuda_tests" and part["status"] == "ok" else ""
        lines.append(f"{name:<12}{detail[part['status']]}{extra}")
    lines.append(f"paper: {PAPER['seconds_per_image_gpu']} s/image on a GPU, {PAPER['gflops_per_image']:,.0f} GFLOPs")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=str(REPO / "configs/vitl_384.yaml"))
    parser.add_argument("--json", default="gpu_check.json")
    parser.add_argument("--tiny", action="store_true", help="quickstart-sized smoke run (the suite's test)")
    parser.add_argument("--skip-tests", action="store_true", help="do not run pytest -m cuda")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    config = str(REPO / "configs/quickstart.yaml") if args.tiny else args.config_file
    cfg = get_dinov3seg_cfg(config, ["TEST.LGA.CANVAS", "160", "TEST.LGA.STRIDE", "32"] * args.tiny + args.opts)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = check(cfg, device, args.tiny, args.skip_tests)
    results["config"] = config
    print(format_table(results), flush=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    print(f"[gpu_check] JSON: {args.json}")
    return 1 if any(isinstance(v, dict) and v.get("status") == "failed" for v in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
