"""Reading the user-supplied encoder weights: clear errors for missing, unreadable or wrong files.

Each component's file is described by ``WEIGHT_SPECS[name]`` (config key, released file name(s), where to request
it, keys that identify each key layout it comes in). ``find_weights`` turns a config value into a path: a path is
taken as it is; a bare file name is looked up in the weights folder (``MODEL.ENCODER_WEIGHTS_DIR``,
``$DINOV3SEG_WEIGHTS``, ``./weights``). ``read_weights`` reads Meta's ``.pth``, a ``.safetensors`` file or a Hugging
Face folder (``config.json`` + one or sharded ``model*.safetensors``, or a hub-cache snapshot) memory-mapped, so
the tensors are views of the file (no second copy in memory), and says which container and key layout it found.
``load_strict`` loads a state dict into a module, reporting every missing / unexpected / mis-shaped key at once;
into a module built on the meta device it assigns the file's tensors instead of copying them.
"""
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ...errors import InputError

__all__ = ["WEIGHT_SPECS", "WEIGHTS_DIR_ENV", "WeightFileError", "WeightSource", "find_weights", "hash_suffix",
           "fit_dtypes", "load_strict", "load_weight_file", "on_meta", "read_weights", "sha256_of", "weight_path"]

DINOV3_URL = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"
DINOV3_HF_URL = "https://huggingface.co/facebook/dinov3-vitl16-pretrain-lvd1689m"
ANYUP_URL = "https://github.com/wimmerth/anyup/releases"
SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"


def _released(*names: str) -> Tuple[str, ...]:
    """The released ``.pth`` names, then the ``.safetensors`` twins ``convert_weights`` writes (same stem, and the
    stem without its ``-<hash>`` suffix)."""
    twins = [n[: -len(".pth")] + ".safetensors" for n in names]
    twins += [re.sub(r"-[0-9a-f]{8,}$", "", n[: -len(".pth")]) + ".safetensors" for n in names]
    return tuple(dict.fromkeys([*names, *twins]))


WEIGHT_SPECS: Dict[str, dict] = {
    "dinov3": dict(config_key="MODEL.DINOV3.WEIGHTS", expected_name="dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth",
                   request_url=DINOV3_URL, also_at=f"the Hugging Face copy {DINOV3_HF_URL}",
                   expect_keys=("cls_token", "storage_tokens", "blocks.0."),
                   other_layouts={"Hugging Face": ("embeddings.cls_token", "embeddings.register_tokens",
                                                   "embeddings.patch_embeddings.")},
                   file_names=_released("dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth") + (
                       "dinov3-vitl16-pretrain-lvd1689m",  # hf download ... --local-dir dinov3-vitl16-pretrain-lvd1689m
                       "models--facebook--dinov3-vitl16-pretrain-lvd1689m")),  # the Hugging Face hub cache
    "dinotxt": dict(config_key="MODEL.DINOTXT.WEIGHTS",
                    expected_name="dinov3_vitl16_dinotxt_vision_head_and_text_encoder-a442d8f5.pth",
                    request_url=DINOV3_URL, expect_keys=("visual_model.head.", "text_model."),
                    file_names=_released("dinov3_vitl16_dinotxt_vision_head_and_text_encoder-a442d8f5.pth")),
    "anyup": dict(config_key="MODEL.ANYUP.WEIGHTS", expected_name="anyup_multi_backbone.pth (or anyup_paper.pth)",
                  request_url=ANYUP_URL, expect_keys=("rope.freqs", "cross_decode.", "key_features_encoder.0.basis"),
                  released_layout="AnyUp's",
                  file_names=_released("anyup_multi_backbone.pth", "anyup_paper.pth")),
    "sam_vit_l": dict(config_key="MODEL.SAM.WEIGHTS", expected_name="sam_vit_l_0b3195.pth",
                      request_url=SAM_URL + "sam_vit_l_0b3195.pth", expect_keys=("image_encoder.pos_embed",),
                      file_names=_released("sam_vit_l_0b3195.pth")),
    "sam_vit_b": dict(config_key="MODEL.SAM.WEIGHTS", expected_name="sam_vit_b_01ec64.pth",
                      request_url=SAM_URL + "sam_vit_b_01ec64.pth", expect_keys=("image_encoder.pos_embed",),
                      file_names=_released("sam_vit_b_01ec64.pth")),
}

