"""minGRU / minLSTM: the parallel log-space scan equals the sequential cells (float64)."""

import pytest
import torch

from rnnkit import Recurrent, cells, scan
from rnnkit.models import ModelConfig

CELLS = ["mingru", "minlstm"]


def _layer(cell, **kw):
    torch.manual_seed(0)
    return Recurrent(cell, 3, 4, **kw).double()


def _run(layer, path, x, h0=None, lengths=None):
    layer.zero_grad()
    layer.force_path = path
    x = x.clone().requires_grad_()
    h0 = None if h0 is None else h0.clone().requires_grad_()
    y, h = layer(x, h0, lengths)
    g = torch.Generator().manual_seed(1)
    loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum() + (h * torch.randn(h.shape, generator=g, dtype=h.dtype)).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    grads["x"] = x.grad
    if h0 is not None:
        grads["h0"] = h0.grad
    return y.detach(), h.detach(), grads


def _assert_same(a, b):
    for u, v in zip(a[:2], b[:2]):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)
    assert a[2].keys() == b[2].keys()
    for name in a[2]:
        torch.testing.assert_close(a[2][name], b[2][name], rtol=1e-9, atol=1e-11, msg=name)


def test_cells_by_hand():
    """One step of each cell against its equations written out."""
    xp = torch.tensor([[0.3, -1.2, 2.0, -0.4, 0.7, 1.5]], dtype=torch.float64)  # H = 2
    h = torch.tensor([[0.5, -2.0]], dtype=torch.float64)
    sig = lambda v: 1 / (1 + torch.exp(-v))  # noqa: E731
    g = lambda v: torch.where(v >= 0, v + 0.5, sig(v))  # noqa: E731
    k_z, k_h = xp[:, 0:2], xp[:, 2:4]
    z = sig(k_z)
    torch.testing.assert_close(cells.mingru_step(xp[:, :4], (h,))[0], (1 - z) * h + z * g(k_h))
    k_f, k_i, k_h = xp[:, 0:2], xp[:, 2:4], xp[:, 4:6]
    f, i = sig(k_f), sig(k_i)
    torch.testing.assert_close(cells.minlstm_step(xp, (h,))[0], f / (f + i) * h + i / (f + i) * g(k_h))
    torch.testing.assert_close(cells.min_g(torch.tensor([-1.0, 0.0, 2.0])), torch.tensor([sig(torch.tensor(-1.0)), 0.5, 2.5]))
    v = torch.linspace(-30, 30, 61, dtype=torch.float64)
    torch.testing.assert_close(cells.log_min_g(v), torch.log(cells.min_g(v)))


def test_parameters_and_cell_module():
    layer = Recurrent("mingru", 3, 4, num_layers=2, bidirectional=True)
    names = dict(layer.named_parameters())
    assert set(names) == {f"{w}_l{k}{s}" for w in ("weight_ih", "bias_ih") for k in (0, 1) for s in ("", "_reverse")}
    assert names["weight_ih_l0"].shape == (8, 3) and names["weight_ih_l1_reverse"].shape == (8, 8)
    assert Recurrent("minlstm", 3, 4).weight_ih_l0.shape == (12, 3)
    cell = cells.MinLSTMCell(3, 4).double()
    x, h = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    torch.testing.assert_close(cell(x, h), cells.minlstm_step(x @ cell.weight_ih.T + cell.bias_ih, (h,))[0])
    with pytest.raises(ValueError, match="no recurrent weights"):
        Recurrent("mingru", 3, 4, recurrent_dropout=0.1)


