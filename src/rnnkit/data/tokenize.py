"""Word tokens for text classification: tokenizer, vocabulary, truncation, n-gram ids, word vectors.

* ``tokenize(text)``: lower-cased word tokens; HTML line breaks (``<br />``) become spaces and
  ``!``/``?`` are kept as tokens (they carry sentiment).
* ``Vocabulary``: id 0 is PAD, id 1 is OOV, then words by decreasing frequency (ties broken
  alphabetically, so a vocabulary is reproducible). ``max_size`` counts the two special ids, as
  Keras's ``num_words`` does, so ``Embedding(max_size, E)`` fits it. Stored in the artifact as JSON.
* ``truncate(seq, max_length, keep)``: keep the ``head``, the ``tail`` or ``both`` ends.
* ``bigram_ids``: fastText-style hashed bigram features: step t gets the id of the pair
  (w_{t-1}, w_t) in ``buckets`` extra embedding rows after the vocabulary (w_{-1} is a start marker).
* ``read_word_vectors``: GloVe or word2vec *text* files into an embedding matrix;
  ``copy_word_vectors`` writes the rows found into an embedding's weight.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from rnnkit.errors import UserError

PAD, OOV = 0, 1
SPECIALS = ("<pad>", "<oov>")
TRUNCATE_MODES = ("head", "tail", "both")

_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*|[!?]")


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens: ``"Great<br />film, isn't it?!"`` -> great film isn't it ? !"""
    return _TOKEN.findall(_BREAK.sub(" ", text).lower())


class Vocabulary:
    """Word <-> id map with PAD (0) and OOV (1)."""

    def __init__(self, words: Sequence[str]):
        self.words = list(words)  # position = id; words[0:2] are SPECIALS
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, token_lists: Iterable[list[str]], max_size: int = 10000, min_freq: int = 1) -> "Vocabulary":
        """The ``max_size - 2`` most frequent tokens that occur at least ``min_freq`` times."""
        if max_size < 3:
            raise UserError(f"vocab_size must be at least 3 (PAD, OOV and one word), got {max_size}")
        counts = Counter()
        for tokens in token_lists:
            counts.update(tokens)
        ranked = sorted((w for w, n in counts.items() if n >= min_freq), key=lambda w: (-counts[w], w))
        return cls(list(SPECIALS) + ranked[: max_size - len(SPECIALS)])

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Token ids; unknown tokens map to OOV (1)."""
        get = self.index.get
        return [get(t, OOV) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.words[i] for i in ids]

    def to_dict(self) -> dict:
        return {"words": self.words}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocabulary":
        words = d["words"]
        if list(words[: len(SPECIALS)]) != list(SPECIALS):
            raise UserError(f"vocabulary must start with {list(SPECIALS)}, got {list(words[:2])}")
        return cls(words)


def truncate(seq, max_length: int, keep: str = "head"):
    """At most ``max_length`` items of ``seq``: the first (head), the last (tail), or both ends
    (the first ceil(max_length/2) and the last floor(max_length/2))."""
    if keep not in TRUNCATE_MODES:
        raise UserError(f"truncate must be one of {', '.join(TRUNCATE_MODES)}, got {keep!r}")
    n = len(seq)
    if n <= max_length:
        return seq
    if keep == "head":
        return seq[:max_length]
    if keep == "tail":
        return seq[n - max_length :]
    first = (max_length + 1) // 2
    tail = max_length - first
    if isinstance(seq, np.ndarray):
        return np.concatenate([seq[:first], seq[n - tail :]])
    return seq[:first] + seq[n - tail :]


def bigram_ids(ids: Sequence[int], vocab_size: int, buckets: int) -> np.ndarray:
    """(T, 2) int64: column 0 the word ids, column 1 ``vocab_size + hash(w_{t-1}, w_t) % buckets``.

    The hash mixes the two ids with 64-bit multiply-xorshift (deterministic, unlike Python's
    ``hash``), so it depends only on the stored vocabulary.
    """
    cur = np.asarray(ids, dtype=np.uint64)
    prev = np.concatenate([np.array([vocab_size], dtype=np.uint64), cur[:-1]])  # start marker = V
    with np.errstate(over="ignore"):
        h = prev * np.uint64(0x9E3779B97F4A7C15) ^ cur
        h ^= h >> np.uint64(29)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(32)
    out = np.empty((len(cur), 2), dtype=np.int64)
    out[:, 0] = cur.astype(np.int64)
    out[:, 1] = vocab_size + (h % np.uint64(buckets)).astype(np.int64)
    return out


def read_word_vectors(path, vocab: Vocabulary, dim: int) -> tuple[torch.Tensor, int]:
    """Rows of a GloVe/word2vec text file for the words in ``vocab``.

    Returns (vectors (V, dim) float32 with zero rows for words not in the file, number found).
    A word2vec header line ``"<count> <dim>"`` is skipped. Vectors of another width are an error.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: word vector file not found")
    vectors = torch.zeros(len(vocab), dim)
    found = 0
    with open(path, encoding="utf-8", errors="strict") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip().split(" ")
            if lineno == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                continue  # word2vec header
            if len(parts) != dim + 1:
                raise UserError(f"{path} line {lineno}: expected a word and {dim} numbers, found {len(parts) - 1} numbers")
            i = vocab.index.get(parts[0])
            if i is not None and i >= len(SPECIALS):
                vectors[i] = torch.tensor([float(v) for v in parts[1:]])
                found += 1
    return vectors, found


def copy_word_vectors(weight: torch.Tensor, vocab: Vocabulary, path) -> int:
    """Overwrite the rows of an embedding ``weight`` (V, E) whose word has a vector in the GloVe /
    word2vec text file ``path`` (:func:`read_word_vectors`); the other rows keep their values.
    Returns the number of words found."""
    vectors, found = read_word_vectors(path, vocab, weight.shape[1])
    with torch.no_grad():
        rows = torch.nonzero(vectors.abs().sum(1) > 0).squeeze(1)
        weight[rows] = vectors[rows].to(weight)
    return found