_HASH_SUFFIX = re.compile(r"-([0-9a-f]{8,})\.pth$")
HASH_CHECK_KEY = "MODEL.WEIGHT_HASH_CHECK"
HASH_CHECK_MODES = ("error", "warn", "off")
WEIGHTS_DIR_KEY = "MODEL.ENCODER_WEIGHTS_DIR"
WEIGHTS_DIR_ENV = "DINOV3SEG_WEIGHTS"
META_LAYOUT = "Meta"  # the released files' own key names

# Files of a Hugging Face model folder, in the order looked for (save_pretrained writes the first two).
HF_WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                   "pytorch_model.bin")

logger = logging.getLogger(__name__)


class WeightFileError(InputError, RuntimeError):
    """A checkpoint file is missing, unreadable, corrupted or not the expected component."""


def hash_suffix(file_name: str) -> Optional[str]:
    """The torch.hub hash in ``name-<hex>.pth`` (first >= 8 hex digits of the file's sha256), or None."""
    match = _HASH_SUFFIX.search(file_name)
    return match.group(1) if match else None


def sha256_of(path: Path, block_size: int = 1 << 24) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(block_size):
            digest.update(block)
    return digest.hexdigest()


def hash_cache_file() -> Path:
    """Where file hashes are remembered: ``$XDG_CACHE_HOME/dinov3seg/sha256.json`` (default ``~/.cache``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "dinov3seg" / "sha256.json"


def cached_sha256(path: Path) -> str:
    """``sha256_of(path)``, remembered per (path, size, mtime, inode) so that a model start does not re-read the
    1.2 GB files each time; a changed or replaced file is hashed again. An unwritable cache is skipped."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}"
    cache_file = hash_cache_file()
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if not isinstance(cache, dict) or not isinstance(cache.get(key), str):
        cache = cache if isinstance(cache, dict) else {}
        cache[key] = sha256_of(path)
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}")
            tmp.write_text(json.dumps(dict(list(cache.items())[-64:]), indent=0))
            os.replace(tmp, cache_file)  # atomic: processes starting together never read half a file
        except OSError:
            pass
    return cache[key]


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


# ---------------------------------------------------------------------------------------------- where the file is
def weight_folders(weights_dir: str = "") -> List[Tuple[str, Optional[Path]]]:
    """(setting, folder or None when unset), in search order: MODEL.ENCODER_WEIGHTS_DIR, $DINOV3SEG_WEIGHTS,
    ./weights (relative to the working directory)."""
    env = os.environ.get(WEIGHTS_DIR_ENV, "")
    return [(WEIGHTS_DIR_KEY, Path(weights_dir).expanduser() if weights_dir else None),
            (f"${WEIGHTS_DIR_ENV}", Path(env).expanduser() if env else None),
            ("./weights", Path("weights"))]


def find_weights(value: str, *, config_key: str, expected_name: str, request_url: str, file_names: Sequence[str] = (),
                 weights_dir: str = "", also_at: str = "", **_) -> Tuple[str, str]:
    """(path, how it was found) for a ``MODEL.*.WEIGHTS`` value; ("", ...) for "" (random initialisation).

    A value with a folder part (or one that exists as given) is used as it is: an explicit path wins. A bare file
    name is looked up in the weights folders (``weight_folders``); a bare released name also finds the component's
    other released forms (``file_names``: the ``.safetensors`` twins, the Hugging Face folders of DINOv3). Raises a
    one-line error naming the key, the names and every folder searched when nothing is found.
    """
    if not value:
        return "", "empty: random initialisation"
    path = Path(value).expanduser()
    if path.exists() or len(path.parts) > 1:
        return str(path), "the path given"
    names = [value] + [n for n in file_names if n != value] if value in file_names else [value]
    searched = []
    for setting, folder in weight_folders(weights_dir):
        if folder is None:
            searched.append(f"{setting} (not set)")
            continue
        searched.append(f"{setting} '{folder}'")
        for name in names:
            if (folder / name).exists():
                return str(folder / name), f"found in {setting} '{folder}'"
    raise WeightFileError(
        f"{config_key}: '{value}' was not found (looked for {', '.join(names)} in {', '.join(searched)}). Put the "
        f"file in one of those folders, point ${WEIGHTS_DIR_ENV} or {WEIGHTS_DIR_KEY} at the folder holding it, or "
        f"set {config_key} to its full path. {_hint(config_key, expected_name, request_url, also_at)}")


