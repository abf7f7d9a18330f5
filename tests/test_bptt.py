"""The explicit-BPTT path (rnnkit.bptt) equals the reference loop: values and gradients, float64."""

import contextlib

import pytest
import torch

from rnnkit import Recurrent, bptt, dispatch, native

CONFIGS = [
    dict(cell="rnn", nonlinearity="tanh"),
    dict(cell="rnn", nonlinearity="relu"),
    dict(cell="gru", reset_after=True),
    dict(cell="gru", reset_after=False),
    dict(cell="lstm"),
]


def _layer(cfg, **kw):
    cfg = dict(cfg)
    torch.manual_seed(0)
    return Recurrent(cfg.pop("cell"), 3, 4, **cfg, **kw).double()


def _run(layer, path, x, state, seed=7):
    """Outputs, final state parts and every gradient (params, x, state) of one path."""
    layer.zero_grad()
    x = x.clone().requires_grad_()
    state = tuple(s.clone().requires_grad_() for s in state)
    torch.manual_seed(seed)  # same recurrent-dropout masks in both paths
    if path == "bptt":
        y, parts = bptt.bptt_forward(layer, x, state)
    else:
        y, parts = layer.reference_forward(x, state, None)
    # weights for the loss make every output position and state entry matter differently
    g = torch.Generator().manual_seed(1)
    loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum()
    for p in parts:
        loss = loss + (p * torch.randn(p.shape, generator=g, dtype=p.dtype)).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.requires_grad}
    grads["x"] = x.grad
    for j, s in enumerate(state):
        grads[f"state{j}"] = s.grad
    return y.detach(), [p.detach() for p in parts], grads


def _assert_bptt_equals_reference(layer, x, state):
    """Outputs, final states and every parameter gradient of the two paths agree (float64)."""
    y_ref, s_ref, g_ref = _run(layer, "reference", x, state)
    y, s, grads = _run(layer, "bptt", x, state)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(s, s_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert grads.keys() == g_ref.keys()
    for name in g_ref:
        torch.testing.assert_close(grads[name], g_ref[name], rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(str(v) for v in c.values()))
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (1, True), (2, True), (2, False)])
@pytest.mark.parametrize("recurrent_dropout", [0.0, 0.3])
def test_bptt_equals_reference(cfg, layers, bidirectional, recurrent_dropout):
    layer = _layer(cfg, num_layers=layers, bidirectional=bidirectional, recurrent_dropout=recurrent_dropout,
                   dropout=0.2 if layers > 1 else 0.0)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    state = tuple(0.5 * torch.randn(layers * (2 if bidirectional else 1), 2, 4, generator=g, dtype=torch.float64)
                  for _ in range(layer.state_size))
    _assert_bptt_equals_reference(layer, x, state)


@pytest.mark.parametrize("frozen", ["weight_ih", "bias"])
def test_lstm_bptt_with_frozen_input_weights_or_biases(frozen):
    """dW_ih, dW_hh and db come from one matmul; with some of them frozen, the others still agree."""
    layer = _layer(dict(cell="lstm"), num_layers=2, bidirectional=True)
    for name, p in layer.named_parameters():
        p.requires_grad_(not name.startswith(frozen))
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 6, 3, generator=g, dtype=torch.float64)
    state = tuple(0.5 * torch.randn(4, 3, 4, generator=g, dtype=torch.float64) for _ in range(2))
    _assert_bptt_equals_reference(layer, x, state)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_bptt_without_bias_and_gradcheck(cfg):
    layer = _layer(cfg, bias=False, bidirectional=True)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    y_ref, s_ref, g_ref = _run(layer, "reference", x, tuple(torch.zeros(2, 2, 4, dtype=torch.float64)
                                                            for _ in range(layer.state_size)))
    y, s, grads = _run(layer, "bptt", x, tuple(torch.zeros(2, 2, 4, dtype=torch.float64)
                                               for _ in range(layer.state_size)))
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    for name in g_ref:
        torch.testing.assert_close(grads[name], g_ref[name], rtol=1e-9, atol=1e-11, msg=name)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda inp: bptt.bptt_forward(layer, inp, tuple(
        torch.zeros(2, 2, 4, dtype=torch.float64) for _ in range(layer.state_size)))[0], (x,))


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_bptt_equals_reference_over_several_chunks(cfg):
    """T = 2.5 chunks: the forward's projection and the backward's factors work chunk by chunk."""
    layer = _layer(cfg, bidirectional=True, recurrent_dropout=0.2)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, int(2.5 * bptt.lstm.CHUNK), 3, generator=g, dtype=torch.float64)
    state = tuple(0.5 * torch.randn(2, 2, 4, generator=g, dtype=torch.float64) for _ in range(layer.state_size))
    _assert_bptt_equals_reference(layer, x, state)


def _ln_params_away_from_init(layer):
    with torch.no_grad():  # gains and LN(c) affine away from their 1/0 init, so their gradients matter
        for name, p in layer.named_parameters():
            if name.startswith("ln_"):
                p.copy_(torch.empty_like(p).uniform_(0.5, 1.5) if "bias" not in name else 0.3 * torch.randn_like(p))


NEEDS_NATIVE = pytest.mark.skipif(native.unavailable_reason() is not None,
                                  reason="GRU layer norm's explicit BPTT needs the native kernels")


