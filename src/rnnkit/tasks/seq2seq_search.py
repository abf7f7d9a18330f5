"""Decoding a :class:`~rnnkit.tasks.seq2seq_model.Seq2SeqNet`: greedy and batched beam search.

Both run the network one step at a time with its state carried (``net.step``), from BOS until
EOS or ``max_length`` tokens, and never choose PAD or BOS (no target holds them). A hypothesis' score is the sum of its tokens' log-probabilities,
EOS included; beam search ranks finished hypotheses by ``score / length ** length_penalty``
(length counts EOS; 0 ranks by the raw score, 1 by the mean per token).

Beam search (as fairseq's): every row keeps ``beam`` live hypotheses. Each step takes the best
2 * beam continuations of all of them; an EOS among the first ``beam`` finishes a hypothesis,
and the best ``beam`` others go on. A sentence is done when it has ``beam`` finished
hypotheses; at ``max_length`` its live ones count as finished (without EOS).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from rnnkit.tasks.seq2seq_model import BOS, EOS, PAD, Seq2SeqNet


def _bos(n: int, device) -> Tensor:
    return torch.full((n,), BOS, dtype=torch.int64, device=device)


def _step(net: Seq2SeqNet, previous: Tensor, state):
    """net.step with PAD and BOS ruled out: (log-probabilities (N, V), state)."""
    log_probs, state, _ = net.step(previous, state)
    log_probs[:, PAD] = log_probs[:, BOS] = float("-inf")
    return log_probs, state


@torch.no_grad()
def greedy(net: Seq2SeqNet, source: Tensor, lengths: Optional[Tensor], max_length: int) -> list[tuple[list, float]]:
    """(token ids without BOS/EOS, score) per source row (N, S): the most likely token each step."""
    state = net.start(source, lengths)
    N = source.shape[0]
    previous, done = _bos(N, source.device), torch.zeros(N, dtype=torch.bool, device=source.device)
    scores, tokens = torch.zeros(N, device=source.device), []
    for _ in range(max_length):
        log_probs, state = _step(net, previous, state)  # (N, V)
        best, previous = log_probs.max(-1)
        scores += best.masked_fill(done, 0.0)
        tokens.append(previous.masked_fill(done, EOS))
        done |= previous == EOS
        if bool(done.all()):
            break
    out = []
    for row, ids in enumerate(torch.stack(tokens, 1).tolist()):
        ids = ids[: ids.index(EOS)] if EOS in ids else ids
        out.append((ids, float(scores[row])))
    return out


def _normalised(score: float, length: int, length_penalty: float) -> float:
    return score / max(length, 1) ** length_penalty


@torch.no_grad()
def beam_search(net: Seq2SeqNet, source: Tensor, lengths: Optional[Tensor], beam: int, max_length: int,
                length_penalty: float = 1.0) -> list[tuple[list, float]]:
    """(token ids without BOS/EOS, raw score) of the best finished hypothesis per source row."""
    N, K, device = source.shape[0], beam, source.device
    state = net.start(source, lengths).select(torch.arange(N, device=device).repeat_interleave(K))  # N*K rows
    scores = torch.full((N, K), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live hypothesis to start: the K copies would only repeat it
    sequences = torch.zeros(N * K, 0, dtype=torch.int64, device=device)
    previous = _bos(N * K, device)
    finished: list[list] = [[] for _ in range(N)]  # (normalised, raw score, ids)
    done = [False] * N
    for t in range(max_length):
        log_probs, state = _step(net, previous, state)  # (N*K, V)
        V = log_probs.shape[-1]
        candidates = (scores.view(-1, 1) + log_probs).view(N, K * V)
        top, index = candidates.topk(min(2 * K, K * V), dim=1)  # (N, 2K), best first
        origin, token = index // V, index % V
        is_eos = token == EOS
        for n, k in (is_eos[:, :K] & torch.isfinite(top[:, :K])).nonzero().tolist():
            if not done[n]:
                ids = sequences[n * K + origin[n, k]].tolist()
                finished[n].append((_normalised(float(top[n, k]), t + 1, length_penalty), float(top[n, k]), ids))
        for n in range(N):
            done[n] = done[n] or len(finished[n]) >= K
        if all(done):
            break
        keep = (~is_eos) & ((~is_eos).cumsum(1) <= K)  # the best K that go on (at least K of 2K are not EOS)
        rows = keep.nonzero()[:, 0].view(N, K)
        cols = keep.nonzero()[:, 1].view(N, K)
        scores = top[rows, cols]  # (N, K)
        parent = (origin[rows, cols] + torch.arange(N, device=device).unsqueeze(1) * K).view(-1)  # (N*K,)
        previous = token[rows, cols].view(-1)
        sequences = torch.cat([sequences[parent], previous.unsqueeze(1)], 1)
        state = state.select(parent)
    out = []
    for n in range(N):
        hypotheses = finished[n]
        if len(hypotheses) < K:  # out of steps: the live hypotheses count too, without EOS
            for k in range(K):
                score = float(scores[n, k])
                if score > float("-inf"):
                    ids = sequences[n * K + k].tolist()
                    hypotheses.append((_normalised(score, len(ids), length_penalty), score, ids))
        best = max(hypotheses, key=lambda h: h[0])
        out.append((best[2], best[1]))
    return out


def translate_ids(net: Seq2SeqNet, source: Tensor, lengths: Optional[Tensor], beam: int, max_length: int,
                  length_penalty: float = 1.0) -> list[tuple[list, float]]:
    """Greedy for ``beam`` 1, else beam search; the network in eval mode."""
    was_training = net.training
    net.eval()
    try:
        if beam <= 1:
            return greedy(net, source, lengths, max_length)
        return beam_search(net, source, lengths, beam, max_length, length_penalty)
    finally:
        net.train(was_training)
