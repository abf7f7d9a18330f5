"""layout.py: Keras <-> rnnkit converters, checked against Keras's equations written in NumPy.

Keras is not installed; ``keras_*`` below restate the equations of Keras 3's ``SimpleRNNCell``,
``LSTMCell`` and ``GRUCell.call`` (default activations tanh / sigmoid; kernel (F, G*H),
recurrent_kernel (H, G*H); LSTM gates i, f, c, o; GRU gates z, r, h).
"""

import numpy as np
import pytest
import torch

from rnnkit import GRU, LSTM, RNN, Recurrent, layout
from rnnkit.errors import UserError
from rnnkit.layout import GATE_ORDER, keras_to_torch, keras_weights, load_keras_weights, parameter_names, torch_to_keras


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def keras_simple_rnn(x, kernel, recurrent_kernel, bias, activation=np.tanh):
    """h_t = act(x_t K + b + h_{t-1} R). x: (B, T, F) -> (B, T, H)."""
    h = np.zeros((x.shape[0], recurrent_kernel.shape[0]))
    out = []
    for t in range(x.shape[1]):
        h = activation(x[:, t] @ kernel + bias + h @ recurrent_kernel)
        out.append(h)
    return np.stack(out, 1)


def keras_lstm(x, kernel, recurrent_kernel, bias):
    """z = x K + h R + b; i, f, c, o = split(z); c = f c + i tanh(c~); h = o tanh(c)."""
    H = recurrent_kernel.shape[0]
    h = np.zeros((x.shape[0], H))
    c = np.zeros((x.shape[0], H))
    out = []
    for t in range(x.shape[1]):
        z = x[:, t] @ kernel + h @ recurrent_kernel + bias
        i, f, cc, o = (z[:, j * H : (j + 1) * H] for j in range(4))
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(cc)
        h = sigmoid(o) * np.tanh(c)
        out.append(h)
    return np.stack(out, 1)


def keras_gru(x, kernel, recurrent_kernel, bias, reset_after):
    """Keras GRUCell.call (gates z, r, h):

    reset_after=True, bias = [b_in, b_rec] (2, 3H):
        xz, xr, xh = x K + b_in;  rz, rr, rh = h R + b_rec
        z = sig(xz + rz); r = sig(xr + rr); hh = tanh(xh + r * rh)
    reset_after=False, bias (3H,):
        xz, xr, xh = x K + b;  z = sig(xz + h R_z); r = sig(xr + h R_r); hh = tanh(xh + (r h) R_h)
    h = z * h_prev + (1 - z) * hh
    """
    H = recurrent_kernel.shape[0]
    blocks = lambda a: (a[:, :H], a[:, H : 2 * H], a[:, 2 * H :])  # noqa: E731
    h = np.zeros((x.shape[0], H))
    out = []
    for t in range(x.shape[1]):
        if reset_after:
            xz, xr, xh = blocks(x[:, t] @ kernel + bias[0])
            rz, rr, rh = blocks(h @ recurrent_kernel + bias[1])
            z, r = sigmoid(xz + rz), sigmoid(xr + rr)
            hh = np.tanh(xh + r * rh)
        else:
            xz, xr, xh = blocks(x[:, t] @ kernel + bias)
            z = sigmoid(xz + h @ recurrent_kernel[:, :H])
            r = sigmoid(xr + h @ recurrent_kernel[:, H : 2 * H])
            hh = np.tanh(xh + (r * h) @ recurrent_kernel[:, 2 * H :])
        h = z * h + (1 - z) * hh
        out.append(h)
    return np.stack(out, 1)


def keras_forward(cell, x, weights, reset_after=True):
    if cell == "rnn":
        return keras_simple_rnn(x, *weights)
    if cell == "lstm":
        return keras_lstm(x, *weights)
    return keras_gru(x, *weights, reset_after)


def random_keras_weights(rng, cell, F, H, reset_after=True):
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    bias_shape = (2, G * H) if cell == "gru" and reset_after else (G * H,)
    return [rng.normal(0, 0.5, (F, G * H)), rng.normal(0, 0.5, (H, G * H)), rng.normal(0, 0.5, bias_shape)]


CASES = [("rnn", True), ("lstm", True), ("gru", True), ("gru", False)]