def weight_path(cfg, name: str) -> str:
    """The resolved file or folder of component ``name`` (a ``WEIGHT_SPECS`` key) in ``cfg``; "" = random init."""
    spec = WEIGHT_SPECS[name]
    node = cfg
    for part in spec["config_key"].split("."):
        node = node[part]
    return find_weights(node, **spec, weights_dir=cfg.MODEL.ENCODER_WEIGHTS_DIR)[0]


def _hint(config_key: str, expected_name: str, request_url: str, also_at: str = "") -> str:
    where = f"request it at {request_url}" + (f", or use {also_at}" if also_at else "")
    return f"Set {config_key} to the path of {expected_name} ({where}), or to '' for random initialisation."


# ---------------------------------------------------------------------------------------------- reading the tensors
@dataclass
class WeightSource:
    """What ``read_weights`` found: the tensors (views of the memory-mapped files) and where they came from."""

    path: Path  # the file or folder the config named
    files: List[Path]  # the files holding the tensors (several for a sharded checkpoint)
    container: str  # "torch .pth", "safetensors", "Hugging Face folder (model.safetensors)" ...
    layout: str  # "Meta" (the released key names; AnyUp's own) or an ``other_layouts`` name: "Hugging Face"
    state_dict: Dict[str, torch.Tensor]
    hf_config: Optional[dict] = None  # config.json beside the weights, if any
    hash: str = "not checked"  # the verdict of the sha256 check
    notes: List[str] = field(default_factory=list)  # what a converting loader did (for logs and check_weights)

    @property
    def size(self) -> int:
        """Bytes on disk of ``files``."""
        return sum(f.stat().st_size for f in self.files)


def _read_safetensors(file: Path, fail) -> Dict[str, torch.Tensor]:
    from safetensors import safe_open  # memory-mapped: get_tensor returns views of the file

    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            return {key: f.get_tensor(key) for key in f.keys()}
    except Exception as err:  # SafetensorError (truncated / corrupt header or data), I/O errors
        fail(f"cannot read '{file}' as safetensors ({_one_line(err)}): the file is truncated or corrupt "
             "(an interrupted download or copy?)")


def _read_torch(file: Path, fail) -> Dict[str, torch.Tensor]:
    try:
        try:
            return torch.load(file, weights_only=True, map_location="cpu", mmap=True)
        except RuntimeError as err:  # legacy (non-zip) torch.save files cannot be memory-mapped
            if "mmap" not in str(err):
                raise
            return torch.load(file, weights_only=True, map_location="cpu")
    except Exception as err:  # unpickling, zip and I/O errors all mean "not a usable checkpoint"
        fail(f"cannot read '{file}' as a weights-only torch checkpoint ({_one_line(err)})")


def _read_file(file: Path, fail) -> Dict[str, torch.Tensor]:
    return _read_safetensors(file, fail) if file.suffix == ".safetensors" else _read_torch(file, fail)


def _hf_snapshot(folder: Path) -> Path:
    """A Hugging Face hub-cache repo folder (``models--org--name``, with ``snapshots/``) -> the snapshot that
    ``refs/main`` names (else the newest); any other folder as it is."""
    snapshots = folder / "snapshots"
    if not snapshots.is_dir():
        return folder
    ref = folder / "refs" / "main"
    if ref.is_file() and (snapshots / ref.read_text().strip()).is_dir():
        return snapshots / ref.read_text().strip()
    candidates = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    return candidates[-1] if candidates else folder


