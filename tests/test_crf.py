"""rnnkit.crf: log Z and Viterbi against enumeration of every path, the path score by hand,
gradients by finite differences (float64), BIO/BIOES constraints, lengths and padding."""

import itertools
import math

import pytest
import torch
from torch import nn

from rnnkit.crf import CRF, FORBIDDEN, allowed_transitions

BIO = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def _crf(C: int, seed: int, constraints=None) -> CRF:
    torch.manual_seed(seed)
    crf = CRF(C, *(constraints or ())).double()
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_()  # larger than the default init, so paths differ clearly
    return crf


def _path_score(crf: CRF, emissions: torch.Tensor, path) -> float:
    """score(y) written out term by term from the module docstring's equation."""
    A, start, end = (x.tolist() for x in crf.constrained())
    total = start[path[0]] + end[path[-1]]
    total += sum(float(emissions[t, y]) for t, y in enumerate(path))
    total += sum(A[a][b] for a, b in zip(path, path[1:]))
    return total


def _all_paths(crf: CRF, emissions: torch.Tensor, length: int) -> dict:
    """{path: score} for all C^length paths of one row's emissions (T, C)."""
    return {path: _path_score(crf, emissions, path)
            for path in itertools.product(range(crf.num_tags), repeat=length)}


def _logsumexp(values) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


CASES = [(3, 1, [1, 1]), (3, 2, [2, 1, 2]), (4, 3, [3, 1, 2]), (3, 5, [5, 2, 1, 4]), (4, 5, [5, 3, 1])]


@pytest.mark.parametrize("C, T, lengths", CASES)
def test_log_partition_and_viterbi_equal_enumeration(C, T, lengths):
    crf = _crf(C, seed=C * 10 + T)
    emissions = torch.randn(len(lengths), T, C, dtype=torch.float64)
    lengths = torch.tensor(lengths)
    log_z = crf.log_partition(emissions, lengths)
    tags, scores = crf.viterbi(emissions, lengths)
    for b, n in enumerate(lengths.tolist()):
        paths = _all_paths(crf, emissions[b], n)
        assert log_z[b].item() == pytest.approx(_logsumexp(paths.values()), rel=1e-12)
        best = max(paths, key=paths.get)
        assert tags[b, :n].tolist() == list(best) and tags[b, n:].tolist() == [-1] * (T - n)
        assert scores[b].item() == pytest.approx(paths[best], rel=1e-12)


def test_score_by_hand():
    crf = CRF(2).double()
    with torch.no_grad():
        crf.transitions.copy_(torch.tensor([[0.1, 0.2], [0.3, 0.4]], dtype=torch.float64))
        crf.start.copy_(torch.tensor([1.0, 2.0], dtype=torch.float64))
        crf.end.copy_(torch.tensor([-1.0, -2.0], dtype=torch.float64))
    emissions = torch.tensor([[[0.5, 0.6], [0.7, 0.8], [0.9, 1.0]]] * 2, dtype=torch.float64)
    tags = torch.tensor([[0, 1, 1], [1, 0, 7]])  # row 2 has length 2: its last tag is padding
    got = crf.score(emissions, tags, torch.tensor([3, 2]))
    # row 1: start[0] + E 0.5 + 0.8 + 1.0 + A[0,1] 0.2 + A[1,1] 0.4 + end[1]
    # row 2: start[1] + E 0.6 + 0.7 + A[1,0] 0.3 + end[0]
    assert got.tolist() == pytest.approx([1.0 + 2.3 + 0.6 - 2.0, 2.0 + 1.3 + 0.3 - 1.0], rel=1e-12)


