"""Peak memory and time of the head alone against the vocabulary size T (issue 5, item 3).

    # the full-size head (ViT-L/SAM-L shapes, random encoder outputs: one LGA batch of views)
    python -m dinov3seg.tools.vocab_benchmark --config-file configs/Base-DINOv3Seg.yaml

The head is what grows with T, and alone it fits a CPU at full size. For the whole model (encoders, LGA,
text) against T and image size use ``python -m dinov3seg.tools.benchmark --sweep``.

Options: ``--classes 20 150 847 2000``, ``--chunk 0 32`` (MODEL.DINOV3SEG.CLASS_CHUNK_SIZE values to
compare), ``--pad-len K`` (MODEL.DINOV3SEG.CLASS_PAD_LEN; >= T keeps every class), ``--views V`` (views per
batch; 5 = 2x2 windows + global), ``--device cpu|cuda``, ``--opts KEY VALUE ...``.

Peak memory is what the measured call adds on top of what was allocated before it: on CUDA
``torch.cuda.max_memory_allocated``; on the CPU the peak of malloc's bytes in use (``benchmark.PeakMemory``).
Every (T, chunk) point runs in a fresh subprocess. Weights are random: time and memory do not depend on them.
"""
import argparse
import json
import subprocess
import sys
import time

import torch

DEFAULT_CLASSES = (20, 150, 847, 2000)


def measure(fn, device: torch.device):
    """Run ``fn()`` once; returns (seconds, peak bytes added by the call: ``benchmark.PeakMemory``'s rule)."""
    from .benchmark import PeakMemory

    with PeakMemory(device) as memory:
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    return seconds, max(0, memory.above_model)


def setup_cfg(args, chunk: int):
    from dinov3seg.config import get_dinov3seg_cfg

    cfg = get_dinov3seg_cfg(args.config_file, args.opts)
    cfg.MODEL.DINOV3SEG.CLASS_CHUNK_SIZE = chunk
    if args.pad_len is not None:
        cfg.MODEL.DINOV3SEG.CLASS_PAD_LEN = args.pad_len
    cfg.MODEL.DEVICE = args.device
    return cfg


def run_head(args, num_classes: int, chunk: int) -> dict:
    """The head alone on one LGA batch of random encoder outputs."""
    from detectron2.modeling import build_sem_seg_head

    import dinov3seg  # noqa: F401  (registers the head)
    from dinov3seg.modeling.meta_arch import head_input_shape
    from dinov3seg.modeling.text_embeddings import load_prompt_templates

    cfg = setup_cfg(args, chunk)
    device = torch.device(args.device)
    shape = head_input_shape(cfg)
    head = build_sem_seg_head(cfg, shape).to(device).eval()
    grid = cfg.MODEL.DINOV3SEG.VIEW_SIZE // 16
    side = grid * 16 // shape["patches"].stride
    v = args.views
    patches = torch.randn(v, shape["patches"].channels, side, side, device=device)
    num_templates = len(load_prompt_templates(cfg.MODEL.DINOV3SEG.PROMPT_TEMPLATES))
    text = torch.nn.functional.normalize(
        torch.randn(num_classes, num_templates, shape["text"].channels, device=device), dim=-1
    )
    guidance = decoder_guidance = None
    if "guidance" in shape:
        guidance = torch.randn(v, shape["guidance"].channels, grid, grid, device=device)
        decoder_guidance = [
            torch.randn(v, shape["decoder_guidance"].channels, grid, grid, device=device)
            for _ in cfg.MODEL.SAM.DECODER_GUIDANCE
        ]
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda" and cfg.MODEL.DINOV3SEG.PRECISION == "bf16"
        else torch.autocast("cpu", enabled=False)
    )
    with torch.no_grad(), autocast:
        head(patches, text[:2], guidance, decoder_guidance)  # warm-up
        seconds, peak = measure(lambda: head(patches, text, guidance, decoder_guidance), device)
    return {"seconds": seconds, "peak": peak, "views": v}


def _worker(args) -> None:
    result = run_head(args, args.worker_classes, args.worker_chunk)
    print("RESULT " + json.dumps(result), flush=True)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--classes", type=int, nargs="+", default=list(DEFAULT_CLASSES))
    parser.add_argument("--chunk", type=int, nargs="+", default=[0, 32], help="CLASS_CHUNK_SIZE values")
    parser.add_argument("--pad-len", type=int, help="MODEL.DINOV3SEG.CLASS_PAD_LEN (default: the config's; "
                        ">= T keeps every class)")
    parser.add_argument("--views", type=int, default=5, help="views per batch")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="also write the table as JSON here")
    parser.add_argument("--worker-classes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-chunk", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.worker_classes is not None:
        _worker(args)
        return 0

    rows = []
    print(f"# vocab_benchmark {args.config_file} on {args.device} ({torch.get_num_threads()} threads)")
    header = "| T | chunk | views | seconds | peak MiB |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for num_classes in args.classes:
        for chunk in args.chunk:
            cmd = [sys.executable, "-m", "dinov3seg.tools.vocab_benchmark",
                   "--config-file", args.config_file, "--device", args.device,
                   "--views", str(args.views), "--worker-classes", str(num_classes), "--worker-chunk", str(chunk)]
            if args.pad_len is not None:
                cmd += ["--pad-len", str(args.pad_len)]
            if args.opts:
                cmd += ["--opts", *args.opts]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                print(f"| {num_classes} | {chunk} | failed: {' / '.join(tail)} |")
                rows.append({"classes": num_classes, "chunk": chunk, "error": "\n".join(tail)})
                continue
            r = json.loads(lines[-1][len("RESULT "):])
            r.update(classes=num_classes, chunk=chunk)
            rows.append(r)
            print(f"| {num_classes} | {chunk} | {r['views']} | {r['seconds']:.2f} | {_mib(r['peak'])} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": args.config_file, "device": args.device,
                       "pad_len": args.pad_len, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