@pytest.fixture(params=["log", "sequential"])
def method(request, monkeypatch):
    """Each scan test runs both ways of evaluating the recurrence."""
    monkeypatch.setattr(scan, "METHOD", request.param)
    return request.param


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_scan_equals_sequential(cell, layers, bidirectional, with_lengths, method):
    layer = _layer(cell, num_layers=layers, bidirectional=bidirectional)
    g = torch.Generator().manual_seed(3)
    x = 2 * torch.randn(3, 7, 3, generator=g, dtype=torch.float64)
    h0 = torch.randn(layers * (2 if bidirectional else 1), 3, 4, generator=g, dtype=torch.float64)  # negative entries too
    lengths = torch.tensor([7, 2, 5]) if with_lengths else None
    seq = _run(layer, "reference", x, h0, lengths)
    par = _run(layer, "scan", x, h0, lengths)
    _assert_same(par, seq)
    if with_lengths:
        assert (par[0][1, 2:] == 0).all() and (par[0][2, 5:] == 0).all()
        # final state at each sequence's own end: equals running the truncated sequence alone
        y1, h1 = layer(x[1:2, :2], h0[:, 1:2].clone())
        torch.testing.assert_close(par[1][:, 1:2], h1.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cell", CELLS)
def test_default_paths_and_gradcheck(cell, method):
    layer = _layer(cell, bidirectional=True)
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    layer(x)
    assert layer.last_path == "scan"
    layer(x[:, :1])
    assert layer.last_path == "reference"  # one step: the O(1) sequential form
    h0 = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 3])
    assert torch.autograd.gradcheck(lambda a, b: layer(a, b, lengths)[0], (x, h0))
    assert torch.autograd.gradcheck(lambda a, b: layer(a, b)[1], (x, h0))


@pytest.mark.parametrize("cell", CELLS)
def test_state_carry_across_chunks_equals_one_run(cell, method):
    layer = _layer(cell, num_layers=2)
    x = torch.randn(2, 12, 3, dtype=torch.float64)
    with torch.no_grad():
        y_all, h_all = layer(x)
        state, ys = None, []
        for chunk in (x[:, :5], x[:, 5:6], x[:, 6:]):  # a one-step chunk goes through the sequential form
            y, state = layer(chunk, state)
            ys.append(y)
    torch.testing.assert_close(torch.cat(ys, 1), y_all, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state, h_all, rtol=1e-10, atol=1e-12)


def test_long_sequence_float32_finite(method):
    """T=784 in float32: the scan stays finite and matches the sequential form."""
    torch.manual_seed(0)
    layer = Recurrent("mingru", 1, 8)
    x = torch.rand(2, 784, 1)
    y_scan, h_scan = layer(x)
    layer.force_path = "reference"
    y_seq, h_seq = layer(x)
    assert torch.isfinite(y_scan).all()
    torch.testing.assert_close(y_scan, y_seq, rtol=1e-4, atol=1e-5)


def test_predicates_and_model_config():
    x = torch.randn(2, 5, 3)
    layer = Recurrent("minlstm", 3, 4)
    from rnnkit import bptt, fused
    assert "minlstm" in fused.fused_unsupported_reason(layer, x)
    assert "minlstm" in bptt.bptt_unsupported_reason(layer, x)
    layer.force_path = "fused"
    with pytest.raises(RuntimeError, match="fused"):
        layer(x)
    assert ModelConfig(cell="mingru").cell == "mingru"
    assert scan.log_coefficients("mingru", torch.zeros(1, 1, 8))[0].shape == (1, 1, 4)
    assert scan.scan_method(torch.device("cpu")) == "sequential"  # METHOD "auto"
    assert scan.scan_method(torch.device("cuda")) == "log"


@pytest.mark.parametrize("cell", CELLS)
def test_direct_coefficients_are_the_log_coefficients(cell):
    xp = 4 * torch.randn(3, 5, (2 if cell == "mingru" else 3) * 4, dtype=torch.float64)
    a, b = scan.coefficients(cell, xp)
    log_a, log_b = scan.log_coefficients(cell, xp)
    torch.testing.assert_close(a.log(), log_a)
    torch.testing.assert_close(b.log(), log_b)


def test_sequential_scan_gradcheck_by_hand():
    """h_t = a_t h_{t-1} + b_t: two hand-computed steps, then gradcheck of the Function."""
    a = torch.tensor([[[0.5]], [[0.25]]], dtype=torch.float64)
    b = torch.tensor([[[1.0]], [[2.0]]], dtype=torch.float64)
    h = scan.SequentialScan.apply(a, b, torch.tensor([[4.0]], dtype=torch.float64))
    assert h.flatten().tolist() == [0.5 * 4 + 1, 0.25 * 3 + 2]
    g = torch.Generator().manual_seed(0)
    args = [torch.rand(6, 2, 3, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    args.append(torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(scan.SequentialScan.apply, tuple(args))
