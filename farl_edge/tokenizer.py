"""CLIP byte-level BPE tokenizer (the vocabulary FaRL's text tower was trained with).

Same algorithm as CLIP's simple tokenizer: text is cleaned (``ftfy`` when installed, HTML
unescaping, whitespace collapsing), lower-cased, split with CLIP's regex, mapped to
printable unicode per byte, then merged with the BPE ranks of ``bpe_simple_vocab_16e6``.
"""
from __future__ import annotations

import gzip
import html
from functools import lru_cache
from importlib import resources

import regex

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # CLIP uses the first 48894 merges of the file

# CLIP's pre-tokenisation: special tokens, English contractions, letter runs, single digits,
# runs of other non-space symbols.
_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Byte → printable unicode character, so BPE never sees whitespace or control bytes."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def _pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    return set(zip(word[:-1], word[1:]))


def basic_clean(text: str) -> str:
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:  # optional: only changes mojibake/odd unicode, not plain text
        pass
    return html.unescape(html.unescape(text)).strip()


def whitespace_clean(text: str) -> str:
    return regex.sub(r"\s+", " ", text).strip()


def normalize(text: str) -> str:
    """The text the tokenizer actually sees (what ``decode(encode(t))`` gives back)."""
    return whitespace_clean(basic_clean(text)).lower()


@lru_cache(maxsize=1)
def _read_merges() -> list[tuple[str, str]]:
    data = (resources.files("farl_edge") / "data" / "vocab" / VOCAB_FILE).read_bytes()
    lines = gzip.decompress(data).decode("utf-8").split("\n")
    # First line is a version header.
    return [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]


class Tokenizer:
    def __init__(self):
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        merges = _read_merges()
        base = list(self.byte_encoder.values())
        vocab = base + [v + "</w>" for v in base] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.cache = {SOT: SOT, EOT: EOT}
        self.sot_id, self.eot_id = self.encoder[SOT], self.encoder[EOT]

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def bpe(self, token: str) -> str:
        """Space-separated BPE pieces of one pre-token; the last piece carries ``</w>``."""
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            best = min(_pairs(word), key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            word = self._merge(word, best)
        out = " ".join(word)
        self.cache[token] = out
        return out

    @staticmethod
    def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
        first, second = pair
        merged, i = [], 0
        while i < len(word):
            if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                merged.append(first + second)
                i += 2
            else:
                merged.append(word[i])
                i += 1
        return tuple(merged)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in _PATTERN.findall(normalize(text)):
            piece = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[p] for p in self.bpe(piece).split(" "))
        return ids

    def decode(self, ids) -> str:
        text = "".join(self.decoder[int(i)] for i in ids)
        raw = bytearray(self.byte_decoder[c] for c in text)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ").strip()


@lru_cache(maxsize=1)
def get_tokenizer() -> Tokenizer:
    """Shared instance: building the merge table takes ~0.3 s."""
    return Tokenizer()


def tokenize(texts: str | list[str], context_length: int = 77, truncate: bool = True):
    """(B, context_length) LongTensor: SOT, tokens, EOT, zero padding (CLIP's layout)."""
    import torch

    tok = get_tokenizer()
    texts = [texts] if isinstance(texts, str) else list(texts)
    out = torch.zeros(len(texts), context_length, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [tok.sot_id, *tok.encode(text), tok.eot_id]
        if len(ids) > context_length:
            if not truncate:
                raise ValueError(
                    f"text {row} is {len(ids)} tokens long, over the context length {context_length}: {text[:60]!r}"
                )
            ids = ids[:context_length]
            ids[-1] = tok.eot_id  # the text tower reads the feature at EOT, so keep one
        out[row, : len(ids)] = torch.tensor(ids)
    return out
