"""Write a weight file in Meta's layout (``.pth`` or ``.safetensors``) from what you have, and say what was checked.

    python -m dinov3seg.tools.convert_weights SOURCE OUTPUT.{pth,safetensors} [--config-file CFG] [--opts K V ...]

SOURCE is read as ``MODEL.*.WEIGHTS`` reads it (memory-mapped): a DINOv3 backbone in the Hugging Face layout (a
``save_pretrained`` folder, a hub-cache snapshot, sharded or not, or a ``model.safetensors``) is checked against the
config's MODEL.DINOV3 sizes, its keys are mapped to Meta's and the RoPE periods rebuilt as Meta's checkpoint holds
them (bf16-rounded). Any of the four encoder files in Meta's layout converts between ``.pth`` and ``.safetensors``,
and a training checkpoint (``model_*.pth``) is exported as the ``.safetensors`` ``MODEL.WEIGHTS`` also takes. The
result is loaded strictly into the component the config builds (sizes from ``--config-file``, ViT-L by default),
written, read back and compared tensor by tensor. Exit status 1 (with a one-line reason) when a check fails.
"""
import argparse
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import Tensor

from dinov3seg.checkpoint import CHECKPOINT_FORMAT, SAFETENSORS_FORMAT_KEY
from dinov3seg.config import get_dinov3seg_cfg
from dinov3seg.errors import InputError
from dinov3seg.modeling.encoders.dinov3 import DINOv3ViT
from dinov3seg.modeling.encoders.dinov3_weights import dinov3_state_dict
from dinov3seg.modeling.encoders.weights import META_LAYOUT, WEIGHT_SPECS, WeightFileError, read_weights

from .check_weights import CHECKS, human_size

OUTPUT_SUFFIXES = (".pth", ".safetensors")


def save_state_dict(state_dict: Dict[str, Tensor], output: Path, metadata: Optional[Dict[str, str]] = None) -> None:
    """``torch.save`` for ``.pth``; safetensors (tensors that share memory are cloned, as the format requires)."""
    if output.suffix == ".pth":
        torch.save(state_dict, output)
        return
    from safetensors.torch import save_file

    seen, tensors = set(), {}
    for key, value in state_dict.items():
        storage = (value.untyped_storage().data_ptr(), value.device)
        shared = storage in seen or not value.is_contiguous()
        tensors[key] = value.contiguous().clone() if shared else value
        seen.add(storage)
    save_file(tensors, str(output), metadata={"format": "pt", **(metadata or {})})


def _training_checkpoint(source: Path) -> Optional[dict]:
    """A dinov3seg training checkpoint's dict, or None for any other file."""
    if source.is_dir() or source.suffix != ".pth":
        return None
    data = torch.load(source, map_location="cpu", weights_only=True, mmap=True)
    return data if isinstance(data, dict) and isinstance(data.get("model"), dict) and "format" in data else None


def _component(cfg, source: Path):
    """(spec name, config key, WeightSource, loader) of the encoder file ``source`` is, by its keys."""
    errors = []
    for key, spec_name, enabled, loader in CHECKS:
        name = spec_name(cfg)
        try:
            return name, key, read_weights(str(source), **WEIGHT_SPECS[name], check_hash="warn"), loader
        except WeightFileError as err:
            if "does not look like" not in str(err):
                raise
            errors.append(name)
    raise WeightFileError(f"'{source}' is none of the encoder files ({', '.join(errors)}) nor a dinov3seg "
                          f"training checkpoint (a dict with 'model' and 'format')")


def convert(source: Path, output: Path, cfg) -> List[str]:
    """Convert ``source`` to ``output`` (see the module doc); returns the report lines."""
    if output.suffix not in OUTPUT_SUFFIXES:
        raise InputError(f"OUTPUT must end in {' or '.join(OUTPUT_SUFFIXES)}, got '{output}'")
    if output.resolve() == source.resolve():
        raise InputError(f"OUTPUT '{output}' is SOURCE: write the converted file elsewhere")
    tmp = output.with_name(f".{output.stem}.tmp{os.getpid()}{output.suffix}")  # renamed into place once checked
    try:
        report = _convert(source, tmp, cfg)
        os.replace(tmp, output)
    finally:
        if tmp.exists():
            tmp.unlink()
    return [line.replace(str(tmp), str(output)) for line in report]


