"""The native kernels (rnnkit/native.c): equal to the torch code they replace, built once, optional."""

import shutil
import warnings

import pytest
import torch

from rnnkit import Recurrent, bptt, dispatch, native

needs_compiler = pytest.mark.skipif(
    native.unavailable_reason() is not None, reason=f"native kernels unavailable: {native.unavailable_reason()}")


def _run(layer, x, state, use_native, monkeypatch):
    """Outputs, final states and all gradients of the explicit-BPTT path, native kernels on or off."""
    with monkeypatch.context() as m:
        if not use_native:
            m.setattr(native, "kernels_for", lambda name, like: None)
        else:
            assert native.unavailable_reason() is None
        layer.zero_grad()
        x = x.clone().requires_grad_()
        state = tuple(s.clone().requires_grad_() for s in state)
        torch.manual_seed(3)  # the same recurrent-dropout masks on both runs
        y, parts = bptt.bptt_forward(layer, x, state)
        g = torch.Generator().manual_seed(1)
        loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum()
        for p in parts:
            loss = loss + (p * torch.randn(p.shape, generator=g, dtype=p.dtype)).sum()
        loss.backward()
    grads = [p.grad.clone() for p in layer.parameters()] + [x.grad] + [s.grad for s in state]
    return [y.detach(), *[p.detach() for p in parts]], grads


CONFIGS = {"lstm": dict(cell="lstm"), "lstm-layer-norm": dict(cell="lstm", layer_norm=True),
           "gru": dict(cell="gru"), "gru-steps": dict(cell="gru"), "gru-reset-before": dict(cell="gru", reset_after=False),
           "gru-reset-before-steps": dict(cell="gru", reset_after=False)}


@needs_compiler
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("recurrent_dropout", [0.0, 0.4])
def test_native_steps_equal_the_torch_loop(config, dtype, tol, recurrent_dropout, monkeypatch):
    torch.manual_seed(0)
    if config.endswith("-steps"):  # the step kernels, not the whole-sequence kernel the GRU takes at this size
        monkeypatch.setitem(dispatch.PATHS.sequence_kernel_max_hidden, "gru", 0)
    options = dict(CONFIGS[config])
    cell, layer_norm = options.pop("cell"), options.get("layer_norm", False)
    layer = Recurrent(cell, 3, 6, num_layers=2, bidirectional=True, recurrent_dropout=recurrent_dropout,
                      **options).to(dtype)
    if layer_norm:  # gains and the LN(c) bias away from their initial 1 and 0, so that they matter
        with torch.no_grad():
            for name, p in layer.named_parameters():
                if "ln" in name:
                    p.add_(0.3 * torch.randn_like(p))
    layer.train()
    x = torch.randn(5, 80, 3, dtype=dtype) * 2  # 80 steps: 2.5 blocks of the torch loop's factors
    state = tuple(torch.randn(4, 5, 6, dtype=dtype) for _ in range(layer.state_size))
    if layer_norm and dtype == torch.float32:
        tol = 1e-3  # each float32 path is ~1e-4 of the largest value from float64 (LN over 6 units)
    values_native, grads_native = _run(layer, x, state, True, monkeypatch)
    values_torch, grads_torch = _run(layer, x, state, False, monkeypatch)
    for a, b in zip(values_native + grads_native, values_torch + grads_torch):
        torch.testing.assert_close(a, b, rtol=0, atol=tol * max(1.0, b.abs().max().item()))


