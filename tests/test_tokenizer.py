"""Tokenizer: ids identical to the official dino.txt tokenizer (tokenizer_cases.json)."""
import hashlib
import json
from pathlib import Path

import pytest
import torch

from dinov3seg.modeling.encoders.tokenizer import BPE_SHA256, build_tokenizer, default_bpe_path


@pytest.fixture(scope="module")
def cases(parity_dir):
    path = parity_dir / "tokenizer_cases.json"
    if not path.is_file():
        pytest.skip(f"tokenizer cases {path} not found")
    return json.loads(path.read_text())


def test_bpe_file_is_the_fixture_vocabulary(cases):
    path = Path(default_bpe_path())
    assert path.name == cases["bpe_file"].split()[0]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == BPE_SHA256 == cases["bpe_sha256"]


def test_ids_match_official(cases):
    tokenizer = build_tokenizer()
    assert (tokenizer.sot_id, tokenizer.eot_id) == (cases["sot_id"], cases["eot_id"])
    texts = [case["text"] for case in cases["cases"]]
    ids = tokenizer(texts, context_length=cases["context_length"])
    mismatches = [text for text, row, case in zip(texts, ids.tolist(), cases["cases"]) if row != case["ids"]]
    assert not mismatches, f"ids differ for {mismatches}"
    assert ids.dtype == torch.long and ids.shape == (len(texts), 77)
    assert ids.argmax(-1).tolist() == [case["eot_index"] for case in cases["cases"]]
    for text, case in zip(texts, cases["cases"]):
        assert len(tokenizer.encode(text)) + 2 == case["n_tokens_untruncated"]


def test_literal_special_tokens_and_truncation():
    tokenizer = build_tokenizer()
    ids = tokenizer(["<|startoftext|> literal special tokens <|endoftext|>"])[0]
    assert ids[:2].tolist() == [49406, 49406] and ids[5] == 49407 and ids.argmax() == 5
    long_ids = tokenizer(["word " * 100])[0]
    assert long_ids[-1] == 49407 and (long_ids != 0).all()
    assert tokenizer([""])[0, :3].tolist() == [49406, 49407, 0]


def test_build_tokenizer_is_cached():
    assert build_tokenizer() is build_tokenizer()