def _read_folder(folder: Path, fail) -> Tuple[Dict[str, torch.Tensor], List[Path], str, Optional[dict]]:
    """A save_pretrained / hub folder -> (tensors, files, container, config.json)."""
    folder = _hf_snapshot(folder)
    found = next((name for name in HF_WEIGHT_FILES if (folder / name).is_file()), None)
    if found is None:
        fail(f"the folder '{folder}' holds none of {', '.join(HF_WEIGHT_FILES)} (a Hugging Face model folder, as "
             "save_pretrained or the hub writes it)")
    config = None
    if (folder / "config.json").is_file():
        try:
            config = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError) as err:
            fail(f"cannot read '{folder / 'config.json'}' ({_one_line(err)})")
    if not found.endswith(".index.json"):
        return _read_file(folder / found, fail), [folder / found], f"Hugging Face folder ({found})", config
    try:
        weight_map = json.loads((folder / found).read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        fail(f"cannot read the shard index '{folder / found}' ({_one_line(err)})")
    shards = [folder / name for name in dict.fromkeys(weight_map.values())]
    absent = [s.name for s in shards if not s.is_file()]
    if absent:
        fail(f"shard(s) {', '.join(absent)} named by '{folder / found}' are missing (an incomplete download?)")
    state_dict: Dict[str, torch.Tensor] = {}
    for shard in shards:
        tensors = _read_file(shard, fail)
        misplaced = sorted(k for k in tensors if weight_map.get(k) != shard.name)
        if misplaced:
            fail(f"'{shard}' holds keys its index '{found}' places elsewhere or not at all: {misplaced[:5]}")
        state_dict.update(tensors)
    unread = sorted(set(weight_map) - set(state_dict))
    if unread:
        fail(f"keys listed in '{folder / found}' are in none of its shards: {unread[:5]}")
    return state_dict, shards, f"Hugging Face folder ({found}, {len(shards)} shards)", config


def read_weights(path: str, *, config_key: str, expected_name: str, request_url: str,
                 sha_prefix: Optional[str] = None, check_hash: Union[bool, str] = True,
                 expect_keys: Sequence[str] = (), other_layouts: Optional[Dict[str, Sequence[str]]] = None,
                 also_at: str = "", hash_cache: bool = True, released_layout: str = META_LAYOUT, **_) -> WeightSource:
    """Read the weights at ``path`` (a resolved ``find_weights`` path) without a second copy in memory.

    Args:
        path: a ``.pth`` (``torch.load(weights_only=True, mmap=True)``), a ``.safetensors`` file, or a folder as
            Hugging Face writes it (``config.json`` + ``model.safetensors``, sharded with its index, or the
            hub cache's ``models--org--name`` / ``snapshots/<hash>``).
        config_key / expected_name / request_url / also_at: named in every error, so the user knows what to set,
            which file is expected and where to get it.
        sha_prefix: leading hex digits of the file's sha256; defaults to the ``-<hex>.pth`` suffix of
            ``expected_name`` (torch.hub convention, used by the DINOv3 releases). Checked on ``.pth`` files only:
            the hash belongs to Meta's file, not to a safetensors or Hugging Face copy.
        check_hash: what a hash mismatch does (``MODEL.WEIGHT_HASH_CHECK``): "error" (or True) refuses the
            file, "warn" logs it and loads the file (the key and shape checks still apply), "off" (or False)
            does not hash at all.
        expect_keys: keys (or key prefixes) the released checkpoint holds (its layout is called ``released_layout``:
            "Meta" for Meta's files).
        other_layouts: other key layouts the component comes in, name -> identifying keys (DINOv3: "Hugging Face").
        hash_cache: reuse the sha256 remembered for this very file (``cached_sha256``); False hashes afresh.
    """
    hint = _hint(config_key, expected_name, request_url, also_at)

    def fail(message: str):
        raise WeightFileError(f"{config_key}: {message}. {hint}")

    file = Path(path)
    if not path or not file.exists():
        raise WeightFileError(f"{config_key}: weight file '{path}' does not exist. {hint}")
    mode = {True: "error", False: "off"}.get(check_hash, check_hash)
    if mode not in HASH_CHECK_MODES:
        raise ValueError(f"{HASH_CHECK_KEY} must be one of {HASH_CHECK_MODES}, got {check_hash!r}")
    expected_hash = sha_prefix if sha_prefix is not None else hash_suffix(expected_name)
    verdict = "none expected (the released name carries no -<sha256>.pth suffix)"
    if expected_hash and (file.is_dir() or file.suffix == ".safetensors"):
        verdict = "not applicable (the released hash is that of Meta's .pth, not of this copy)"
    elif expected_hash and mode == "off":
        verdict = f"skipped ({HASH_CHECK_KEY} off)"
    elif expected_hash:
        actual = cached_sha256(file) if hash_cache else sha256_of(file)
        verdict = f"ok ({expected_hash})"
        if not actual.startswith(expected_hash.lower()):
            verdict = f"MISMATCH (sha256 {actual[:16]}..., the released file starts with {expected_hash})"
            mismatch = (f"{config_key}: '{path}' has sha256 {actual[:16]}..., but the released {expected_name} "
                        f"starts with {expected_hash}")
            if mode == "error":
                raise WeightFileError(
                    f"{mismatch}: the file is corrupted or a different checkpoint. {hint} If it is a deliberately "
                    f"renamed, re-saved or converted copy, set {HASH_CHECK_KEY} warn (or off): the strict key and "
                    f"shape checks still apply.")
            logger.warning(f"{mismatch}: a re-saved or converted copy? Loading it anyway ({HASH_CHECK_KEY} "
                           f"{mode}); the strict key and shape checks follow. Set {HASH_CHECK_KEY} error to refuse "
                           f"such files, off to skip hashing.")
    config = None
    if file.is_dir():
        state_dict, files, container, config = _read_folder(file, fail)
    else:
        state_dict, files = _read_file(file, fail), [file]
        container = "safetensors" if file.suffix == ".safetensors" else "torch .pth"
        if (file.parent / "config.json").is_file() and file.suffix == ".safetensors":
            try:  # a model.safetensors named directly inside its Hugging Face folder
                config = json.loads((file.parent / "config.json").read_text())
            except (OSError, ValueError) as err:
                fail(f"cannot read '{file.parent / 'config.json'}' ({_one_line(err)})")
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
        found = sorted(state_dict)[:8] if isinstance(state_dict, dict) else type(state_dict).__name__
        fail(f"'{path}' is not a flat {{key: tensor}} state dict (found {found})")
    layouts = {released_layout: tuple(expect_keys), **(other_layouts or {})}
    layout = next((name for name, keys in layouts.items()
                   if all(any(k == p or k.startswith(p) for k in state_dict) for p in keys)), None)
    if layout is None:
        wanted = "; or ".join(f"{name}: {list(keys)}" for name, keys in layouts.items())
        fail(f"'{path}' does not look like {expected_name}: it lacks the keys of every layout this component comes "
             f"in ({wanted}; first keys found: {sorted(state_dict)[:5]})")
    return WeightSource(file, files, container, layout, state_dict, config, verdict)


def load_weight_file(path: str, **spec) -> Dict[str, torch.Tensor]:
    """The flat ``{key: tensor}`` state dict at ``path`` (see ``read_weights`` for the arguments)."""
    return read_weights(path, **spec).state_dict


def on_meta(module: nn.Module) -> bool:
    """True if any parameter or buffer of ``module`` is on the meta device (built to be loaded with assign)."""
    return any(t.is_meta for t in [*module.parameters(), *module.buffers()])


def fit_dtypes(state_dict: Dict[str, torch.Tensor], own: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Cast only the tensors whose dtype differs from the module's (e.g. a bf16 file into an fp32 model)."""
    return {k: v.to(own[k].dtype) if k in own and v.dtype != own[k].dtype else v for k, v in state_dict.items()}


def load_strict(module: nn.Module, state_dict: Dict[str, torch.Tensor], *, dropped_prefixes: Iterable[str] = (),
                component: str = "model") -> List[str]:
    """Load ``state_dict`` into ``module``, requiring every key to match by name and shape.

    Keys under ``dropped_prefixes`` are deliberately not loaded (e.g. SAM's prompt encoder). Raises one
    error listing all missing, unexpected and mis-shaped keys. Returns the sorted dropped keys. A module built on
    the meta device (``on_meta``) takes the tensors themselves (``assign``: memory-mapped file tensors stay
    views of the file; only tensors of another dtype are cast); any other module copies them into its own.
    """
    prefixes = tuple(dropped_prefixes)
    dropped = sorted(k for k in state_dict if k.startswith(prefixes)) if prefixes else []
    kept = {k: v for k, v in state_dict.items() if not (prefixes and k.startswith(prefixes))}
    own = module.state_dict()
    missing = sorted(set(own) - set(kept))
    unexpected = sorted(set(kept) - set(own))
    mis_shaped = [f"{k}: file {tuple(kept[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in sorted(set(own) & set(kept)) if kept[k].shape != own[k].shape]
    if missing or unexpected or mis_shaped:
        lines = [f"{component}: checkpoint does not match the model."]
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mis_shaped)):
            if keys:
                lines.append(f"  {name} ({len(keys)}): " + ", ".join(keys[:20]) + (" ..." if len(keys) > 20 else ""))
        raise WeightFileError("\n".join(lines))
    assign = on_meta(module)
    module.load_state_dict(fit_dtypes(kept, own) if assign else kept, strict=True, assign=assign)
    # A non-persistent buffer built on the meta device has no value to take from the file.
    left = [n for n, t in module.named_buffers() if assign and t.is_meta and n not in kept]
    if left:
        raise RuntimeError(f"{component}: {left[:5]} are not in the checkpoint and were built on the meta device")
    return dropped
