"""Text as token ids: vocabularies and the corpus as B contiguous streams for truncated BPTT.

``CharVocab`` maps characters to ids (sorted, so the same text always gives the same ids);
``WordVocab`` does the same for words and whitespace runs (a lossless split, so ``decode``
rebuilds the text exactly). Both round-trip through ``to_dict``/``from_dict`` (JSON-able).

``TextStream`` serves one split of a corpus as batches (see its docstring); ``split_text``
cuts a corpus by position (first part train, last part validation).
"""

from __future__ import annotations

import re
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from rnnkit.data.batching import Batch
from rnnkit.errors import UserError

_WORD_RE = re.compile(r"\w+|\s+|[^\w\s]")


class CharVocab:
    """Characters <-> ids. ``tokens[i]`` is the character with id i (sorted by code point)."""

    level = "char"

    def __init__(self, tokens: Sequence[str]):
        self.tokens = list(tokens)
        self.index = {t: i for i, t in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise ValueError("vocabulary tokens must be distinct")

    @classmethod
    def from_text(cls, text: str) -> "CharVocab":
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.tokens)

    def split(self, text: str) -> list:
        """The tokens of ``text`` (characters here; words and separators for WordVocab)."""
        return list(text)

    def unknown(self, text: str) -> list:
        """Tokens of ``text`` missing from the vocabulary, in order of first appearance."""
        seen = dict.fromkeys(t for t in self.split(text) if t not in self.index)
        return list(seen)

    def encode(self, text: str, what: str = "text") -> Tensor:
        """``text`` -> (N,) int64 ids; unknown tokens are a UserError naming them."""
        missing = self.unknown(text)
        if missing:
            shown = ", ".join(repr(t) for t in missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise UserError(f"{what} has {len(missing)} {self.level}(s) not in the model's vocabulary: {shown}")
        ids = [self.index[t] for t in self.split(text)]
        return torch.tensor(ids, dtype=torch.int64)

    def decode(self, ids) -> str:
        """(N,) ids -> text."""
        ids = ids.tolist() if isinstance(ids, Tensor) else ids
        return "".join(self.tokens[i] for i in ids)

    def to_dict(self) -> dict:
        return {"level": self.level, "tokens": list(self.tokens)}

    @staticmethod
    def from_dict(d: dict) -> "CharVocab":
        """Rebuild a CharVocab or WordVocab from ``to_dict`` output."""
        levels = {"char": CharVocab, "word": WordVocab}
        if d.get("level") not in levels:
            raise UserError(f"vocabulary level must be one of {', '.join(levels)}, got {d.get('level')!r}")
        return levels[d["level"]](d["tokens"])


class WordVocab(CharVocab):
    """Words, single punctuation marks and whitespace runs <-> ids (lossless tokenisation)."""

    level = "word"

    @classmethod
    def from_text(cls, text: str) -> "WordVocab":
        return cls(sorted(set(_WORD_RE.findall(text))))

    def split(self, text: str) -> list:
        return _WORD_RE.findall(text)


def make_vocab(text: str, level: str) -> CharVocab:
    if level == "char":
        return CharVocab.from_text(text)
    if level == "word":
        return WordVocab.from_text(text)
    raise UserError(f"level must be 'char' or 'word', got {level!r}")


def split_text(ids: Tensor, val_fraction: float) -> tuple[Tensor, Optional[Tensor]]:
    """Split (N,) ids by position: the first 1 - val_fraction for training, the rest for validation."""
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = int(round(len(ids) * val_fraction))
    if n_val == 0:
        return ids, None
    if n_val < 2 or len(ids) - n_val < 2:
        raise UserError(f"text of {len(ids)} tokens is too short for val_fraction={val_fraction}")
    return ids[:-n_val], ids[-n_val:]


def _epoch_rng(epoch: int, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, 0x7E47])