def test_nll_is_minus_log_probability_and_reduces():
    crf = _crf(3, seed=1)
    emissions, lengths = torch.randn(3, 4, 3, dtype=torch.float64), torch.tensor([4, 2, 3])
    tags = torch.randint(0, 3, (3, 4))
    per_row = crf.nll(emissions, tags, lengths, reduction="none")
    for b, n in enumerate(lengths.tolist()):
        paths = _all_paths(crf, emissions[b], n)
        probability = math.exp(paths[tuple(tags[b, :n].tolist())] - _logsumexp(paths.values()))
        assert per_row[b].item() == pytest.approx(-math.log(probability), rel=1e-10)
    assert crf.nll(emissions, tags, lengths).item() == pytest.approx(per_row.mean().item())
    assert crf(emissions, tags, lengths).item() == pytest.approx(per_row.mean().item())
    assert crf.nll(emissions, tags, lengths, reduction="sum").item() == pytest.approx(per_row.sum().item())
    with pytest.raises(ValueError, match="reduction"):
        crf.nll(emissions, tags, lengths, reduction="avg")


class _Call(nn.Module):
    """One CRF method as a module's forward, so functional_call can vary the CRF's parameters."""

    def __init__(self, crf: CRF, method: str):
        super().__init__()
        self.crf, self.method = crf, method

    def forward(self, *args):
        return getattr(self.crf, self.method)(*args)


@pytest.mark.parametrize("method", ["log_partition", "nll"])
def test_gradients_match_finite_differences(method):
    crf = _crf(3, seed=2, constraints=allowed_transitions(["O", "B-X", "I-X"], "BIO"))
    call = _Call(crf, method)
    emissions = torch.randn(3, 4, 3, dtype=torch.float64, requires_grad=True)
    lengths, tags = torch.tensor([4, 1, 3]), torch.tensor([[0, 1, 2, 0], [2, 0, 0, 0], [1, 2, 2, 9]])
    extra = (tags, lengths) if method == "nll" else (lengths,)
    params = [p.detach().clone().requires_grad_() for p in (crf.transitions, crf.start, crf.end)]

    def f(e, A, s, end):
        names = {"crf.transitions": A, "crf.start": s, "crf.end": end}
        return torch.func.functional_call(call, names, (e, *extra))

    assert torch.autograd.gradcheck(f, (emissions, *params))


def _allowed_path(path, allowed, start_ok, end_ok) -> bool:
    return bool(start_ok[path[0]] and end_ok[path[-1]] and all(allowed[a, b] for a, b in zip(path, path[1:])))


def test_allowed_transitions_bio_table():
    allowed, start_ok, end_ok = allowed_transitions(BIO, "BIO")
    # rows: from O, B-PER, I-PER, B-LOC, I-LOC; columns: to the same order
    assert allowed.int().tolist() == [[1, 1, 0, 1, 0],
                                      [1, 1, 1, 1, 0],
                                      [1, 1, 1, 1, 0],
                                      [1, 1, 0, 1, 1],
                                      [1, 1, 0, 1, 1]]
    assert start_ok.int().tolist() == [1, 1, 0, 1, 0] and end_ok.all()


def test_allowed_transitions_bioes_table():
    labels = ["O", "B-X", "I-X", "E-X", "S-X"]
    allowed, start_ok, end_ok = allowed_transitions(labels, "BIOES")
    assert allowed.int().tolist() == [[1, 1, 0, 0, 1],   # O   -> O, B, S
                                      [0, 0, 1, 1, 0],   # B-X -> I-X, E-X
                                      [0, 0, 1, 1, 0],   # I-X -> I-X, E-X
                                      [1, 1, 0, 0, 1],   # E-X -> O, B, S
                                      [1, 1, 0, 0, 1]]   # S-X -> O, B, S
    assert start_ok.int().tolist() == [1, 1, 0, 0, 1] and end_ok.int().tolist() == [1, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="tag 'E-X' is not 'O' or one of B-TYPE, I-TYPE$"):
        allowed_transitions(labels, "BIO")
    with pytest.raises(ValueError, match="scheme must be one of BIO, BIOES"):
        allowed_transitions(labels, "IOB1")