@needs_compiler
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-3)])
@pytest.mark.parametrize("recurrent_dropout", [0.0, 0.4])
@pytest.mark.parametrize("kernels", ["sequence", "steps"])
def test_native_layer_norm_gru_equals_the_reference_loop(dtype, tol, recurrent_dropout, kernels, monkeypatch):
    """GRU layer norm has no torch loop in rnnkit.bptt: its native paths are checked against the reference."""
    if kernels == "steps":
        monkeypatch.setitem(dispatch.PATHS.sequence_kernel_max_hidden, "gru", 0)
    torch.manual_seed(0)
    layer = Recurrent("gru", 3, 6, num_layers=2, bidirectional=True, recurrent_dropout=recurrent_dropout,
                      layer_norm=True).to(dtype)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if "ln" in name:
                p.add_(0.3 * torch.randn_like(p))
    x, state = torch.randn(5, 40, 3, dtype=dtype) * 2, (torch.randn(4, 5, 6, dtype=dtype),)
    got = _run(layer, x, state, True, monkeypatch)
    with monkeypatch.context() as m:
        m.setattr(bptt, "bptt_forward", lambda layer, x, state: layer.reference_forward(x, state, None))
        want = _run(layer, x, state, True, monkeypatch)
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=tol * max(1.0, b.abs().max().item()))


SEQUENCE_CONFIGS = {"gru": dict(cell="gru"), "gru-layer-norm": dict(cell="gru", layer_norm=True),
                    "gru-reset-before": dict(cell="gru", reset_after=False), "lstm": dict(cell="lstm"),
                    "lstm-layer-norm": dict(cell="lstm", layer_norm=True), "rnn-tanh": dict(cell="rnn"),
                    "rnn-relu": dict(cell="rnn", nonlinearity="relu")}


@needs_compiler
@pytest.mark.parametrize("config", list(SEQUENCE_CONFIGS))
def test_sequence_kernels_in_row_blocks_and_on_threads(config, monkeypatch):
    """The whole-sequence kernels at H = 70: column blocks plus a tail, 4-row blocks plus a
    remainder (B = 6); float64 against the reference loop; float32 on two threads (rows split)
    against one thread: the same bits without layer norm, where each row is one thread's, and
    within rounding with it (the gain sums)."""
    options = dict(SEQUENCE_CONFIGS[config])
    cell, layer_norm = options.pop("cell"), options.get("layer_norm", False)
    torch.manual_seed(0)
    layer = Recurrent(cell, 5, 70, bidirectional=True, recurrent_dropout=0.3, **options).double()
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if "ln" in name:
                p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(6, 5, 5, dtype=torch.float64)
    state = tuple(torch.randn(2, 6, 70, dtype=torch.float64) for _ in range(layer.state_size))
    got = _run(layer, x, state, True, monkeypatch)
    with monkeypatch.context() as m:
        m.setattr(bptt, "bptt_forward", lambda layer, x, state: layer.reference_forward(x, state, None))
        want = _run(layer, x, state, True, monkeypatch)
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    layer, x, state = layer.float(), x.float(), tuple(s.float() for s in state)
    threads = torch.get_num_threads()
    try:
        runs = []
        for n, min_work in ((1, native.STEP_MIN_WORK), (2, 0)):
            torch.set_num_threads(n)
            native.set_step_min_work(min_work)
            runs.append(_run(layer, x, state, True, monkeypatch))
    finally:
        torch.set_num_threads(threads)
        native.set_step_min_work(native.STEP_MIN_WORK)
    for a, b in zip(runs[0][0] + runs[0][1], runs[1][0] + runs[1][1]):
        if layer_norm:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * max(1.0, b.abs().max().item()))
        else:
            assert torch.equal(a, b)