@pytest.mark.parametrize("cell", ["lstm", pytest.param("gru", marks=NEEDS_NATIVE)])
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)])
@pytest.mark.parametrize("recurrent_dropout", [0.0, 0.3])
@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_equals_reference(cell, layers, bidirectional, recurrent_dropout, bias):
    layer = _layer(dict(cell=cell), layer_norm=True, num_layers=layers, bidirectional=bidirectional,
                   recurrent_dropout=recurrent_dropout, bias=bias)
    _ln_params_away_from_init(layer)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 6, 3, generator=g, dtype=torch.float64)
    D = 2 if bidirectional else 1
    state = tuple(0.5 * torch.randn(layers * D, 3, 4, generator=g, dtype=torch.float64) for _ in range(layer.state_size))
    _assert_bptt_equals_reference(layer, x, state)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda inp: bptt.bptt_forward(layer.eval(), inp, state)[0], (x,))


def test_layer_norm_gru_without_native_kernels_takes_the_reference_loop(monkeypatch):
    monkeypatch.setattr(native, "kernels_for", lambda name, like: None)
    layer = Recurrent("gru", 3, 4, layer_norm=True)
    assert "native kernels" in bptt.bptt_unsupported_reason(layer, torch.randn(2, 5, 3))
    layer(torch.randn(2, 5, 3))
    assert layer.last_path == "reference"


def test_unused_final_state_and_unused_outputs():
    """Gradients arrive as None for unused Function outputs (LSTM c_T, or the outputs)."""
    layer = _layer(dict(cell="lstm"))
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    for pick in (lambda y, s: y.sum(), lambda y, s: s[0].sum()):
        for path in ("bptt", "reference"):
            layer.zero_grad()
            y, parts = (bptt.bptt_forward(layer, x, tuple(torch.zeros(1, 2, 4, dtype=torch.float64) for _ in range(2)))
                        if path == "bptt" else layer.reference_forward(x, tuple(torch.zeros(1, 2, 4, dtype=torch.float64)
                                                                                 for _ in range(2)), None))
            pick(y, parts).backward()
            if path == "bptt":
                got = layer.weight_hh_l0.grad.clone()
            else:
                torch.testing.assert_close(got, layer.weight_hh_l0.grad, rtol=1e-10, atol=1e-12)


def test_predicate_truth_table():
    x = torch.randn(2, 5, 3)
    assert bptt.bptt_unsupported_reason(Recurrent("gru", 3, 4), x) is None
    assert "lengths" in bptt.bptt_unsupported_reason(Recurrent("gru", 3, 4), x, torch.tensor([5, 3]))
    assert bptt.bptt_unsupported_reason(Recurrent("lstm", 3, 4, layer_norm=True), x) is None
    assert "layer_norm" in bptt.bptt_unsupported_reason(Recurrent("gru", 3, 4, layer_norm=True, reset_after=False), x)
    assert "layer_norm" in bptt.bptt_unsupported_reason(Recurrent("rnn", 3, 4, layer_norm=True), x)
    assert "dtype" in bptt.bptt_unsupported_reason(Recurrent("rnn", 3, 4), x.half())


@pytest.mark.skipif(native.unavailable_reason() is not None, reason="the sequence kernels need the native kernels")
@pytest.mark.parametrize("cell,inference", [("lstm", "fused"), ("rnn", "bptt")])
def test_auto_takes_the_sequence_kernels_where_they_are_faster(cell, inference, monkeypatch):
    """"auto": the sequence kernel to train in float32 (faster than torch's kernels where
    measured so); for inference oneDNN's LSTM but still the RNN kernel; torch's kernels under
    bfloat16 autocast (which they run in bfloat16) and for LSTMs wider than where the kernel
    measured faster on this CPU (on some CPUs no width: then oneDNN trains every LSTM)."""
    monkeypatch.setattr(dispatch.PATHS, "lstm_sequence_beats_fused_max_hidden", 128)  # the Intel Xeon's figure
    layer, x = Recurrent(cell, 3, 16), torch.randn(2, 5, 3)
    paths = []
    for context in (contextlib.nullcontext(), torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16)):
        with context:
            layer(x)
        paths.append(layer.last_path)
    assert paths == ["bptt", inference, "fused"]
    if cell == "lstm":
        wide = Recurrent("lstm", 3, dispatch.PATHS.lstm_sequence_beats_fused_max_hidden + 1)
        wide(x)
        assert wide.last_path == "fused"
        monkeypatch.setattr(dispatch.PATHS, "lstm_sequence_beats_fused_max_hidden", 0)  # the AMD EPYC's figure
        layer(x)
        assert layer.last_path == "fused"


def test_auto_takes_torchs_gru_only_under_autocast_and_when_wide():
    """GRU: the explicit BPTT path trains in float32 at every width; under bfloat16 autocast
    torch's kernel (bfloat16 matmuls) serves from gru_fused_under_autocast_min_hidden units up."""
    wide = dispatch.PATHS.gru_fused_under_autocast_min_hidden
    x = torch.randn(2, 3, 4)
    paths = {}
    for hidden in (wide - 1, wide):
        layer = Recurrent("gru", 4, hidden)
        for name, context in (("fp32", contextlib.nullcontext()), ("bf16", torch.autocast("cpu", dtype=torch.bfloat16))):
            with context:
                layer(x)
            paths[hidden, name] = layer.last_path
    assert paths == {(wide - 1, "fp32"): "bptt", (wide - 1, "bf16"): "bptt", (wide, "fp32"): "bptt", (wide, "bf16"): "fused"}
