"""CTC: the labelling of an alignment, greedy decoding, prefix beam search against brute-force
enumeration of every alignment on small cases, and torch's CTC loss against the same sum."""

import itertools
import math

import numpy as np
import pytest
import torch

from rnnkit.ctc import beam_decode, collapse, greedy_decode, prefix_beam_search


def brute_force(log_probs: torch.Tensor, blank: int = 0) -> dict:
    """{labelling: log p(labelling)} summed over all C^T alignments of log_probs (T, C)."""
    T, C = log_probs.shape
    probs = log_probs.double().exp().numpy()
    total: dict = {}
    for alignment in itertools.product(range(C), repeat=T):
        p = float(np.prod([probs[t, a] for t, a in enumerate(alignment)]))
        key = tuple(collapse(alignment, blank))
        total[key] = total.get(key, 0.0) + p
    return {k: math.log(v) for k, v in total.items()}


def random_log_probs(T, C, seed, sharpness=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(sharpness * torch.randn(T, C, generator=g, dtype=torch.float64), -1)


def test_collapse_merges_repeats_then_drops_blanks():
    assert collapse([1, 1, 0, 1, 2, 2, 0]) == [1, 1, 2]
    assert collapse([0, 0, 0]) == []
    assert collapse([3, 3, 3], blank=3) == []
    assert collapse([2, 0, 2, 2, 1]) == [2, 2, 1]


def test_greedy_reads_each_rows_argmax_within_its_length():
    ids = torch.tensor([[1, 1, 0, 2, 2, 1], [0, 2, 0, 2, 1, 1]])
    log_probs = torch.log_softmax(10.0 * torch.nn.functional.one_hot(ids, 3).double(), -1)
    assert greedy_decode(log_probs) == [[1, 2, 1], [2, 2, 1]]
    assert greedy_decode(log_probs, torch.tensor([3, 4])) == [[1], [2, 2]]


@pytest.mark.parametrize("seed", range(6))
def test_wide_prefix_beam_search_finds_the_brute_force_best_labelling(seed):
    T, C = 5, 3
    log_probs = random_log_probs(T, C, seed)
    exact = brute_force(log_probs)
    best = max(exact, key=exact.get)
    found, score = prefix_beam_search(log_probs, beam=C**T)
    assert tuple(found) == best
    assert score == pytest.approx(exact[best], abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_every_labelling_score_of_a_narrow_beam_is_its_exact_probability(seed):
    """A beam may miss the best labelling, but the probability it reports is the labelling's whole sum."""
    log_probs = random_log_probs(6, 3, 10 + seed)
    exact = brute_force(log_probs)
    found, score = prefix_beam_search(log_probs, beam=2)
    assert score <= max(exact.values()) + 1e-12
    assert score <= exact[tuple(found)] + 1e-9  # pruned alignments can only lower it


@pytest.mark.parametrize("seed", range(20))
def test_beam_one_equals_greedy_on_peaked_frames(seed):
    """When every frame's best class has probability > 0.9 (as a trained network's do), the best
    alignment's labelling is what a beam of one keeps (with flatter frames they may differ: a beam
    sums a prefix's alignments, greedy reads one)."""
    g = torch.Generator().manual_seed(seed)
    T, C = 12, 5
    ids = torch.randint(0, C, (T,), generator=g)
    logits = torch.randn(T, C, generator=g, dtype=torch.float64)
    logits[torch.arange(T), ids] += 8.0
    log_probs = torch.log_softmax(logits, -1)
    assert bool((log_probs.exp().max(-1).values > 0.9).all())
    assert prefix_beam_search(log_probs, beam=1)[0] == greedy_decode(log_probs[None])[0]


def test_beam_decode_respects_lengths_and_matches_one_row_search():
    rows = torch.stack([random_log_probs(7, 4, s, sharpness=3.0) for s in range(3)])
    lengths = torch.tensor([7, 4, 5])
    got = beam_decode(rows, lengths, beam=4, prune=-math.inf)
    assert got == [prefix_beam_search(r[:n], 4)[0] for r, n in zip(rows, lengths.tolist())]


@pytest.mark.parametrize("target", [(1,), (1, 2), (2, 2), (1, 2, 1)])
def test_torch_ctc_loss_is_minus_the_log_of_the_brute_force_sum(target):
    T, C = 5, 3
    log_probs = random_log_probs(T, C, 3)
    loss = torch.nn.functional.ctc_loss(log_probs[:, None], torch.tensor([target]), torch.tensor([T]),
                                        torch.tensor([len(target)]), reduction="none")
    assert float(loss[0]) == pytest.approx(-brute_force(log_probs)[target], abs=1e-9)
