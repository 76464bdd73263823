"""CLIP BPE tokenizer with the exact ids of the official dino.txt tokenizer.

BPE merges come from open_clip's shipped ``bpe_simple_vocab_16e6.txt.gz`` (sha256-checked) through its
``SimpleTokenizer``; cleaning, pre-tokenisation and special tokens follow the official tokenizer, whose special
tokens are spelled ``<|startoftext|>`` / ``<|endoftext|>`` (open_clip spells them differently) and are
recognised when they appear literally in the text.
"""
import hashlib
import html
import importlib.resources
from functools import lru_cache
from typing import List

import ftfy
import regex
import torch
from open_clip.tokenizer import SimpleTokenizer, bytes_to_unicode

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


def clean_text(text: str) -> str:
    """ftfy repair, HTML-unescape twice, collapse whitespace, lower-case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


def default_bpe_path() -> str:
    """Path of open_clip's BPE vocabulary, verified against the sha256 the parity fixtures were made with."""
    path = importlib.resources.files("open_clip") / BPE_FILE
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != BPE_SHA256:
        raise RuntimeError(f"{path}: sha256 {digest} differs from the expected CLIP vocabulary {BPE_SHA256}")
    return str(path)


class Tokenizer:
    """Texts -> token ids [N, context_length] (int64): SOT, BPE ids, EOT, zero padding.

    Too long sequences are cut to ``context_length`` with the last id set to EOT. SOT = 49406, EOT = 49407.
    """

    def __init__(self, bpe_path: str):
        self.bpe = SimpleTokenizer(bpe_path)
        self.byte_encoder = bytes_to_unicode()
        self.sot_id = self.bpe.sot_token_id
        self.eot_id = self.bpe.eot_token_id
        self.special_ids = {SOT: self.sot_id, EOT: self.eot_id}

    def encode(self, text: str) -> List[int]:
        """BPE ids of one text, without SOT/EOT."""
        ids = []
        for piece in PATTERN.findall(clean_text(text)):
            if piece in self.special_ids:
                ids.append(self.special_ids[piece])
                continue
            piece = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.bpe.encoder[t] for t in self.bpe.bpe(piece).split(" "))
        return ids

    def __call__(self, texts: List[str], context_length: int = 77) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        result = torch.zeros(len(texts), context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [self.sot_id] + self.encode(text) + [self.eot_id]
            if len(ids) > context_length:
                ids = ids[:context_length]
                ids[-1] = self.eot_id
            result[i, : len(ids)] = torch.tensor(ids)
        return result


@lru_cache(maxsize=None)
def build_tokenizer() -> Tokenizer:
    """The shared tokenizer on open_clip's verified BPE file."""
    return Tokenizer(default_bpe_path())
