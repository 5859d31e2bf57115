"""A word-level tokenizer for CLIP captions, built from the captions themselves.

Ids 0-3 are special: PAD=0, SOT=1 (start of text), EOT=2 (end of text: the text tower pools there), UNK=3 (a word
outside the vocabulary). Words are lowercase runs of `[a-z0-9]`; everything else separates them. The vocabulary is a
plain tuple (`vocab[i]` is the word of id i), stored as JSON in a model file's meta (`to_dict` / `from_dict`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from qrjax.clip.data import synthetic_texts

PAD, SOT, EOT, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<start>", "<end>", "<unk>")
_WORD = re.compile(r"[a-z0-9]+")
_KIND = "words"


def words(text: str) -> list[str]:
    """The words of a text: lowercase runs of [a-z0-9] (punctuation and other characters separate words)."""
    return _WORD.findall(text.lower())


class Tokenizer:
    """Word-level tokenizer: `vocab[i]` is the word of id i; vocab[:4] are the special tokens `SPECIALS`."""

    def __init__(self, vocab: Sequence[str]):
        vocab = tuple(vocab)
        if vocab[:4] != SPECIALS:
            raise ValueError(f"tokenizer vocabulary must start with the special tokens {SPECIALS}, got {vocab[:4]}")
        bad = [w for w in vocab[4:] if not isinstance(w, str) or not _WORD.fullmatch(w)]
        if bad:
            raise ValueError(f"tokenizer vocabulary: {len(bad)} entries are not words of [a-z0-9]+, e.g. {bad[:5]}")
        seen: dict[str, int] = {}
        for i, w in enumerate(vocab):
            if w in seen:
                raise ValueError(f"tokenizer vocabulary: {w!r} appears twice (ids {seen[w]} and {i})")
            seen[w] = i
        self.vocab: tuple[str, ...] = vocab
        self._ids = seen

    @classmethod
    def build(cls, captions: Iterable[str], max_size: int) -> "Tokenizer":
        """The `max_size - 4` most frequent words of the captions (ties broken alphabetically), after the 4 specials."""
        if max_size < len(SPECIALS):
            raise ValueError(f"tokenizer max_size {max_size}: must be at least {len(SPECIALS)} (the special tokens)")
        counts = Counter(w for text in captions for w in words(text))
        ranked = sorted(counts, key=lambda w: (-counts[w], w))
        return cls(SPECIALS + tuple(ranked[: max_size - len(SPECIALS)]))

    def __len__(self) -> int:
        return len(self.vocab)

    def __eq__(self, other) -> bool:
        return isinstance(other, Tokenizer) and self.vocab == other.vocab

    def __hash__(self) -> int:
        return hash(self.vocab)

    def __repr__(self) -> str:
        return f"Tokenizer({len(self)} tokens)"

    def ids(self, text: str) -> list[int]:
        """The ids of a text's words (UNK for words outside the vocabulary), without SOT/EOT."""
        return [self._ids.get(w, UNK) for w in words(text)]

    def encode(self, texts: Sequence[str], context_length: int) -> np.ndarray:
        """int32[B, context_length]: per row SOT, the word ids (truncated to context_length - 2 words), EOT, then PAD.

        Every row holds exactly one EOT (at index min(words, L - 2) + 1), where the text tower pools."""
        if isinstance(texts, str):
            raise TypeError("Tokenizer.encode takes a sequence of texts, got a single str (wrap it in a list)")
        if context_length < 3:
            raise ValueError(f"context_length {context_length}: needs room for the start, a word and the end token")
        out = np.full((len(texts), context_length), PAD, np.int32)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"Tokenizer.encode: text {row} is {type(text).__name__}, not str")
            ids = self.ids(text)[: context_length - 2]
            out[row, : len(ids) + 2] = [SOT, *ids, EOT]
        return out

    def decode(self, ids) -> str:
        """The words of one row of ids (int[L]), joined by spaces: SOT and PAD are skipped, decoding stops at EOT,
        UNK reads as "<unk>"."""
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise ValueError(f"Tokenizer.decode takes one row of ids (int[L]), got shape {ids.shape}")
        out = []
        for i in ids.tolist():
            if not 0 <= i < len(self.vocab):
                raise ValueError(f"Tokenizer.decode: id {i} is outside the vocabulary (0..{len(self.vocab) - 1})")
            if i == EOT:
                break
            if i not in (PAD, SOT):
                out.append(self.vocab[i])
        return " ".join(out)

    def to_dict(self) -> dict:
        """JSON-safe form, for a model file's meta."""
        return {"kind": _KIND, "vocab": list(self.vocab)}

    @classmethod
    def from_dict(cls, d) -> "Tokenizer":
        if not isinstance(d, dict) or d.get("kind") != _KIND or not isinstance(d.get("vocab"), list):
            keys = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"not a tokenizer dict: expected {{'kind': {_KIND!r}, 'vocab': [words...]}}, got {keys}"
                             + (f" with kind {d.get('kind')!r}" if isinstance(d, dict) else ""))
        return cls(d["vocab"])


def synthetic_tokenizer() -> Tokenizer:
    """The tokenizer of the synthetic scenes: every word their captions, hard negatives, zero-shot class names and
    prompt templates can produce (`qrjax.clip.data.synthetic_texts`), most frequent first; no word maps to UNK."""
    texts = synthetic_texts()
    return Tokenizer.build(texts, len({w for t in texts for w in words(t)}) + len(SPECIALS))


__all__ = ["EOT", "PAD", "SOT", "SPECIALS", "UNK", "Tokenizer", "synthetic_tokenizer", "words"]
