"""Linear-chain conditional random field (CRF): the output layer of a sequence tagger.

Batch-first. Shape letters: ``B`` batch, ``T`` time (tokens), ``C`` tags (classes).
``emissions`` (B, T, C) are per-token tag scores from the network below (e.g. a BiLSTM);
``lengths`` (B,) give each row's number of real tokens (1 <= length <= T; positions at and past
a row's length are padding and never read); ``tags`` (B, T) are tag ids.

For a row of length n with tags y_1..y_n, emissions E and transition scores A[i, j] (from tag i
to tag j), the path score and the log partition function are

    score(y) = start[y_1] + sum_{t=1..n} E[t, y_t] + sum_{t=2..n} A[y_{t-1}, y_t] + end[y_n]
    log Z    = logsumexp over all C^n paths y of score(y)

and the model's probability of a path is p(y) = exp(score(y) - log Z). Training minimises the
negative log-likelihood log Z - score(gold); decoding takes the highest-scoring path (Viterbi).
Both recursions are vectorised over B and C and loop over T only:

    alpha_1[j] = start[j] + E[1, j]
    alpha_t[j] = logsumexp_i (alpha_{t-1}[i] + A[i, j]) + E[t, j]     (max_i for Viterbi)
    log Z      = logsumexp_j (alpha_n[j] + end[j])

Constraints (BIO/BIOES: ``O -> I-PER`` is not a valid transition) are boolean masks; a forbidden
transition, start or end scores ``FORBIDDEN`` (-1e4) in place of its learned value. A large
finite value rather than -inf keeps log Z, the NLL and their gradients finite even for a gold
path that breaks a constraint or a row whose every path does (a logsumexp over all -inf has a NaN
gradient), while exp(-1e4) is exactly 0 in float32 and float64: as long as the scores of allowed
paths stay far above -1e4 (emissions are O(10) in practice), forbidden paths get probability 0
and Viterbi never picks one while an allowed path exists.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

FORBIDDEN = -1e4  # score of a forbidden transition/start/end (see the module docstring)
SCHEMES = ("BIO", "BIOES")


class CRF(nn.Module):
    """Linear-chain CRF over ``num_tags`` (C) tags; the equations are in the module docstring.

    Parameters: ``transitions`` (C, C) [from i, to j], ``start`` (C,), ``end`` (C,).
    Buffers (saved with the weights, so a loaded model keeps its constraints): ``allowed``
    (C, C) bool, ``start_allowed`` (C,) bool, ``end_allowed`` (C,) bool; all True unless given,
    e.g. from :func:`allowed_transitions`.
    """

    def __init__(self, num_tags: int, allowed: Optional[Tensor] = None,
                 start_allowed: Optional[Tensor] = None, end_allowed: Optional[Tensor] = None):
        super().__init__()
        if num_tags < 1:
            raise ValueError(f"num_tags must be at least 1, got {num_tags}")
        self.num_tags = num_tags
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags))
        self.start = nn.Parameter(torch.empty(num_tags))
        self.end = nn.Parameter(torch.empty(num_tags))
        for name, mask, shape in (("allowed", allowed, (num_tags, num_tags)),
                                  ("start_allowed", start_allowed, (num_tags,)),
                                  ("end_allowed", end_allowed, (num_tags,))):
            mask = torch.ones(shape, dtype=torch.bool) if mask is None else torch.as_tensor(mask, dtype=torch.bool)
            if tuple(mask.shape) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(mask.shape)}")
            self.register_buffer(name, mask.clone())
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every score ~ U(-0.1, 0.1): small, so the emissions decide at the start of training."""
        for p in self.parameters():
            nn.init.uniform_(p, -0.1, 0.1)

    def constrained(self) -> tuple[Tensor, Tensor, Tensor]:
        """(transitions (C, C), start (C,), end (C,)) with forbidden entries set to FORBIDDEN."""
        return (self.transitions.masked_fill(~self.allowed, FORBIDDEN),
                self.start.masked_fill(~self.start_allowed, FORBIDDEN),
                self.end.masked_fill(~self.end_allowed, FORBIDDEN))

    def forward(self, emissions: Tensor, tags: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """The training loss: :meth:`nll` averaged over the batch, a scalar."""
        return self.nll(emissions, tags, lengths)

    def log_partition(self, emissions: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """log Z (B,) of emissions (B, T, C) by the forward algorithm; lengths (B,), None = all T."""
        emissions, mask = self._prepare(emissions, lengths)
        transitions, start, end = self.constrained()
        alpha = start + emissions[:, 0]  # (B, C)
        for t in range(1, emissions.shape[1]):
            step = torch.logsumexp(alpha.unsqueeze(2) + transitions, dim=1) + emissions[:, t]  # (B, C)
            alpha = torch.where(mask[:, t, None], step, alpha)  # a finished row keeps its alpha
        return torch.logsumexp(alpha + end, dim=1)

    def score(self, emissions: Tensor, tags: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """score(y) (B,) of the paths ``tags`` (B, T) under emissions (B, T, C); lengths (B,)."""
        emissions, mask = self._prepare(emissions, lengths)
        tags = tags.masked_fill(~mask, 0)  # padding may hold anything, even -1
        transitions, start, end = self.constrained()
        emitted = emissions.gather(2, tags.unsqueeze(2)).squeeze(2)  # (B, T)
        moved = transitions[tags[:, :-1], tags[:, 1:]].masked_fill(~mask[:, 1:], 0.0)  # (B, T-1)
        last = tags.gather(1, (mask.sum(1, keepdim=True) - 1)).squeeze(1)  # (B,)
        return start[tags[:, 0]] + emitted.masked_fill(~mask, 0.0).sum(1) + moved.sum(1) + end[last]

    def nll(self, emissions: Tensor, tags: Tensor, lengths: Optional[Tensor] = None,
            reduction: str = "mean") -> Tensor:
        """Negative log-likelihood log Z - score(tags): (B,) for ``"none"``, else its mean or sum."""
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        loss = self.log_partition(emissions, lengths) - self.score(emissions, tags, lengths)
        return loss if reduction == "none" else loss.mean() if reduction == "mean" else loss.sum()

    @torch.no_grad()
    def viterbi(self, emissions: Tensor, lengths: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """The best path of each row: ``(tags (B, T) int64, scores (B,))``.

        ``tags[b, :lengths[b]]`` is row b's highest-scoring path; positions past its length hold
        -1. ``scores`` are those paths' scores (equal to :meth:`score` of them). One row as a list:
        ``tags[b, :lengths[b]].tolist()``.
        """
        emissions, mask = self._prepare(emissions, lengths)
        transitions, start, end = self.constrained()
        B, T, C = emissions.shape
        stay = torch.arange(C, device=emissions.device).expand(B, C)  # back-pointer "same tag"
        best = start + emissions[:, 0]  # (B, C)
        pointers = []
        for t in range(1, T):
            step, came_from = (best.unsqueeze(2) + transitions).max(dim=1)  # (B, C) each
            best = torch.where(mask[:, t, None], step + emissions[:, t], best)
            pointers.append(torch.where(mask[:, t, None], came_from, stay))  # padding points to itself
        scores, tag = (best + end).max(dim=1)  # (B,)
        path = [tag]
        for came_from in reversed(pointers):
            tag = came_from.gather(1, tag.unsqueeze(1)).squeeze(1)
            path.append(tag)
        tags = torch.stack(path[::-1], dim=1)  # (B, T)
        return tags.masked_fill(~mask, -1), scores

    def _prepare(self, emissions: Tensor, lengths: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """Checked emissions with padding zeroed (NaN there must not reach a gradient) and the
        (B, T) bool mask of real tokens."""
        if emissions.dim() != 3 or emissions.shape[2] != self.num_tags or emissions.shape[1] < 1:
            raise ValueError(f"emissions must be (B, T, {self.num_tags}) with T >= 1, got {tuple(emissions.shape)}")
        B, T, _ = emissions.shape
        if lengths is None:
            return emissions, torch.ones(B, T, dtype=torch.bool, device=emissions.device)
        lengths = torch.as_tensor(lengths, device=emissions.device)
        if lengths.shape != (B,) or bool(((lengths < 1) | (lengths > T)).any()):
            raise ValueError(f"lengths must be {B} integers in [1, {T}], got {lengths.tolist()}")
        mask = torch.arange(T, device=emissions.device) < lengths.unsqueeze(1)  # (B, T)
        return emissions.masked_fill(~mask.unsqueeze(2), 0.0), mask


def allowed_transitions(labels: Sequence[str], scheme: str) -> tuple[Tensor, Tensor, Tensor]:
    """The valid moves between tags of a BIO (IOB2) or BIOES tag set, for :class:`CRF`.

    ``labels`` (C,) are ``"O"`` and ``"B-X"``, ``"I-X"`` (and ``"E-X"``, ``"S-X"`` for BIOES).
    Returns ``(allowed (C, C), start_allowed (C,), end_allowed (C,))``, bool:

    - BIO: ``I-X`` may only follow ``B-X`` or ``I-X``, so it cannot start a sentence either;
      anything may end one.
    - BIOES: after ``B-X`` or ``I-X`` only ``I-X`` or ``E-X``; after ``O``, ``E-X`` or ``S-X``
      only ``O``, ``B-Y`` or ``S-Y``; a sentence starts like after ``O`` and ends like before it.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    parsed = [_prefix_and_type(label, "BIO" if scheme == "BIO" else "BIOES") for label in labels]
    inside = {"B", "I"} if scheme == "BIOES" else set()  # states that must continue their entity

    def may_follow(previous, current) -> bool:
        (p, p_type), (c, c_type) = previous, current
        continues = c in ("I", "E") and p in ("B", "I") and p_type == c_type
        if c in ("I", "E"):
            return continues
        return p not in inside

    outside = ("O", "")
    allowed = torch.tensor([[may_follow(p, c) for c in parsed] for p in parsed], dtype=torch.bool)
    start_ok = torch.tensor([may_follow(outside, c) for c in parsed], dtype=torch.bool)
    end_ok = torch.tensor([p[0] not in inside for p in parsed], dtype=torch.bool)
    return allowed.reshape(len(parsed), len(parsed)), start_ok, end_ok


def _prefix_and_type(label: str, prefixes: str) -> tuple[str, str]:
    """``"B-PER"`` -> ``("B", "PER")``, ``"O"`` -> ``("O", "")``; ValueError for another shape."""
    if label == "O":
        return "O", ""
    prefix, dash, kind = label.partition("-")
    if not dash or not kind or prefix not in prefixes or prefix == "O":
        expected = ", ".join(f"{p}-TYPE" for p in prefixes if p != "O")
        raise ValueError(f"tag {label!r} is not 'O' or one of {expected}")
    return prefix, kind
