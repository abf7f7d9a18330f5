"""Fused path == reference path for every configuration the predicate accepts; the predicate's table."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnkit import fused
from rnnkit.recurrent import Recurrent

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
KINDS = [("rnn", {}), ("rnn", {"nonlinearity": "relu"}), ("lstm", {}), ("gru", {})]


@pytest.fixture
def spy(monkeypatch):
    """Counts calls of ``fused.fused_forward``."""
    calls = []
    real = fused.fused_forward
    monkeypatch.setattr(fused, "fused_forward", lambda *a: calls.append(1) or real(*a))
    return calls


def set_path(module, path):
    """Pin ``"fused"`` or ``"reference"`` (``force_path`` also exists once the explicit-BPTT path does,
    and then ``use_fused=False`` alone may choose BPTT)."""
    module.use_fused = path == "fused"
    if hasattr(module, "force_path"):
        module.force_path = path


def both_paths(module, x, state, lengths):
    """(outputs, state parts, grads) from the fused and then the reference path on the same weights."""
    results = []
    for path in ("fused", "reference"):
        set_path(module, path)
        y, s = module(x, state, lengths)
        parts = s if isinstance(s, tuple) else (s,)
        g = torch.Generator().manual_seed(3)
        loss = (y * torch.randn(y.shape, generator=g).to(y)).sum()
        loss = loss + sum((p * torch.randn(p.shape, generator=g).to(p)).sum() for p in parts)
        leaves = [x] + [p for p in ((state,) if isinstance(state, torch.Tensor) else state or ()) if p.requires_grad]
        grads = torch.autograd.grad(loss, leaves + list(module.parameters()))
        results.append((y, parts, grads))
    return results


def assert_paths_agree(module, x, state=None, lengths=None, atol=1e-5):
    (y1, s1, g1), (y2, s2, g2) = both_paths(module, x, state, lengths)
    torch.testing.assert_close(y1, y2, rtol=0, atol=atol)
    for a, b in zip(s1, s2):
        torch.testing.assert_close(a, b, rtol=0, atol=atol)
    assert len(g1) == len(g2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=0, atol=atol)


SWEEP = list(itertools.product(KINDS, [1, 2], [False, True], [False, True]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind,L,bidirectional,with_lengths", SWEEP, ids=lambda v: str(v))
def test_fused_equals_reference(kind, L, bidirectional, with_lengths, device, spy):
    cell, kwargs = kind
    torch.manual_seed(0)
    module = Recurrent(cell, 3, 5, L, bidirectional=bidirectional, **kwargs).to(device)
    x = torch.randn(4, 6, 3, device=device, requires_grad=True)
    n = L * module.num_directions
    state = tuple(torch.randn(n, 4, 5, device=device, requires_grad=True) for _ in range(module.state_size))
    state = state if cell == "lstm" else state[0]
    lengths = torch.tensor([6, 3, 1, 5]) if with_lengths else None
    assert fused.fused_unsupported_reason(module, x) is None
    assert_paths_agree(module, x, state, lengths)
    assert len(spy) == 1  # the first pass really took the fused kernel


@pytest.mark.parametrize("options", [
    {"bias": False},
    {"bidirectional": True, "merge_mode": "sum"},
    {"bidirectional": True, "merge_mode": "mul", "num_layers": 2},
    {"forget_bias": 1.0},
], ids=str)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_fused_equals_reference_other_options(cell, options, spy):
    torch.manual_seed(1)
    module = Recurrent(cell, 3, 4, **options)
    assert_paths_agree(module, torch.randn(3, 5, 3, requires_grad=True), None, torch.tensor([5, 2, 4]))
    assert len(spy) == 1


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_fused_equals_reference_in_eval_with_dropouts(cell, spy):
    """Eval mode switches both dropouts off, so the predicate accepts recurrent_dropout > 0 there."""
    torch.manual_seed(2)
    module = Recurrent(cell, 3, 4, 3, bidirectional=True, dropout=0.5, recurrent_dropout=0.5).eval()
    assert_paths_agree(module, torch.randn(2, 4, 3, requires_grad=True), None, torch.tensor([4, 2]))
    assert len(spy) == 1


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_fused_equals_reference_float64(cell):
    torch.manual_seed(3)
    module = Recurrent(cell, 3, 4, 2, bidirectional=True).double()
    x = torch.randn(3, 5, 3, dtype=torch.float64, requires_grad=True)
    assert_paths_agree(module, x, None, torch.tensor([5, 1, 3]), atol=1e-12)


def test_fused_bfloat16_close_to_reference():
    torch.manual_seed(4)
    module = Recurrent("lstm", 3, 4, 2, bidirectional=True).to(torch.bfloat16)
    x = torch.randn(3, 5, 3, dtype=torch.bfloat16)
    with torch.no_grad():
        set_path(module, "fused")
        y1, _ = module(x)
        set_path(module, "reference")
        y2, _ = module(x)
    torch.testing.assert_close(y1.float(), y2.float(), rtol=0, atol=2e-2)


def test_fused_dropout_between_layers_is_applied_in_training():
    """Training dropout between layers: the kernel draws its own masks (values differ from the
    reference path by design), but it must drop: outputs change with the seed and differ from eval."""
    module = Recurrent("gru", 3, 8, 2, dropout=0.5, use_fused=True)
    x = torch.randn(2, 4, 3)
    outs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        outs.append(module(x)[0])
    assert not torch.allclose(outs[0], outs[1])
    module.eval()
    set_path(module, "reference")
    assert not torch.allclose(outs[0], module(x)[0])


@settings(max_examples=20, deadline=None)
@given(
    kind=st.sampled_from(KINDS), B=st.integers(1, 4), T=st.integers(1, 5), F=st.integers(1, 4), H=st.integers(1, 4),
    L=st.integers(1, 3), bidirectional=st.booleans(), bias=st.booleans(), data=st.data(),
)
def test_property_fused_equals_reference(kind, B, T, F, H, L, bidirectional, bias, data):
    cell, kwargs = kind
    torch.manual_seed(data.draw(st.integers(0, 1000)))
    merge_mode = data.draw(st.sampled_from(["concat", "sum", "mean", "mul"]))
    module = Recurrent(cell, F, H, L, bias=bias, bidirectional=bidirectional, merge_mode=merge_mode, **kwargs)
    x = torch.randn(B, T, F, requires_grad=True)
    lengths = data.draw(st.none() | st.lists(st.integers(1, T), min_size=B, max_size=B))
    assert fused.fused_unsupported_reason(module, x) is None
    assert_paths_agree(module, x, None, None if lengths is None else torch.tensor(lengths))


# -- the predicate ------------------------------------------------------------------------------
TABLE = [
    # (Recurrent options, training, dtype, expected reason or None)
    ({"cell": "lstm"}, True, torch.float32, None),
    ({"cell": "gru"}, True, torch.float64, None),
    ({"cell": "rnn", "nonlinearity": "relu"}, True, torch.bfloat16, None),
    ({"cell": "lstm", "dropout": 0.5, "num_layers": 2}, True, torch.float32, None),
    ({"cell": "lstm", "layer_norm": True}, False, torch.float32, "layer_norm=True is not in torch's fused kernels"),
    ({"cell": "gru", "layer_norm": True}, True, torch.float32, "layer_norm=True is not in torch's fused kernels"),
    ({"cell": "lstm", "recurrent_dropout": 0.2}, True, torch.float32,
     "recurrent_dropout > 0 while training is not in torch's fused kernels"),
    ({"cell": "lstm", "recurrent_dropout": 0.2}, False, torch.float32, None),
    ({"cell": "gru", "reset_after": False}, False, torch.float32,
     "GRU with reset_after=False is not in torch's fused kernels (they compute reset_after=True)"),
    ({"cell": "lstm", "reset_after": False}, True, torch.float32, None),  # reset_after only concerns GRU
    ({"cell": "rnn"}, True, torch.float16, "dtype torch.float16 is not supported by the fused kernel on cpu"),
]


@pytest.mark.parametrize("options,training,dtype,reason", TABLE, ids=str)
def test_predicate_truth_table(options, training, dtype, reason):
    options = dict(options)
    module = Recurrent(options.pop("cell"), 3, 4, **options).to(dtype).train(training)
    x = torch.randn(2, 3, 3, dtype=dtype)
    assert fused.fused_unsupported_reason(module, x) == reason
    if reason is not None:
        module.use_fused = True
        with pytest.raises(RuntimeError, match="use_fused=True but this configuration has no fused kernel: " + reason.replace("(", r"\(").replace(")", r"\)")):
            module(x)


@pytest.mark.parametrize("options,training,dtype,reason", TABLE, ids=str)
def test_use_fused_false_never_calls_the_kernel(options, training, dtype, reason, monkeypatch):
    def boom(*args):
        raise AssertionError("fused path called")

    monkeypatch.setattr(fused, "fused_forward", boom)
    monkeypatch.setattr(fused, "_kernel", boom)
    options = dict(options)
    module = Recurrent(options.pop("cell"), 3, 4, use_fused=False, **options).to(dtype).train(training)
    y, _ = module(torch.randn(2, 3, 3, dtype=dtype), lengths=[3, 2])
    assert y.shape == (2, 3, 4)
    module.use_fused = True if reason is None else "auto"
    if reason is None:
        with pytest.raises(AssertionError, match="fused path called"):
            module(torch.randn(2, 3, 3, dtype=dtype))
    else:
        module(torch.randn(2, 3, 3, dtype=dtype))  # auto never takes the kernel the predicate refuses


def test_use_fused_value_is_checked():
    with pytest.raises(ValueError, match="use_fused must be 'auto', True or False, got 'yes'"):
        Recurrent("lstm", 3, 4, use_fused="yes")
