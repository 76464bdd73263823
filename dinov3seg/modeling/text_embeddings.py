"""Class-name text embeddings: prompt templates x synonyms through the dinov3.txt text tower, cached.

For each class (one string; comma-separated synonyms allowed, e.g. "sofa, couch") and each prompt
template, every synonym is written into the template, encoded and L2-normalised; the synonyms are
averaged and the mean is L2-normalised again. The result is ``T x P x 2D`` (T classes, P templates,
2D = 2048 for dinov3.txt: ``[:, :, :D]`` aligns with the image CLS, ``[:, :, D:]`` with the patches).

Embeddings are cached **per class** (its synonyms, the templates, the context length and a content hash of
the text weights), in memory and, with ``MODEL.DINOV3SEG.TEXT_CACHE_DIR`` (default "auto": a per-user cache
folder, see :func:`resolve_cache_dir`), on disk: one small file per class, written atomically. Editing a
vocabulary, or restarting the process, encodes only the names never seen with these weights and templates.
The weights are fingerprinted on every call: an optimizer step, ``load_state_dict``, ``.to(device)`` or any
other change of the text tower's tensors invalidates the memory cache, and the disk keys hold the weights'
content hash, so stale entries are never reused. While the text tower has trainable parameters and autograd
is on, nothing is cached: every call re-encodes, so gradients flow into the tuned text weights; a tower with
trainable parameters is cached in memory only (its weights change as it trains).
"""
import hashlib
import json
import logging
import os
import tempfile
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable

__all__ = [
    "SINGLE_TEMPLATE",
    "IMAGENET_TEMPLATES",
    "load_prompt_templates",
    "split_synonyms",
    "TextEmbedder",
    "average_templates",
    "resolve_cache_dir",
]

logger = logging.getLogger(__name__)

# CAT-Seg's single template, without a final period (a period would change the EOT token the text tower pools).
SINGLE_TEMPLATE = "A photo of a {} in the scene"

# The 80 prompt templates OpenAI used for zero-shot ImageNet with CLIP.
IMAGENET_TEMPLATES = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)


