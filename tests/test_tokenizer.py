"""CLIP BPE tokenizer: known ids, round trips, the (B, 77) layout the text tower expects."""
from __future__ import annotations

import pytest
import torch

from farl_edge.registry import get_config
from farl_edge.tokenizer import Tokenizer, bytes_to_unicode, get_tokenizer, normalize, tokenize

SOT, EOT = 49406, 49407


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return get_tokenizer()


@pytest.mark.parametrize("text, ids", [
    ("a photo of a face", [320, 1125, 539, 320, 1710]),
    ("a diagram", [320, 22697]),  # the ids printed in OpenAI CLIP's README
    ("a dog", [320, 1929]),
    ("a cat", [320, 2368]),
])
def test_known_ids(tok, text, ids):
    assert tok.encode(text) == ids
    assert tokenize(text)[0, : len(ids) + 2].tolist() == [SOT, *ids, EOT]


def test_special_tokens_and_vocab_size(tok):
    assert (tok.sot_id, tok.eot_id) == (SOT, EOT)
    assert tok.vocab_size == get_config("farl-b16-224").text["vocab_size"] == 49408
    assert tok.encode("<|startoftext|>a face<|endoftext|>") == [SOT, 320, 1710, EOT]


@pytest.mark.parametrize("caption", [
    "a photo of a face",
    "A Smiling   Woman with LONG blonde hair\n",
    "portrait of an old man wearing glasses",
    "Tom &amp; Jerry",
    "café au lait",
    "a face 😀",
    "中文 人脸",
])
def test_round_trip(tok, caption):
    assert tok.decode(tok.encode(caption)) == normalize(caption)


def test_digits_and_punctuation_are_separate_words(tok):
    # CLIP's pattern splits every digit and each punctuation run into its own word.
    assert tok.decode(tok.encode("born in 2019, smiling")) == "born in 2 0 1 9 , smiling"


def test_normalize(tok):
    assert normalize("  Hello\t\tWORLD &amp;amp; x ") == "hello world & x"


def test_bytes_to_unicode_is_a_bijection():
    table = bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert all(not c.isspace() for c in table.values())


def test_tokenize_layout():
    out = tokenize(["a photo of a face", "a dog", ""])
    assert out.shape == (3, 77) and out.dtype == torch.long
    assert out[:, 0].tolist() == [SOT] * 3
    assert out.argmax(dim=-1).tolist() == [6, 3, 1]  # EOT is the highest id, read by the text tower
    assert out[0, 7:].eq(0).all() and out[2, 2:].eq(0).all()


def test_tokenize_too_long():
    text = "face " * 100
    out = tokenize(text)
    assert out.shape == (1, 77) and out[0, -1].item() == EOT and out[0, 0].item() == SOT
    with pytest.raises(ValueError, match="over the context length 77"):
        tokenize(text, truncate=False)
    assert tokenize("a dog", context_length=4).tolist() == [[SOT, 320, 1929, EOT]]