@pytest.mark.parametrize("labels, scheme", [(BIO, "BIO"), (["O", "B-X", "I-X", "E-X", "S-X"], "BIOES")])
def test_constraints_forbid_paths_in_viterbi_and_probability(labels, scheme):
    constraints = allowed_transitions(labels, scheme)
    crf = _crf(len(labels), seed=3, constraints=constraints)
    torch.manual_seed(4)
    emissions = 3 * torch.randn(6, 4, len(labels), dtype=torch.float64)
    emissions[:, :, 2] += 4.0  # pull every token towards I-*, which may not start or follow O
    lengths = torch.tensor([4, 4, 3, 2, 1, 4])
    tags, _ = crf.viterbi(emissions, lengths)
    log_z = crf.log_partition(emissions, lengths)
    for b, n in enumerate(lengths.tolist()):
        assert _allowed_path(tags[b, :n].tolist(), *constraints)
        paths = _all_paths(crf, emissions[b], n)
        valid = [s for path, s in paths.items() if _allowed_path(path, *constraints)]
        assert log_z[b].item() == pytest.approx(_logsumexp(valid), rel=1e-12)  # the rest add exactly 0
    forbidden = torch.tensor([[2] * 4])  # I-* from the first token: breaks the start constraint
    nll = crf.nll(emissions[:1], forbidden, lengths[:1])
    assert nll.item() > -FORBIDDEN / 2 and math.isfinite(nll.item())


def test_single_step_is_start_emission_end():
    crf = _crf(4, seed=5)
    emissions = torch.randn(2, 1, 4, dtype=torch.float64)
    total = crf.start + emissions[:, 0] + crf.end  # (B, C): one path per tag
    torch.testing.assert_close(crf.log_partition(emissions), torch.logsumexp(total, 1))
    tags, scores = crf.viterbi(emissions, torch.tensor([1, 1]))
    assert tags[:, 0].tolist() == total.argmax(1).tolist()
    torch.testing.assert_close(scores, total.max(1).values.detach())


def test_padding_content_changes_nothing():
    crf = _crf(3, seed=6)
    lengths = torch.tensor([5, 1, 3, 1])
    clean = torch.randn(4, 5, 3, dtype=torch.float64)
    tags = torch.randint(0, 3, (4, 5))
    dirty, dirty_tags = clean.clone(), tags.clone()
    for b, n in enumerate(lengths.tolist()):
        dirty[b, n:] = torch.tensor([math.nan, math.inf, 1e30], dtype=torch.float64)
        dirty_tags[b, n:] = -1
    results = []
    for e, y in ((clean, tags), (dirty, dirty_tags)):
        e = e.clone().requires_grad_()
        loss = crf.nll(e, y, lengths, reduction="sum")
        loss.backward()
        results.append((loss.detach(), e.grad, *crf.viterbi(e, lengths)))
    for a, b in zip(*results):  # loss, gradient, best paths, their scores: bit for bit
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    grad = results[1][1]
    assert torch.isfinite(grad).all() and grad[1, 1:].eq(0).all()
    for b, n in enumerate(lengths.tolist()):  # each row alone, unpadded, gives the same numbers
        alone = crf.log_partition(clean[b:b + 1, :n])
        torch.testing.assert_close(alone, crf.log_partition(dirty, lengths)[b:b + 1])


def test_constraints_are_saved_with_the_weights():
    crf = CRF(5, *allowed_transitions(BIO, "BIO"))
    state = crf.state_dict()
    assert sorted(state) == ["allowed", "end", "end_allowed", "start", "start_allowed", "transitions"]
    fresh = CRF(5)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.allowed, crf.allowed) and not fresh.start_allowed[2]


def test_bad_shapes_are_value_errors():
    crf = CRF(3)
    with pytest.raises(ValueError, match=r"lengths must be 2 integers in \[1, 4\], got \[0, 4\]"):
        crf.log_partition(torch.zeros(2, 4, 3), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"emissions must be \(B, T, 3\) with T >= 1, got \(2, 4, 5\)"):
        crf.viterbi(torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match=r"allowed must have shape \(3, 3\), got \(2, 2\)"):
        CRF(3, allowed=torch.ones(2, 2, dtype=torch.bool))