@pytest.mark.parametrize("cell,reset_after", CASES)
def test_keras_weights_loaded_into_rnnkit_give_keras_outputs(cell, reset_after):
    rng = np.random.default_rng(0)
    F, H = 3, 4
    weights = random_keras_weights(rng, cell, F, H, reset_after)
    x = rng.normal(size=(2, 5, F))
    layer = Recurrent(cell, F, H, reset_after=reset_after, use_fused=False).double()
    load_keras_weights(layer, weights)
    y, _ = layer(torch.from_numpy(x))
    np.testing.assert_allclose(y.detach().numpy(), keras_forward(cell, x, weights, reset_after), rtol=0, atol=1e-12)


@pytest.mark.parametrize("cell,reset_after", CASES)
def test_keras_rnnkit_keras_round_trip_is_exact(cell, reset_after):
    rng = np.random.default_rng(1)
    weights = random_keras_weights(rng, cell, 3, 4, reset_after)
    t = keras_to_torch(cell, *weights, reset_after=reset_after)
    back = torch_to_keras(cell, t["weight_ih"], t["weight_hh"], t["bias_ih"], t["bias_hh"], reset_after=reset_after)
    for a, b in zip(weights, back):
        np.testing.assert_array_equal(a, b)  # bias_hh is 0, so b_ih + b_hh adds exactly 0


@pytest.mark.parametrize("cell,reset_after", CASES)
def test_rnnkit_keras_rnnkit_round_trip_gives_same_outputs(cell, reset_after):
    torch.manual_seed(2)
    src = Recurrent(cell, 3, 4, reset_after=reset_after, use_fused=False).double()
    dst = Recurrent(cell, 3, 4, reset_after=reset_after, use_fused=False).double()
    arrays = keras_weights(src)
    load_keras_weights(dst, arrays)
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    torch.testing.assert_close(dst(x)[0], src(x)[0], rtol=0, atol=1e-14)
    np.testing.assert_allclose(keras_forward(cell, x.numpy(), arrays, reset_after), src(x)[0].detach().numpy(), atol=1e-12)
    if cell == "gru" and reset_after:  # no bias folding: the round trip is exact
        for name, p in src.named_parameters():
            torch.testing.assert_close(dict(dst.named_parameters())[name], p, rtol=0, atol=0)


def test_gru_gate_reorder_moves_blocks():
    """Keras (z, r, h) -> torch (r, z, n): the z block lands second, r first, h stays third."""
    H = 2
    kernel = np.concatenate([np.full((1, H), 1.0), np.full((1, H), 2.0), np.full((1, H), 3.0)], axis=1)  # z=1, r=2, h=3
    bias = np.stack([np.repeat([1.0, 2.0, 3.0], H), np.repeat([10.0, 20.0, 30.0], H)])
    t = keras_to_torch("gru", kernel, np.zeros((H, 3 * H)), bias)
    np.testing.assert_array_equal(t["weight_ih"][:, 0], [2, 2, 1, 1, 3, 3])
    np.testing.assert_array_equal(t["bias_ih"], [2, 2, 1, 1, 3, 3])
    np.testing.assert_array_equal(t["bias_hh"], [20, 20, 10, 10, 30, 30])
    assert GATE_ORDER["gru"] == {"torch": ("r", "z", "n"), "keras": ("z", "r", "h")}


def test_reset_after_false_folds_recurrent_bias_into_keras_bias():
    H = 1
    b_ih = np.array([1.0, 2.0, 3.0])  # r, z, n
    b_hh = np.array([0.5, 0.25, 0.125])
    _, _, bias = torch_to_keras("gru", np.zeros((3, 1)), np.zeros((3, 1)), b_ih, b_hh, reset_after=False)
    np.testing.assert_array_equal(bias, [2.25, 1.5, 3.125])  # z, r, h
    assert bias.shape == (3 * H,)


def test_lstm_bias_is_sum_and_order_unchanged():
    b_ih, b_hh = np.arange(8.0), np.arange(8.0) * 10
    k, rk, bias = torch_to_keras("lstm", np.eye(8, 3), np.eye(8, 2), b_ih, b_hh)
    np.testing.assert_array_equal(bias, np.arange(8.0) * 11)
    np.testing.assert_array_equal(k, np.eye(8, 3).T)
    assert rk.shape == (2, 8)


def test_tensors_in_tensors_out_and_no_bias():
    w = torch.randn(6, 3)
    out = keras_to_torch("gru", w.t(), torch.randn(2, 6), None)
    assert isinstance(out["weight_ih"], torch.Tensor) and out["bias_ih"] is None and out["bias_hh"] is None
    k, rk, b = torch_to_keras("gru", out["weight_ih"], out["weight_hh"])
    torch.testing.assert_close(k, w.t(), rtol=0, atol=0)
    assert b is None
    layer = GRU(3, 2, bias=False)
    load_keras_weights(layer, [w.t().numpy(), rk.numpy()])
    assert len(keras_weights(layer)) == 2