@needs_compiler
@pytest.mark.parametrize("bias", [True, False])
def test_native_input_gate_norm_equals_torch_and_repeats_on_threads(bias):
    """The whole-projection layer norm (rows split over two threads at this size): the torch
    arithmetic's values and gradients in float64, and the same bits on every run."""
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, 50, 64, 4 * 16, generator=g, dtype=torch.float64) * 3 + 1
    gain, b = torch.rand(2, 64, generator=g, dtype=torch.float64) + 0.5, torch.randn(2, 64, generator=g, dtype=torch.float64)
    w = torch.randn(z.shape, generator=g, dtype=torch.float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        results = []
        for use_native in (True, True, False):
            args = [t.clone().requires_grad_() for t in (z, gain, b)]
            kernels = native.kernels_for("gate_norm", z) if use_native else None
            if kernels is not None:
                y = bptt.norm.GateNormFunction.apply(args[0], args[1], args[2] if bias else None, kernels, 4)
            else:
                y = bptt.norm.gate_norm(args[0], args[1], 4)
                y = y + args[2][:, None, None] if bias else y
            (y * w).sum().backward()
            results.append([y.detach()] + [a.grad if a.grad is not None else torch.zeros(()) for a in args])
    finally:
        torch.set_num_threads(threads)
    for a, b_, c in zip(*results):
        assert torch.equal(a, b_)
        torch.testing.assert_close(a, c, rtol=0, atol=1e-10 * max(1.0, c.abs().max().item()))


@needs_compiler
def test_saturated_gates_match_torch_sigmoid():
    """Pre-activations of +-100 saturate to 0 and 1 (no NaN, no overflow), as torch.sigmoid does."""
    B, H = 2, 16
    a = torch.full((1, 1, B, 4 * H), 100.0)
    a[..., 1::2] = -100.0
    cs, hs = torch.zeros(1, 2, B, H), torch.zeros(1, 2, B, H)
    tc = torch.empty(1, 1, B, H)
    expected = torch.sigmoid(a.clone())
    step = native.LSTMSteps(*native.kernels("lstm", torch.float32)).bind_forward(a, cs, tc, hs, None, hs[:, :-1])
    step(0)
    expected[..., 3 * H :] = 2 * expected[..., 3 * H :] - 1  # g = 2 sigmoid(2a) - 1
    torch.testing.assert_close(a, expected, rtol=0, atol=1e-30)
    assert torch.isfinite(hs).all() and torch.isfinite(cs).all()


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """The loader's state forgotten before and after the test, its cache in a temporary folder."""
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path))
    native.reset()
    yield tmp_path
    native.reset()


def test_turned_off_by_the_environment(fresh_native, monkeypatch):
    monkeypatch.setenv(native.NATIVE_ENV, "0")
    assert native.kernels("lstm", torch.float32) is None
    assert "RNNKIT_NATIVE=0" in native.unavailable_reason()
    torch.manual_seed(0)
    layer = Recurrent("lstm", 2, 3, use_fused=False)
    y, _ = layer(torch.randn(2, 5, 2))  # the torch loop serves
    assert y.shape == (2, 5, 3)


def test_no_compiler_warns_once_and_falls_back(fresh_native, monkeypatch):
    monkeypatch.setenv("CC", "rnnkit-no-such-compiler")
    with pytest.warns(RuntimeWarning, match="no C compiler found"):
        assert native.library() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.kernels("lstm", torch.float64) is None  # no second warning


def test_the_command_line_prints_the_warning_on_one_line():
    from rnnkit.cli.main import one_line_warning

    text = one_line_warning(RuntimeWarning("rnnkit's native kernels are unavailable: no C compiler\nfound"),
                            RuntimeWarning, "native.py", 1, "warnings.warn(...)")
    assert text == "rnnkit: warning: rnnkit's native kernels are unavailable: no C compiler found\n"


@pytest.mark.skipif(shutil.which("false") is None, reason="no 'false' program to stand in for a broken compiler")
def test_failed_build_names_the_compiler(fresh_native, monkeypatch):
    monkeypatch.setenv("CC", "false")
    with pytest.warns(RuntimeWarning, match="compiling native.c with .*false failed"):
        assert native.library() is None
    assert [p.suffix for p in fresh_native.iterdir()] == [".lock"]  # no half-written library left behind


@needs_compiler
def test_built_once_into_the_cache(fresh_native):
    assert native.library() is not None
    (built,) = fresh_native.glob("native-*.so")
    files = sorted(p.name for p in fresh_native.iterdir())  # the library, its sha256, the build lock
    stamp = built.stat().st_mtime_ns
    native.reset()
    assert native.library() is not None
    assert sorted(p.name for p in fresh_native.iterdir()) == files and built.stat().st_mtime_ns == stamp