def load_prompt_templates(spec: str) -> List[str]:
    """Templates named by ``MODEL.DINOV3SEG.PROMPT_TEMPLATES``.

    Args:
        spec: "single" (``SINGLE_TEMPLATE``), "imagenet" (the 80 ImageNet templates) or the path of
            a UTF-8 text file with one template per line, each containing "{}" where the class name
            goes (blank lines and lines starting with "#" are skipped).
    """
    if spec == "single":
        return [SINGLE_TEMPLATE]
    if spec == "imagenet":
        return list(IMAGENET_TEMPLATES)
    key = "MODEL.DINOV3SEG.PROMPT_TEMPLATES"
    if not os.path.isfile(spec):
        raise FileNotFoundError(
            f'{key} = {spec!r}: expected "single", "imagenet" or the path of a text file with one '
            'template per line containing "{}", but no such file exists'
        )
    templates = []
    with open(spec, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.count("{}") != 1:
                raise ValueError(
                    f'{key}: line {lineno} of {spec} must contain "{{}}" exactly once (where the class '
                    f"name goes), got {line!r}"
                )
            templates.append(line)
    if not templates:
        raise ValueError(f"{key}: template file {spec} holds no templates")
    return templates


def split_synonyms(class_name: str) -> List[str]:
    """"sofa, couch" -> ["sofa", "couch"]; empty parts are dropped."""
    synonyms = [s.strip() for s in class_name.split(",") if s.strip()]
    if not synonyms:
        raise ValueError(f"class name {class_name!r} holds no name")
    return synonyms


def _weights_digest(module: nn.Module) -> str:
    """Content hash of a module's parameters and buffers (names, dtypes, shapes, bytes)."""
    h = hashlib.sha1()
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(memoryview(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


CACHE_ENV = "DINOV3SEG_CACHE_DIR"


def resolve_cache_dir(spec: str) -> str:
    """``MODEL.DINOV3SEG.TEXT_CACHE_DIR`` -> the folder of the disk cache ("" = none). "auto" is
    ``$DINOV3SEG_CACHE_DIR/text_embeddings``, else ``$XDG_CACHE_HOME/dinov3seg/text_embeddings``, else
    ``~/.cache/dinov3seg/text_embeddings``; any other value is the folder itself."""
    if spec != "auto":
        return spec
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "dinov3seg")
    return os.path.join(root, "text_embeddings")


class TextEmbedder(nn.Module):
    """Class names -> ``T x P x 2D`` prompt embeddings, cached (see the module doc).

    The wrapped ``text_encoder`` maps token ids ``N x L`` (int64) to ``N x 2D`` unnormalised
    embeddings, through its ``encode_text`` method if it has one, else its ``forward``. It is a
    submodule (reach it as ``text_embedder.text_encoder``). ``tokenizer(texts, context_length=L)``
    returns ``N x L`` int64 ids.
    """

    @configurable
    def __init__(
        self,
        *,
        text_encoder: nn.Module,
        tokenizer: Callable[..., torch.Tensor],
        templates: Sequence[str] = (SINGLE_TEMPLATE,),
        cache_dir: str = "",
        context_length: int = 77,
        chunk_size: int = 256,
        max_cached_vocabularies: int = 4,
        max_cached_class_bytes: int = 1 << 30,
    ):
        """
        Args:
            text_encoder: ids N x L -> N x 2D (see the class doc).
            tokenizer: list of N strings -> N x L int64 ids.
            templates: prompt templates, each with one "{}".
            cache_dir: folder of the on-disk cache (one file per class); "" = memory only; "auto" = the
                per-user cache folder (:func:`resolve_cache_dir`).
            context_length: L.
            chunk_size: prompts encoded per text-tower call (bounds memory for huge vocabularies).
            max_cached_vocabularies: assembled ``T x P x 2D`` vocabularies kept in memory (least recently
                used dropped), so an unchanged vocabulary costs nothing per image.
            max_cached_class_bytes: memory held by the per-class entries (least recently used dropped).
        """
        super().__init__()
        if not templates or any(t.count("{}") != 1 for t in templates):
            raise ValueError(f'every prompt template needs exactly one "{{}}", got {list(templates)}')
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.templates = list(templates)
        self.cache_dir = resolve_cache_dir(cache_dir)
        self.context_length = context_length
        self.chunk_size = chunk_size
        self.max_cached_vocabularies = max_cached_vocabularies
        self.max_cached_class_bytes = max_cached_class_bytes
        self._cache: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()  # (names, templates) -> T x P x 2D
        self._class_cache: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()  # (synonyms, templates) -> P x 2D
        self._class_bytes = 0
        self._cache_fingerprint = None  # weights fingerprint the cached entries belong to
        self._digest: Optional[Tuple[tuple, str]] = None  # (fingerprint, content hash) for disk keys
        self._disk_failed = False  # a failed write is reported once, then the disk cache is skipped
        self.num_encoder_calls = 0  # text-tower forward passes so far (for tests and profiling)
        self.num_encoded_classes = 0  # classes encoded so far (cache misses)
        self.num_disk_hits = 0  # classes read from the disk cache so far

    @classmethod
    def from_config(cls, cfg, text_encoder: nn.Module, tokenizer: Callable[..., torch.Tensor]):
        return {
            "text_encoder": text_encoder,
            "tokenizer": tokenizer,
            "templates": load_prompt_templates(cfg.MODEL.DINOV3SEG.PROMPT_TEMPLATES),
            "cache_dir": cfg.MODEL.DINOV3SEG.TEXT_CACHE_DIR,
        }

    @property
    def num_templates(self) -> int:
        return len(self.templates)

    # ------------------------------------------------------------------ weights fingerprint
    def _tensors(self):
        return list(self.text_encoder.parameters()) + list(self.text_encoder.buffers())

    def weights_fingerprint(self) -> tuple:
        """Cheap identity of the text weights: changes whenever any parameter or buffer is modified
        in place (``_version`` counter: optimizer steps, ``load_state_dict``, ``copy_``), replaced
        (``data_ptr``) or moved/cast (device, dtype)."""
        return tuple(
            (t.data_ptr(), t._version, t.device.type, t.device.index, t.dtype, tuple(t.shape))
            for t in self._tensors()
        )

    def weights_digest(self) -> str:
        """Content hash of the text weights (stable across processes; used for disk-cache keys).
        Recomputed only when :meth:`weights_fingerprint` changes."""
        fingerprint = self.weights_fingerprint()
        if self._digest is None or self._digest[0] != fingerprint:
            self._digest = (fingerprint, _weights_digest(self.text_encoder))
        return self._digest[1]

    def is_tuned(self) -> bool:
        """True when embeddings must be recomputed with autograd: grad on and text params trainable."""
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.text_encoder.parameters())

    # ------------------------------------------------------------------ encoding
    def _device(self) -> torch.device:
        tensors = self._tensors()
        return tensors[0].device if tensors else torch.device("cpu")

    def _encode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        self.num_encoder_calls += 1
        encode = getattr(self.text_encoder, "encode_text", self.text_encoder)
        return encode(ids)

    def encode(self, class_names: Sequence[str]) -> torch.Tensor:
        """Compute (no cache) the ``T x P x 2D`` embeddings of ``class_names``."""
        synonyms = [split_synonyms(name) for name in class_names]
        # One prompt per (class, template, synonym); row of the output it averages into.
        prompts, rows = [], []
        for c, names in enumerate(synonyms):
            for p, template in enumerate(self.templates):
                for name in names:
                    prompts.append(template.replace("{}", name))
                    rows.append(c * len(self.templates) + p)
        device = self._device()
        rows = torch.tensor(rows, dtype=torch.long, device=device)

        chunks = []
        summed = None
        for start in range(0, len(prompts), self.chunk_size):
            ids = self.tokenizer(prompts[start : start + self.chunk_size], context_length=self.context_length)
            emb = F.normalize(self._encode_ids(ids.to(device)), dim=-1)
            if emb.requires_grad:
                chunks.append(emb)  # keep the graph; summed once below
                continue
            if summed is None:
                summed = emb.new_zeros(len(class_names) * len(self.templates), emb.shape[-1])
            summed.index_add_(0, rows[start : start + len(emb)], emb)
        if chunks:
            emb = torch.cat(chunks)
            summed = emb.new_zeros(len(class_names) * len(self.templates), emb.shape[-1])
            summed = summed.index_add(0, rows, emb)
        if summed is None:  # empty vocabulary
            return torch.zeros(0, len(self.templates), 0, device=device)
        # The mean over synonyms and the sum point the same way: normalising the sum is enough.
        return F.normalize(summed, dim=-1).reshape(len(class_names), len(self.templates), -1)

    # ------------------------------------------------------------------ cache
    def _class_key(self, class_name: str) -> tuple:
        """Memory-cache key of one class: its synonyms (the prompt text) and the templates."""
        return tuple(split_synonyms(class_name)), tuple(self.templates)

    def disk_folder(self) -> str:
        """The disk-cache folder of these text weights and templates (one per weights, templates, context length
        and encoder type); the files in it are named by the class's synonyms."""
        key = json.dumps({"templates": self.templates, "context_length": self.context_length,
                          "encoder": type(self.text_encoder).__name__, "weights": self.weights_digest()},
                         sort_keys=True)
        return os.path.join(self.cache_dir, hashlib.sha1(key.encode()).hexdigest()[:20])

    @staticmethod
    def _disk_name(synonyms: Tuple[str, ...]) -> str:
        return hashlib.sha1(json.dumps(list(synonyms)).encode()).hexdigest() + ".pt"

    def _persistent(self) -> bool:
        """Disk cache in use: a folder is set and the text weights are frozen (tuned weights change as they
        train: their entries would never be read again)."""
        return bool(self.cache_dir) and not self._disk_failed and not any(
            p.requires_grad for p in self.text_encoder.parameters())

    def _read_disk(self, folder: str, synonyms: Tuple[str, ...], expected: Tuple[int, int]) -> Optional[torch.Tensor]:
        path = os.path.join(folder, self._disk_name(synonyms))
        if not os.path.isfile(path):
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(entry, torch.Tensor) or entry.dim() != 2 or entry.shape[0] != expected[0] or (
                    expected[1] and entry.shape[1] != expected[1]):
                raise ValueError(f"holds {type(entry).__name__} {tuple(getattr(entry, 'shape', ()))}, expected "
                                 f"{expected[0]} x D")
        except Exception as e:  # a truncated or foreign file: recompute and overwrite it
            logger.warning(f"Ignoring unreadable text-embedding cache {path}: {e}")
            return None
        self.num_disk_hits += 1
        return entry

    def _write_disk(self, folder: str, synonyms: Tuple[str, ...], entry: torch.Tensor) -> None:
        """Atomic: written to a temporary file in the same folder, then renamed into place, so a reader
        (another process, a crash) never sees a partial file."""
        tmp = None
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pt")
            with os.fdopen(fd, "wb") as f:
                torch.save(entry.detach().cpu().clone(), f)
            os.replace(tmp, os.path.join(folder, self._disk_name(synonyms)))
        except OSError as e:
            logger.warning(f"Cannot write the text-embedding cache in {self.cache_dir} ({e}); "
                           "caching in memory only")
            self._disk_failed = True
            if tmp is not None and os.path.exists(tmp):
                os.remove(tmp)

    def _remember(self, key: tuple, entry: torch.Tensor) -> None:
        self._class_cache[key] = entry
        self._class_bytes += entry.numel() * entry.element_size()
        while self._class_bytes > self.max_cached_class_bytes and len(self._class_cache) > 1:
            _, dropped = self._class_cache.popitem(last=False)
            self._class_bytes -= dropped.numel() * dropped.element_size()

    def class_embeddings(self, class_names: Sequence[str]) -> torch.Tensor:
        """``T x P x 2D`` embeddings from the per-class caches (memory, then disk); only the classes found in
        neither are encoded, in one batched pass, and stored in both."""
        keys = [self._class_key(name) for name in class_names]
        found: Dict[tuple, torch.Tensor] = {}
        for key in keys:
            if key in self._class_cache:
                self._class_cache.move_to_end(key)
                found[key] = self._class_cache[key]
        missing = list(dict.fromkeys(k for k in keys if k not in found))
        folder = self.disk_folder() if missing and self._persistent() else None
        if folder is not None:
            width = next(iter(found.values())).shape[-1] if found else 0
            for key in missing:
                entry = self._read_disk(folder, key[0], (len(self.templates), width))
                if entry is not None:
                    found[key] = entry.to(self._device())
                    self._remember(key, found[key])
            missing = [k for k in missing if k not in found]
        if missing:
            with torch.no_grad():
                encoded = self.encode([", ".join(k[0]) for k in missing])
            self.num_encoded_classes += len(missing)
            for key, entry in zip(missing, encoded):
                entry = entry.clone()  # its own storage: the vocabulary tensor is not kept alive
                found[key] = entry
                self._remember(key, entry)
                if folder is not None and not self._disk_failed:
                    self._write_disk(folder, key[0], entry)
        return torch.stack([found[k] for k in keys])

    def forward(self, class_names: Sequence[str]) -> torch.Tensor:
        """
        Args:
            class_names: T names; each may hold comma-separated synonyms.

        Returns:
            T x P x 2D embeddings, unit norm along the last dim (P = number of templates).
        """
        if isinstance(class_names, str):
            raise TypeError("class_names must be a list of names, not one string")
        if len(class_names) == 0:
            raise ValueError("the vocabulary is empty: give at least one class name")
        if self.is_tuned():
            return self.encode(class_names)

        fingerprint = self.weights_fingerprint()
        if fingerprint != self._cache_fingerprint:
            self.clear_cache()  # the text weights changed: every cached embedding is stale
            self._cache_fingerprint = fingerprint
        key = (tuple(class_names), tuple(self.templates))
        if key in self._cache:
            self._cache.move_to_end(key)  # most recently used last
            embeddings = self._cache[key]
        else:
            embeddings = self.class_embeddings(class_names)
            self._cache[key] = embeddings
            while len(self._cache) > self.max_cached_vocabularies:
                self._cache.popitem(last=False)
        if embeddings.is_inference() and not torch.is_inference_mode_enabled():
            # Made under torch.inference_mode(): such tensors cannot join an autograd graph
            # (e.g. training with the frozen tower after an evaluation); a clone can.
            embeddings = self._cache[key] = embeddings.clone()
        return embeddings

    def clear_cache(self):
        """Drop the in-memory caches (the disk cache is left alone)."""
        self._cache.clear()
        self._class_cache.clear()
        self._class_bytes = 0
        self._cache_fingerprint = None

    def extra_repr(self) -> str:
        return f"templates={len(self.templates)}, cache_dir={self.cache_dir!r}, chunk_size={self.chunk_size}"


def average_templates(embeddings: torch.Tensor) -> torch.Tensor:
    """CLIP's prompt ensembling: (T, P, D) -> (T, D). Each template's embedding is L2-normalised, the P are
    averaged and the mean is L2-normalised again (normalising a slice such as the patch-aligned half of
    ``TextEmbedder``'s output first re-normalises that slice on its own)."""
    return F.normalize(F.normalize(embeddings, dim=-1).mean(dim=1), dim=-1)