def test_bidirectional_stack_each_direction_and_layer():
    rng = np.random.default_rng(3)
    layer = LSTM(3, 2, num_layers=2, bidirectional=True, use_fused=False).double()
    w_fwd = random_keras_weights(rng, "lstm", 3, 2)
    w_bwd = random_keras_weights(rng, "lstm", 3, 2)
    w_top = random_keras_weights(rng, "lstm", 4, 2)
    load_keras_weights(layer, w_fwd, layer=0, direction=0)
    load_keras_weights(layer, w_bwd, layer=0, direction=1)
    load_keras_weights(layer, w_top, layer=1, direction=1)
    x = rng.normal(size=(2, 4, 3))
    y_fwd = keras_lstm(x, *w_fwd)
    y_bwd = keras_lstm(x[:, ::-1], *w_bwd)[:, ::-1]
    y_top = keras_lstm(np.concatenate([y_fwd, y_bwd], -1)[:, ::-1], *w_top)[:, ::-1]
    y, _ = layer(torch.from_numpy(x))
    np.testing.assert_allclose(y[..., 2:].detach().numpy(), y_top, atol=1e-12)
    for exported, loaded in zip(keras_weights(layer, 1, 1), w_top):
        np.testing.assert_array_equal(exported, loaded)
    assert parameter_names(1, 1) == ("weight_ih_l1_reverse", "weight_hh_l1_reverse", "bias_ih_l1_reverse", "bias_hh_l1_reverse")


def test_user_errors_name_the_problem():
    layer = RNN(3, 4)
    with pytest.raises(UserError, match=r"expected kernel \(F, 1\*H\)"):
        load_keras_weights(layer, [np.zeros((3, 5)), np.zeros((4, 4)), np.zeros(4)])
    with pytest.raises(UserError, match=r"weight_ih_l0: Keras weights give shape \(4, 2\), the module expects \(4, 3\)"):
        load_keras_weights(layer, [np.zeros((2, 4)), np.zeros((4, 4)), np.zeros(4)])
    with pytest.raises(UserError, match=r"expected shape \(2, 9\), got \(9,\)"):
        load_keras_weights(GRU(2, 3), [np.zeros((2, 9)), np.zeros((3, 9)), np.zeros(9)])
    with pytest.raises(UserError, match="no layer 1 direction 0"):
        load_keras_weights(layer, [np.zeros((3, 4)), np.zeros((4, 4)), np.zeros(4)], layer=1)
    with pytest.raises(UserError, match="lack a bias but the module has bias=True"):
        load_keras_weights(layer, [np.zeros((3, 4)), np.zeros((4, 4))])
    with pytest.raises(UserError, match="no Keras equivalent"):
        keras_weights(LSTM(2, 2, layer_norm=True))


def test_lstm_kernel_layout_moves_gate_blocks_and_back():
    """torch (i, f, g, o) -> the kernels' (o, i, f, g) along any axis, and the inverse."""
    H = 2
    rows = torch.cat([torch.full((H, 3), float(k)) for k in (1, 2, 3, 4)])  # i=1, f=2, g=3, o=4
    kernel = layout.lstm_to_kernel_order(rows)
    assert kernel[:, 0].tolist() == [4, 4, 1, 1, 2, 2, 3, 3]
    assert layout.LSTM_KERNEL_GATE_ORDER == ("o", "i", "f", "g")
    assert torch.equal(layout.lstm_from_kernel_order(kernel), rows)
    assert torch.equal(layout.lstm_to_kernel_order(rows.t(), dim=1), kernel.t())
    assert layout.lstm_to_kernel_order(None) is None


def test_lstm_step_kernel_form():
    """The step kernels' form: the g block (last in kernel order) doubled in place; c carried as -2c."""
    bias = torch.arange(8.0)
    assert layout.double_lstm_g_(bias, 0) is bias
    assert bias.tolist() == [0, 1, 2, 3, 4, 5, 12, 14]
    c = torch.randn(3, 4, dtype=torch.float64)
    neg_two_c = layout.lstm_cell_to_step_kernel(c)
    assert torch.equal(neg_two_c, -2 * c) and torch.equal(layout.lstm_cell_from_step_kernel(neg_two_c), c)
