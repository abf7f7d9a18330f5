"""Recurrent (reference path): vs torch.nn layers, direct loops, lengths, recurrent dropout, layer norm."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rnnkit import cells
from rnnkit.recurrent import Recurrent, reverse_padded

TORCH_LAYERS = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
F64 = torch.float64


def pin_reference(module):
    """Run the reference loop (``force_path`` also exists once the explicit-BPTT path does, and then
    ``use_fused=False`` alone may choose BPTT)."""
    module.use_fused = False
    if hasattr(module, "force_path"):
        module.force_path = "reference"
    return module


def make_pair(cell, F, H, L=1, bidirectional=False, bias=True, nonlinearity="tanh", seed=0):
    """An rnnkit reference-path layer and the torch.nn layer holding the same weights (float64)."""
    torch.manual_seed(seed)
    ours = pin_reference(Recurrent(cell, F, H, L, bias=bias, bidirectional=bidirectional, nonlinearity=nonlinearity).double())
    kw = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
    ref = TORCH_LAYERS[cell](F, H, L, bias=bias, batch_first=True, bidirectional=bidirectional, **kw).double()
    ref.load_state_dict(ours.state_dict(), strict=True)
    return ours, ref


def run_torch(ref, x, state=None, lengths=None):
    """torch.nn on (B, T, F), with ``pack_padded_sequence`` when lengths are given."""
    if lengths is None:
        return ref(x, state)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    y, s = ref(packed, state)
    return pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])[0], s


def random_state(cell, L, D, B, H, requires_grad=False):
    parts = tuple(torch.randn(L * D, B, H, dtype=F64, requires_grad=requires_grad) for _ in range(2 if cell == "lstm" else 1))
    return parts if cell == "lstm" else parts[0]


def as_tuple(s):
    return s if isinstance(s, tuple) else (s,)


def assert_same_forward_backward(ours, ref, x, state, lengths, atol=1e-12):
    """Outputs, final states and the gradients of x, state and every parameter agree."""
    y1, s1 = ours(x, state, lengths)
    y2, s2 = run_torch(ref, x, state, lengths)
    torch.testing.assert_close(y1, y2, rtol=0, atol=atol)
    for a, b in zip(as_tuple(s1), as_tuple(s2)):
        torch.testing.assert_close(a, b, rtol=0, atol=atol)
    g = torch.Generator().manual_seed(7)
    wy = torch.randn(y1.shape, generator=g, dtype=F64)
    ws = [torch.randn(a.shape, generator=g, dtype=F64) for a in as_tuple(s1)]
    inputs = [x, *[p for p in as_tuple(state) if p is not None and p.requires_grad]]
    grads = []
    for y, s, module in ((y1, s1, ours), (y2, s2, ref)):
        loss = (y * wy).sum() + sum((a * w).sum() for a, w in zip(as_tuple(s), ws))
        grads.append(torch.autograd.grad(loss, inputs + list(module.parameters())))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=atol)


# -- vs torch.nn --------------------------------------------------------------------------------
CONFIGS = list(itertools.product(["rnn", "lstm", "gru"], [1, 3], [False, True], [False, True]))


@pytest.mark.parametrize("cell,L,bidirectional,with_lengths", CONFIGS)
def test_layer_matches_torch_nn(cell, L, bidirectional, with_lengths):
    B, T, F, H = 4, 5, 3, 4
    ours, ref = make_pair(cell, F, H, L, bidirectional)
    x = torch.randn(B, T, F, dtype=F64, requires_grad=True)
    state = random_state(cell, L, ours.num_directions, B, H, requires_grad=True)
    lengths = torch.tensor([5, 2, 1, 4]) if with_lengths else None
    assert_same_forward_backward(ours, ref, x, state, lengths)
    y, _ = ours(x, None, lengths)  # zero initial state too
    torch.testing.assert_close(y, run_torch(ref, x, None, lengths)[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("cell,nonlinearity,bias", [("rnn", "relu", True), ("rnn", "tanh", False), ("lstm", "tanh", False), ("gru", "tanh", False)])
def test_relu_and_no_bias_match_torch_nn(cell, nonlinearity, bias):
    ours, ref = make_pair(cell, 3, 4, 2, True, bias=bias, nonlinearity=nonlinearity)
    x = torch.randn(3, 4, 3, dtype=F64, requires_grad=True)
    assert_same_forward_backward(ours, ref, x, None, torch.tensor([4, 1, 3]))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_state_dict_loads_both_ways_strict(cell):
    ours, ref = make_pair(cell, 3, 4, 2, True)
    assert list(ours.state_dict()) == list(ref.state_dict())  # same names, same order
    torch.manual_seed(9)
    other = TORCH_LAYERS[cell](3, 4, 2, batch_first=True, bidirectional=True).double()
    ours.load_state_dict(other.state_dict(), strict=True)
    x = torch.randn(2, 3, 3, dtype=F64)
    torch.testing.assert_close(ours(x)[0], other(x)[0], rtol=0, atol=1e-12)


def test_forget_bias_initialisation_every_layer_and_direction():
    module = Recurrent("lstm", 3, 4, 2, bidirectional=True, forget_bias=1.0)
    for s in ("_l0", "_l0_reverse", "_l1", "_l1_reverse"):
        b_ih, b_hh = getattr(module, "bias_ih" + s), getattr(module, "bias_hh" + s)
        assert torch.all(b_ih[4:8] == 1.0) and torch.all(b_hh[4:8] == 0.0)  # gate order i, f, g, o
        assert not torch.all(b_ih[:4] == 1.0)  # the other gates keep torch's init


# -- direct loops written here: GRU reset_after=False, merge modes -----------------------------
def gru_no_reset_after_step(x, h, w):
    """n = tanh(W_in x + b_in + W_hn (r*h) + b_hn); gates r, z, n stacked in this order."""
    H = h.shape[-1]
    Wr, Wz, Wn = w["weight_ih"].split(H)
    Ur, Uz, Un = w["weight_hh"].split(H)
    br, bz, bn = w["bias_ih"].split(H)
    cr, cz, cn = w["bias_hh"].split(H)
    r = torch.sigmoid(Wr @ x + br + Ur @ h + cr)
    z = torch.sigmoid(Wz @ x + bz + Uz @ h + cz)
    n = torch.tanh(Wn @ x + bn + Un @ (r * h) + cn)
    return (1 - z) * n + z * h


def direct_stack(module, step, x, lengths):
    """Run each sequence alone, truncated to its length: layers, then both directions."""
    D, H = module.num_directions, module.hidden_size
    outputs, finals = [], []
    for b in range(x.shape[0]):
        seq = x[b, : int(lengths[b])]
        last = []
        for k in range(module.num_layers):
            ys = []
            for d in range(D):
                s = "_l%d%s" % (k, "_reverse" if d else "")
                w = {n: getattr(module, n + s) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
                h, hs = torch.zeros(H, dtype=F64), []
                for x_t in (seq if d == 0 else seq.flip(0)):
                    h = step(x_t, h, w)
                    hs.append(h)
                ys.append(torch.stack(hs) if d == 0 else torch.stack(hs).flip(0))
                last.append(h)
            seq = torch.cat(ys, -1)
        pad = torch.zeros(x.shape[1] - seq.shape[0], seq.shape[1], dtype=F64)
        outputs.append(torch.cat([seq, pad]))
        finals.append(torch.stack(last))
    return torch.stack(outputs), torch.stack(finals, 1)  # (B, T, D*H), (L*D, B, H)


def test_gru_reset_after_false_matches_direct_loop():
    torch.manual_seed(4)
    module = Recurrent("gru", 3, 4, 2, bidirectional=True, reset_after=False, use_fused="auto").double()
    x = torch.randn(3, 5, 3, dtype=F64)
    lengths = torch.tensor([5, 2, 3])
    y, h = module(x, lengths=lengths)
    y_ref, h_ref = direct_stack(module, gru_no_reset_after_step, x, lengths)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(h, h_ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["concat", "sum", "mean", "mul"])
def test_merge_modes(mode):
    torch.manual_seed(5)
    module = Recurrent("gru", 3, 4, 2, bidirectional=True, merge_mode=mode, use_fused=False).double()
    x = torch.randn(3, 5, 3, dtype=F64)
    lengths = torch.tensor([5, 2, 3])

    def torch_gru_step(x_t, h, w):
        return cells.gru_step((w["weight_ih"] @ x_t + w["bias_ih"])[None], (h[None],), w["weight_hh"], w["bias_hh"])[0][0]

    y_cat, h_ref = direct_stack(module, torch_gru_step, x, lengths)  # layer 0 feeds concat to layer 1
    fwd, bwd = y_cat[..., :4], y_cat[..., 4:]
    expected = {"concat": y_cat, "sum": fwd + bwd, "mean": (fwd + bwd) / 2, "mul": fwd * bwd}[mode]
    y, h = module(x, lengths=lengths)
    assert y.shape == (3, 5, 8 if mode == "concat" else 4) and module.output_size == y.shape[-1]
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(h, h_ref, rtol=0, atol=1e-12)


# -- variable lengths --------------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_lengths_equal_running_each_sequence_alone(cell):
    torch.manual_seed(6)
    module = Recurrent(cell, 2, 3, 2, bidirectional=True, use_fused=False).double()
    lengths = torch.tensor([4, 1, 6, 3])
    x = torch.randn(4, 6, 2, dtype=F64)
    y, state = module(x, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        y_b, s_b = module(x[b : b + 1, :n])
        torch.testing.assert_close(y[b, :n], y_b[0], rtol=0, atol=1e-12)  # reverse starts at the own end
        assert torch.all(y[b, n:] == 0)  # padded positions are exactly zero
        for a, a_b in zip(as_tuple(state), as_tuple(s_b)):
            torch.testing.assert_close(a[:, b], a_b[:, 0], rtol=0, atol=1e-12)  # final = last valid step


def test_padding_content_changes_nothing():
    torch.manual_seed(7)
    module = Recurrent("lstm", 2, 3, 2, bidirectional=True, use_fused=False).double()
    lengths = torch.tensor([2, 5, 3])
    valid = (torch.arange(5) < lengths[:, None])[..., None]
    base = torch.randn(3, 5, 2, dtype=F64)
    results = []
    for fill in (0.0, 1e3):
        x = torch.where(valid, base, torch.full_like(base, fill)).requires_grad_()
        y, (h, c) = module(x, lengths=lengths)
        gx, *gp = torch.autograd.grad(y.sum() + h.sum() + c.sum(), [x, *module.parameters()])
        results.append((y, h, c, gx * valid, *gp))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_reverse_padded():
    x = torch.arange(8.0).view(2, 4, 1)
    out = reverse_padded(x, torch.tensor([3, 4]))
    assert out[..., 0].tolist() == [[2.0, 1.0, 0.0, 3.0], [7.0, 6.0, 5.0, 4.0]]


def test_bad_lengths_and_state_are_rejected():
    module = Recurrent("lstm", 2, 3, use_fused=False)
    x = torch.randn(2, 4, 2)
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 4\]"):
        module(x, lengths=[5, 1])
    with pytest.raises(ValueError, match=r"lengths must have shape \(2,\)"):
        module(x, lengths=[1, 2, 3])
    with pytest.raises(ValueError, match="lstm state must be a tuple"):
        module(x, torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match=r"state must have shape \(1, 2, 3\)"):
        module(x, (torch.zeros(1, 3, 3), torch.zeros(1, 3, 3)))


# -- recurrent dropout -------------------------------------------------------------------------
def _identity_rnn(H, p):
    """RNN with W_ih = 0, W_hh = I, no bias, relu: h_t = h_{t-1} * mask, so h_T = h0 * prod_t mask_t."""
    module = Recurrent("rnn", 1, H, bias=False, nonlinearity="relu", recurrent_dropout=p, use_fused=False)
    with torch.no_grad():
        module.weight_ih_l0.zero_()
        module.weight_hh_l0.copy_(torch.eye(H))
    return module


def test_recurrent_dropout_mask_constant_over_time_and_different_across_sequences():
    torch.manual_seed(8)
    B, T, H, p = 8, 6, 64, 0.5
    module = _identity_rnn(H, p)
    y, _ = module(torch.zeros(B, T, 1), torch.ones(1, B, H))
    m = y[:, 0]  # the mask itself: entries in {0, 1/(1-p)}
    assert set(m.unique().tolist()) == {0.0, 2.0}
    for t in range(T):  # a fresh mask per step would zero more units as t grows
        torch.testing.assert_close(y[:, t], m ** (t + 1), rtol=0, atol=0)
    assert len({tuple(row.tolist()) for row in m}) == B  # one mask per sequence
    module.eval()
    y, _ = module(torch.zeros(B, T, 1), torch.ones(1, B, H))
    assert torch.all(y == 1)  # off in eval mode


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_recurrent_dropout_one_mask_per_layer_direction(cell, monkeypatch):
    torch.manual_seed(9)
    module = pin_reference(Recurrent(cell, 2, 16, 2, bidirectional=True, recurrent_dropout=0.5))  # spies on its step
    masks = []
    step = module._step
    monkeypatch.setattr(module, "_step", lambda xp, state, w, b, h_mask, norm: masks.append(h_mask) or step(xp, state, w, b, h_mask, norm))
    T = 3
    module(torch.randn(4, T, 2))
    assert len(masks) == 2 * 2 * T
    per_run = [masks[i : i + T] for i in range(0, len(masks), T)]
    for run in per_run:
        assert all(m is run[0] for m in run)  # the same tensor at every step
    firsts = [run[0] for run in per_run]
    assert all(not torch.equal(a, b) for a, b in itertools.combinations(firsts, 2))
    assert all(not torch.equal(firsts[0][0], firsts[0][b]) for b in range(1, 4))
    masks.clear()
    module.eval()
    module(torch.randn(4, T, 2))
    assert masks and all(m is None for m in masks)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("path", ["fused", "bptt", "reference"])
def test_weight_dropout_equals_a_layer_with_masked_recurrent_weights(cell, path):
    """Training forward == plain layer whose W_hh are the masked copies drawn from the same seed;
    eval forward == the undropped layer. Gradients reach the parameters through the mask."""
    torch.manual_seed(10)
    p = 0.4
    module = Recurrent(cell, 3, 8, 2, bidirectional=True, weight_dropout=p)
    module.force_path = path
    plain = Recurrent(cell, 3, 8, 2, bidirectional=True)
    plain.load_state_dict(module.state_dict())
    plain.force_path = path
    x = torch.randn(4, 5, 3)
    torch.manual_seed(11)
    y, _ = module(x)
    torch.manual_seed(11)
    names = [n for n, _ in module.named_parameters() if n.startswith("weight_hh")]
    masked = {n: torch.nn.functional.dropout(getattr(module, n).detach(), p) for n in names}
    for n in names:
        kept = torch.isclose(masked[n], getattr(module, n).detach() / (1 - p))
        assert ((masked[n] == 0) | kept).all() and 0 < kept.float().mean() < 1
    with torch.no_grad():
        for n in names:
            getattr(plain, n).copy_(masked[n])
        expected, _ = plain(x)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6)
    y.sum().backward()
    grad = module.weight_hh_l1_reverse.grad
    assert grad is not None and (grad[masked["weight_hh_l1_reverse"] == 0] == 0).all()
    module.eval()
    plain.load_state_dict(module.state_dict())
    torch.testing.assert_close(module(x)[0], plain(x)[0], rtol=0, atol=0)
    assert module._dropped_hh is None


# -- layer norm --------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_layer_norm_adds_exactly_documented_parameters(cell):
    G, H = {"rnn": 1, "lstm": 4, "gru": 3}[cell], 4
    module = Recurrent(cell, 3, H, 2, bidirectional=True, layer_norm=True)
    plain = Recurrent(cell, 3, H, 2, bidirectional=True)
    extra = {n: tuple(p.shape) for n, p in module.named_parameters() if n not in dict(plain.named_parameters())}
    expected = {}
    for s in ("_l0", "_l0_reverse", "_l1", "_l1_reverse"):
        expected.update({"ln_ih" + s: (G * H,), "ln_hh" + s: (G * H,)})
        if cell == "lstm":
            expected.update({"ln_c_weight" + s: (H,), "ln_c_bias" + s: (H,)})
    assert extra == expected
    ref = TORCH_LAYERS[cell](3, H, 2, batch_first=True, bidirectional=True)
    with pytest.raises(RuntimeError, match="Unexpected key") as err:
        ref.load_state_dict(module.state_dict(), strict=True)
    assert "Missing key" not in str(err.value)
    result = ref.load_state_dict(module.state_dict(), strict=False)
    assert result.missing_keys == [] and set(result.unexpected_keys) == set(expected)


def test_layer_norm_layer_gradcheck(one_thread):
    torch.manual_seed(10)
    module = Recurrent("lstm", 2, 2, bidirectional=True, layer_norm=True, use_fused=False).double()
    with torch.no_grad():
        for n, p in module.named_parameters():
            if n.startswith("ln_"):
                p.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 2, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: module(x, lengths=torch.tensor([3, 2]))[0], (x,))


# -- property test over random shapes ------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(
    cell=st.sampled_from(["rnn", "lstm", "gru"]),
    B=st.integers(1, 4), T=st.integers(1, 5), F=st.integers(1, 4), H=st.integers(1, 4), L=st.integers(1, 3),
    bidirectional=st.booleans(), data=st.data(),
)
def test_property_matches_torch_nn(cell, B, T, F, H, L, bidirectional, data):
    ours, ref = make_pair(cell, F, H, L, bidirectional, seed=data.draw(st.integers(0, 1000)))
    lengths = data.draw(st.none() | st.lists(st.integers(1, T), min_size=B, max_size=B))
    lengths = None if lengths is None else torch.tensor(lengths)
    x = torch.randn(B, T, F, dtype=F64, requires_grad=True)
    state = random_state(cell, L, ours.num_directions, B, H) if data.draw(st.booleans()) else None
    assert_same_forward_backward(ours, ref, x, state, lengths)


def test_a_sequence_without_steps_is_a_clear_error():
    with pytest.raises(ValueError, match="no time steps"):
        Recurrent("gru", 4, 8)(torch.randn(3, 0, 4))