class TextStream:
    """One split of a corpus served as batches; a BatchSource (same (epoch, seed) -> same batches).

    ``mode="streams"`` (truncated BPTT, char-rnn's loader): the N - 1 (input, next-token) pairs
    are cut into B contiguous streams of equal length S; batch k holds steps [k*T, (k+1)*T) of
    every stream, so row i of batch k+1 continues row i of batch k and ``carries_state`` is set.
    In training (``shuffle=True``) each epoch starts at a random offset in [0, slack] (slack =
    the pairs left over by the B*T grid), a function of (epoch, seed) only, so every epoch sees
    different chunk boundaries. Without shuffle, offset 0 and the last, shorter chunk is kept:
    with B=1 every pair is visited exactly once (the full validation pass).

    ``mode="windows"`` (the tutorials' way, for tiny texts): every window of T + 1 tokens at
    stride 1 is one sequence starting from a zero state; windows are shuffled per epoch.

    Batches: inputs (B, T) int64 ids, targets (B, T) the next ids.
    """

    def __init__(self, ids: Tensor, batch_size: int, seq_len: int, mode: str = "streams", shuffle: bool = True):
        if mode not in ("streams", "windows"):
            raise UserError(f"batching mode must be 'streams' or 'windows', got {mode!r}")
        if batch_size < 1 or seq_len < 1:
            raise UserError(f"batch_size and seq_len must be positive, got {batch_size} and {seq_len}")
        self.ids = torch.as_tensor(ids, dtype=torch.int64)
        self.batch_size, self.seq_len, self.mode, self.shuffle = batch_size, seq_len, mode, shuffle
        pairs = len(self.ids) - 1
        if mode == "windows":
            self.num_windows = pairs - seq_len + 1
            if self.num_windows < 1:
                raise UserError(f"text of {len(self.ids)} tokens is shorter than one window of seq_len+1={seq_len + 1}")
            return
        if pairs < batch_size:
            raise UserError(f"text of {len(self.ids)} tokens is too short for {batch_size} streams")
        if shuffle:
            self.chunks = pairs // (batch_size * seq_len)
            if self.chunks == 0:  # a short text: one chunk as long as the streams allow
                self.seq_len = pairs // batch_size
                self.chunks = 1
            self.stream_len = self.chunks * self.seq_len
        else:
            self.stream_len = pairs // batch_size
            self.chunks = -(-self.stream_len // seq_len)

    def __len__(self) -> int:
        if self.mode == "windows":
            return -(-self.num_windows // self.batch_size)
        return self.chunks

    @property
    def num_tokens(self) -> int:
        """Target tokens per epoch."""
        if self.mode == "windows":
            return self.num_windows * self.seq_len
        return self.batch_size * self.stream_len

    def epoch(self, epoch: int, seed: int) -> Iterator[Batch]:
        if self.mode == "windows":
            yield from self._windows(epoch, seed)
            return
        B, S, T = self.batch_size, self.stream_len, self.seq_len
        offset = 0
        if self.shuffle:
            slack = len(self.ids) - 1 - B * S
            offset = int(_epoch_rng(epoch, seed).integers(0, slack + 1))
        x = self.ids[offset : offset + B * S].view(B, S)  # (B, S)
        y = self.ids[offset + 1 : offset + B * S + 1].view(B, S)
        for k in range(self.chunks):
            yield Batch(x[:, k * T : (k + 1) * T], y[:, k * T : (k + 1) * T], carries_state=True)

    def _windows(self, epoch: int, seed: int) -> Iterator[Batch]:
        T = self.seq_len
        starts = np.arange(self.num_windows)
        if self.shuffle:
            starts = _epoch_rng(epoch, seed).permutation(starts)
        span = torch.arange(T + 1)
        for k in range(0, len(starts), self.batch_size):
            idx = torch.as_tensor(starts[k : k + self.batch_size]).unsqueeze(1) + span  # (B, T+1)
            w = self.ids[idx]
            yield Batch(w[:, :-1], w[:, 1:], carries_state=False)
