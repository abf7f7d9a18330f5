"""Cells: vs torch.nn cells with copied weights, float64 gradcheck, hand-computed two-step cases."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from rnnkit import cells
from rnnkit.cells import GRUCell, LSTMCell, RNNCell, StepNorm, gate_norm

TORCH_CELLS = {"rnn": torch.nn.RNNCell, "lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}
OUR_CELLS = {"rnn": RNNCell, "lstm": LSTMCell, "gru": GRUCell}
KINDS = [("rnn", {}), ("rnn", {"nonlinearity": "relu"}), ("lstm", {}), ("gru", {})]


def sig(a):
    return 1.0 / (1.0 + np.exp(-a))


def np_layer_norm(v, eps=1e-5):
    """Normalise the last axis with the biased variance, as LayerNorm does."""
    return (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + eps)


def _state(kind, B, H, dtype=torch.float64):
    h = torch.randn(B, H, dtype=dtype)
    return (h, torch.randn(B, H, dtype=dtype)) if kind == "lstm" else h


# -- against torch.nn --------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind,kwargs", KINDS)
def test_cell_matches_torch_nn_cell(kind, kwargs, bias):
    torch.manual_seed(0)
    ours = OUR_CELLS[kind](3, 5, bias=bias, **kwargs).double()
    ref = TORCH_CELLS[kind](3, 5, bias=bias, **kwargs).double()
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(4, 3, dtype=torch.float64)
    for state in (None, _state(kind, 4, 5)):
        got, want = ours(x, state), ref(x, state)
        if kind == "lstm":
            torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-14)
            torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-14)
        else:
            torch.testing.assert_close(got, want, rtol=0, atol=1e-14)


@pytest.mark.parametrize("kind,kwargs", KINDS)
def test_cell_state_dict_names_are_torch_names(kind, kwargs):
    ours = OUR_CELLS[kind](3, 5, **kwargs)
    ref = TORCH_CELLS[kind](3, 5, **kwargs)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    ours.load_state_dict(ref.state_dict(), strict=True)


# -- gradcheck ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,kwargs", KINDS + [("gru", {"reset_after": False})])
def test_cell_gradcheck(kind, kwargs):
    torch.manual_seed(1)
    cell = OUR_CELLS[kind](2, 3, **kwargs).double()
    names = [n for n, _ in cell.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in cell.parameters()]
    x = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    state = _state(kind, 2, 3)
    state = tuple(s.requires_grad_() for s in state) if kind == "lstm" else (state.requires_grad_(),)

    def f(x, *rest):
        st, ps = rest[: len(state)], rest[len(state) :]
        return functional_call(cell, dict(zip(names, ps)), (x, st if kind == "lstm" else st[0]))

    assert torch.autograd.gradcheck(f, (x, *state, *params))


def _layer_norm_inputs(G, H, F_, B=2, seed=2):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)  # noqa: E731
    return dict(x=r(B, F_), h=r(B, H), c=r(B, H), w_ih=r(G * H, F_), w_hh=r(G * H, H), b_ih=r(G * H), b_hh=r(G * H),
                ln_ih=r(G * H), ln_hh=r(G * H), ln_c_w=r(H), ln_c_b=r(H))


@pytest.mark.parametrize("kind,reset_after", [("rnn", True), ("lstm", True), ("gru", True), ("gru", False)])
def test_layer_norm_step_gradcheck(kind, reset_after, one_thread):
    G = {"rnn": 1, "lstm": 4, "gru": 3}[kind]
    a = _layer_norm_inputs(G, 3, 2)
    mask = torch.tensor([[2.0, 0.0, 2.0], [0.0, 2.0, 2.0]], dtype=torch.float64)

    def f(x, h, c, w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh, ln_c_w, ln_c_b):
        xp = gate_norm(F.linear(x, w_ih), ln_ih, G) + b_ih
        if kind == "lstm":
            return cells.lstm_step(xp, (h, c), w_hh, b_hh, mask, StepNorm(ln_hh, ln_c_w, ln_c_b))
        if kind == "gru":
            return cells.gru_step(xp, (h,), w_hh, b_hh, mask, StepNorm(ln_hh), reset_after=reset_after)
        return cells.rnn_step(xp, (h,), w_hh, b_hh, mask, StepNorm(ln_hh))

    assert torch.autograd.gradcheck(f, tuple(a.values()))


# -- hand-computed two-step cases (F=2, H=2, non-symmetric weights) ------------------------------
X = np.array([[0.5, -1.0], [2.0, 0.25]])  # two steps of one sequence, F=2
H0 = np.array([0.1, -0.2])


def _weights(G, seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.8, 0.8, (G * 2, 2)), rng.uniform(-0.8, 0.8, (G * 2, 2)), rng.uniform(-0.5, 0.5, G * 2), rng.uniform(-0.5, 0.5, G * 2)


def _run_cell(cell, weights, c0=None):
    with torch.no_grad():
        for p, w in zip((cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh), weights):
            p.copy_(torch.from_numpy(w))
        state = torch.from_numpy(H0).unsqueeze(0)
        if c0 is not None:
            state = (state, torch.from_numpy(c0).unsqueeze(0))
        out = []
        for t in range(2):
            state = cell(torch.from_numpy(X[t]).unsqueeze(0), state)
            out.append(state)
    return out


def test_rnn_two_steps_by_hand():
    W, U, b, c = _weights(1, 10)
    h1 = np.tanh(W @ X[0] + b + U @ H0 + c)
    h2 = np.tanh(W @ X[1] + b + U @ h1 + c)
    out = _run_cell(RNNCell(2, 2).double(), (W, U, b, c))
    np.testing.assert_allclose(out[0][0].numpy(), h1, atol=1e-15)
    np.testing.assert_allclose(out[1][0].numpy(), h2, atol=1e-15)


def test_lstm_two_steps_by_hand():
    W, U, b, bb = _weights(4, 11)
    c0 = np.array([0.3, -0.4])
    h, c, hs, cs = H0, c0, [], []
    for t in range(2):
        a = W @ X[t] + b + U @ h + bb  # rows: i(0:2), f(2:4), g(4:6), o(6:8)
        i, f, g, o = sig(a[0:2]), sig(a[2:4]), np.tanh(a[4:6]), sig(a[6:8])
        c = f * c + i * g
        h = o * np.tanh(c)
        hs.append(h)
        cs.append(c)
    out = _run_cell(LSTMCell(2, 2).double(), (W, U, b, bb), c0)
    for t in range(2):
        np.testing.assert_allclose(out[t][0][0].numpy(), hs[t], atol=1e-15)
        np.testing.assert_allclose(out[t][1][0].numpy(), cs[t], atol=1e-15)


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_two_steps_by_hand(reset_after):
    W, U, b, bb = _weights(3, 12)
    h, hs = H0, []
    for t in range(2):
        xr, xz, xn = (W[k : k + 2] @ X[t] + b[k : k + 2] for k in (0, 2, 4))  # rows: r, z, n
        r = sig(xr + U[0:2] @ h + bb[0:2])
        z = sig(xz + U[2:4] @ h + bb[2:4])
        if reset_after:
            n = np.tanh(xn + r * (U[4:6] @ h + bb[4:6]))
        else:
            n = np.tanh(xn + U[4:6] @ (r * h) + bb[4:6])
        h = (1 - z) * n + z * h
        hs.append(h)
    out = _run_cell(GRUCell(2, 2, reset_after=reset_after).double(), (W, U, b, bb))
    for t in range(2):
        np.testing.assert_allclose(out[t][0].numpy(), hs[t], atol=1e-15)


def test_lstm_layer_norm_step_by_hand(one_thread):
    """One step with LN on W_ih x, W_hh h (per gate, with gains) and on c, written out in NumPy."""
    a = {k: v.detach().numpy() for k, v in _layer_norm_inputs(4, 3, 2, B=1, seed=5).items()}
    x, h, c = a["x"][0], a["h"][0], a["c"][0]
    per_gate_ln = lambda v, gain: np.concatenate([np_layer_norm(v[k * 3 : (k + 1) * 3]) for k in range(4)]) * gain  # noqa: E731
    pre = per_gate_ln(a["w_ih"] @ x, a["ln_ih"]) + a["b_ih"] + per_gate_ln(a["w_hh"] @ h, a["ln_hh"]) + a["b_hh"]
    i, f, g, o = sig(pre[0:3]), sig(pre[3:6]), np.tanh(pre[6:9]), sig(pre[9:12])
    c_new = f * c + i * g
    h_new = o * np.tanh(np_layer_norm(c_new) * a["ln_c_w"] + a["ln_c_b"])

    t = {k: torch.from_numpy(v) for k, v in a.items()}
    xp = gate_norm(F.linear(t["x"], t["w_ih"]), t["ln_ih"], 4) + t["b_ih"]
    got_h, got_c = cells.lstm_step(xp, (t["h"], t["c"]), t["w_hh"], t["b_hh"], None, StepNorm(t["ln_hh"], t["ln_c_w"], t["ln_c_b"]))
    np.testing.assert_allclose(got_c[0].numpy(), c_new, atol=1e-14)
    np.testing.assert_allclose(got_h[0].numpy(), h_new, atol=1e-14)


# -- recurrent-dropout mask inside a step ----------------------------------------------------------
def test_h_mask_enters_only_the_recurrent_projection():
    torch.manual_seed(3)
    H = 4
    h, c = torch.randn(2, H, dtype=torch.float64), torch.randn(2, H, dtype=torch.float64)
    mask = torch.tensor([[2.0, 0.0, 2.0, 0.0], [0.0, 0.0, 2.0, 2.0]], dtype=torch.float64)
    # LSTM: masking is the same as feeding h*mask to W_hh; c is never masked.
    w, b, xp = torch.randn(4 * H, H, dtype=torch.float64), torch.randn(4 * H, dtype=torch.float64), torch.randn(2, 4 * H, dtype=torch.float64)
    torch.testing.assert_close(cells.lstm_step(xp, (h, c), w, b, mask), cells.lstm_step(xp, (h * mask, c), w, b))
    # GRU reset_after=True: W_hh sees h*mask, the carry z*h uses the unmasked h.
    w, b, xp = torch.randn(3 * H, H, dtype=torch.float64), torch.randn(3 * H, dtype=torch.float64), torch.randn(2, 3 * H, dtype=torch.float64)
    got = cells.gru_step(xp, (h,), w, b, mask)[0]
    hp = (h * mask) @ w.t() + b
    r, z = torch.sigmoid(xp[:, :H] + hp[:, :H]), torch.sigmoid(xp[:, H : 2 * H] + hp[:, H : 2 * H])
    n = torch.tanh(xp[:, 2 * H :] + r * hp[:, 2 * H :])
    torch.testing.assert_close(got, (1 - z) * n + z * h, rtol=0, atol=1e-14)