def _scan_run(layer, x, lengths, use_outputs, use_native, monkeypatch):
    from rnnkit import scan

    with monkeypatch.context() as m:
        if not use_native:
            m.setattr(scan, "_native_scan", lambda like, name="mingru": None)
        layer.zero_grad()
        x = x.clone().requires_grad_()
        h0 = torch.randn(1, x.shape[0], layer.hidden_size, dtype=x.dtype, generator=torch.Generator().manual_seed(2))
        h0.requires_grad_()
        y, h = layer(x, h0, lengths=lengths)
        g = torch.Generator().manual_seed(1)
        loss = (h * torch.randn(h.shape, generator=g, dtype=h.dtype)).sum()
        if use_outputs:
            loss = loss + (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum()
        loss.backward()
    return [y.detach(), h.detach(), x.grad, h0.grad] + [p.grad for p in layer.parameters()]


@needs_compiler
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("use_outputs", [True, False], ids=["outputs-and-state", "final-state-only"])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("cell,batch,features", [("mingru", 4, 3), ("mingru", 6, 1), ("mingru", 5, 24), ("minlstm", 4, 3)],
                         ids=["mingru-narrow", "mingru-one-feature", "mingru-wide", "minlstm"])
def test_native_scans_equal_the_torch_scan(cell, dtype, tol, use_outputs, with_lengths, batch, features, monkeypatch):
    """minGRU with narrow inputs (<= dispatch.PATHS.mingru_narrow_input_max_features) projects inside the native loops."""
    torch.manual_seed(0)
    layer = Recurrent(cell, features, 5).to(dtype)
    x = torch.randn(batch, 9, features, dtype=dtype) * 3  # both branches of g (k_h < 0 and >= 0)
    lengths = torch.randint(1, 10, (batch,), generator=torch.Generator().manual_seed(4)) if with_lengths else None
    native_run = _scan_run(layer, x, lengths, use_outputs, True, monkeypatch)
    torch_run = _scan_run(layer, x, lengths, use_outputs, False, monkeypatch)
    for a, b in zip(native_run, torch_run):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_native_minlstm_with_extreme_gates(dtype):
    """Both gate pre-activations far below -88 (where e^-k overflows float32): still the ratio
    f / (f + i) of the log-space reference, finite values and gradients."""
    from rnnkit import scan

    k = torch.tensor([[-120.0, -110.0, 0.3], [-100.0, 40.0, -2.0], [90.0, -95.0, 1.5], [0.5, -0.5, -30.0]],
                     dtype=torch.float64)  # rows: (k_f, k_i, k_h) for 4 units
    xp = k.t().reshape(1, 1, 12).expand(3, 2, 12).contiguous()  # T=3, B=2, H=4
    h0 = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a, b = scan.coefficients("minlstm", xp)
    ref = scan.SequentialScan.apply(a.contiguous(), b.contiguous(), h0)
    xp_n = xp.to(dtype).requires_grad_()
    h, last = scan.MinLSTMScan.apply(xp_n, h0.to(dtype), None, native.kernels("minlstm", dtype))
    torch.testing.assert_close(h.double(), ref, rtol=1e-5, atol=1e-6)
    (h.sum() + last.sum()).backward()
    assert torch.isfinite(xp_n.grad).all()


@needs_compiler
@pytest.mark.parametrize("cell,features", [("mingru", 1), ("mingru", 24), ("minlstm", 3)])
def test_native_scans_split_over_threads(cell, features, monkeypatch):
    """Enough work (T * B * H >= 65536) for the sequence kernels to split the rows over torch's
    threads: the same numbers as the torch scan, and the same bits on every run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        layer = Recurrent(cell, features, 64).double()
        x = torch.randn(32, 40, features, dtype=torch.float64)
        native_run = _scan_run(layer, x, None, True, True, monkeypatch)
        again = _scan_run(layer, x, None, True, True, monkeypatch)
        torch_run = _scan_run(layer, x, None, True, False, monkeypatch)
    finally:
        torch.set_num_threads(threads)
    for a, b, c in zip(native_run, again, torch_run):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-10)
