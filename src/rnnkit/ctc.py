"""Connectionist temporal classification (Graves et al. 2006): decoding a network's per-frame
label distributions into label strings.

Shape letters: ``B`` batch, ``T`` frames, ``C`` classes (the labels plus the blank, id ``blank``,
0 by default). ``log_probs`` (B, T, C) are log-softmax outputs; ``lengths`` (B,) the frames of
each row.

An alignment a_1..a_T (one class per frame) reads as the labelling B(a): repeats merged, then
blanks dropped (``a-ab-`` and ``aa--b`` both read ``ab``). A labelling's probability is the sum
over its alignments, p(l | x) = sum_{a: B(a) = l} prod_t y_t[a_t]; the training loss is
-log p(l | x) (``torch.nn.functional.ctc_loss``).

- :func:`greedy_decode` reads the best alignment (the argmax of every frame): fast, and exact
  when the per-frame distributions are peaked, as a trained network's are.
- :func:`prefix_beam_search` keeps the ``beam`` most probable *labellings* so far, each with two
  probabilities, of its alignments ending in a blank (``p_b``) or in its last label (``p_nb``),
  so that every alignment of a prefix is counted once:

      blank:          p_b'(l)    += (p_b(l) + p_nb(l)) y_t[blank]
      repeat of last: p_nb'(l)   += p_nb(l) y_t[c]                 (merged: still l)
                      p_nb'(l+c) += p_b(l) y_t[c]                  (a blank between: a new c)
      another label:  p_nb'(l+c) += (p_b(l) + p_nb(l)) y_t[c]

  With a beam as wide as the number of prefixes it finds the most probable labelling exactly.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import Tensor


def collapse(alignment, blank: int = 0) -> list[int]:
    """B(a): repeats merged, then blanks dropped."""
    out, previous = [], None
    for a in alignment:
        if a != previous and a != blank:
            out.append(int(a))
        previous = a
    return out


def greedy_decode(log_probs: Tensor, lengths: Optional[Tensor] = None, blank: int = 0) -> list[list[int]]:
    """The labelling of each row's best alignment: log_probs (B, T, C), lengths (B,) -> B lists."""
    best = log_probs.argmax(-1).cpu()  # (B, T)
    lengths = [best.shape[1]] * best.shape[0] if lengths is None else torch.as_tensor(lengths).tolist()
    return [collapse(row[:n].tolist(), blank) for row, n in zip(best, lengths)]


def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


def prefix_beam_search(log_probs: Tensor, beam: int = 8, blank: int = 0,
                       prune: float = -math.inf) -> tuple[list[int], float]:
    """The most probable labelling found and its log probability, for one row's log_probs (T, C).

    ``beam``: labellings kept after each frame; ``prune``: classes whose log probability at a
    frame is below it are not tried there (``-inf``: every class). In log space throughout."""
    y = log_probs.detach().double().cpu().numpy()  # (T, C)
    NEG = -math.inf
    beams: dict[tuple, tuple[float, float]] = {(): (0.0, NEG)}  # prefix -> (log p_b, log p_nb)
    for frame in y:
        classes = [c for c in range(len(frame)) if frame[c] >= prune] or [int(np.argmax(frame))]
        grown: dict[tuple, list[float]] = {}

        def add(prefix: tuple, which: int, value: float) -> None:
            entry = grown.setdefault(prefix, [NEG, NEG])
            entry[which] = _logaddexp(entry[which], value)

        for prefix, (p_b, p_nb) in beams.items():
            total = _logaddexp(p_b, p_nb)
            for c in classes:
                p = frame[c]
                if c == blank:
                    add(prefix, 0, total + p)
                elif prefix and prefix[-1] == c:
                    add(prefix, 1, p_nb + p)
                    add(prefix + (c,), 1, p_b + p)
                else:
                    add(prefix + (c,), 1, total + p)
        ranked = sorted(grown.items(), key=lambda kv: _logaddexp(*kv[1]), reverse=True)
        beams = {prefix: (p[0], p[1]) for prefix, p in ranked[:beam]}
    prefix, (p_b, p_nb) = max(beams.items(), key=lambda kv: _logaddexp(*kv[1]))
    return list(prefix), _logaddexp(p_b, p_nb)


def beam_decode(log_probs: Tensor, lengths: Optional[Tensor] = None, beam: int = 8, blank: int = 0,
                prune: float = math.log(1e-3)) -> list[list[int]]:
    """:func:`prefix_beam_search` of each row of log_probs (B, T, C) over its ``lengths`` frames."""
    B, T, _ = log_probs.shape
    lengths = [T] * B if lengths is None else torch.as_tensor(lengths).tolist()
    return [prefix_beam_search(row[:n], beam, blank, prune)[0] for row, n in zip(log_probs, lengths)]