def _convert(source: Path, output: Path, cfg) -> List[str]:
    report = []
    checkpoint = _training_checkpoint(source)
    if checkpoint is not None:
        if output.suffix != ".safetensors":
            raise InputError("a training checkpoint converts to .safetensors only (its .pth is what train_net wrote)")
        if checkpoint["format"] != CHECKPOINT_FORMAT:
            raise InputError(f"'{source}' has checkpoint format {checkpoint['format']}; this dinov3seg reads "
                             f"{CHECKPOINT_FORMAT}")
        state = checkpoint["model"]
        report.append(f"read:    {source} (dinov3seg training checkpoint, format {checkpoint['format']}, "
                      f"{len(state)} trainable tensors; optimizer and scheduler state left out)")
        save_state_dict(state, output, {SAFETENSORS_FORMAT_KEY: str(checkpoint["format"])})
        key, layout = "MODEL.WEIGHTS", "dinov3seg"
    else:
        name, key, weights, loader = _component(cfg, source)
        report.append(f"read:    {source} ({weights.container}, {weights.layout} keys, {len(weights.state_dict)} "
                      f"tensors, {human_size(weights.size)}; hash {weights.hash})")
        if name == "dinov3":
            c = cfg.MODEL.DINOV3
            with torch.device("meta"):
                backbone = DINOv3ViT(embed_dim=c.EMBED_DIM, depth=c.DEPTH, num_heads=c.NUM_HEADS)
            state = dinov3_state_dict(weights, backbone)
            if weights.layout != META_LAYOUT:
                config = "config.json" if weights.hf_config is not None else "the sizes the keys show"
                report.append(f"checked: {config} against MODEL.DINOV3 (embed_dim {c.EMBED_DIM}, depth {c.DEPTH}, "
                              f"heads {c.NUM_HEADS}, {backbone.n_storage_tokens} registers, patch "
                              f"{backbone.patch_size}); every key of the file mapped, none left over")
                report += [f"did:     {note}" for note in weights.notes]
        else:
            state = weights.state_dict
        report.append(f"checked: {loader(cfg, weights)}")
        layout = META_LAYOUT if name == "dinov3" else weights.layout
        save_state_dict(state, output, {"dinov3seg_layout": layout})
    written = read_weights(str(output), config_key="OUTPUT", expected_name=output.name, request_url="-",
                           check_hash="off")
    unequal = sorted(k for k in state if k not in written.state_dict or not torch.equal(state[k],
                                                                                         written.state_dict[k]))
    extra = sorted(set(written.state_dict) - set(state))
    if unequal or extra:
        raise WeightFileError(f"'{output}' read back differs: {unequal[:5]} unequal or missing, {extra[:5]} extra")
    report.append(f"wrote:   {output} ({written.container}, {layout} keys, {len(state)} tensors, "
                  f"{human_size(written.size)}); read back, every tensor equal")
    report.append(f"use it:  {key} {output}")
    return report


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="file or Hugging Face folder to convert")
    parser.add_argument("output", type=Path, help="the file to write: .pth or .safetensors")
    parser.add_argument("--config-file", default="configs/vitl_384.yaml", help="sizes to check against")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    try:
        if not args.source.exists():
            raise InputError(f"SOURCE '{args.source}' does not exist")
        for line in convert(args.source, args.output, get_dinov3seg_cfg(args.config_file, args.opts)):
            print(line, flush=True)
    except (InputError, KeyError, ValueError, RuntimeError) as err:  # nothing was written
        print(f"convert_weights: {str(err).splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
