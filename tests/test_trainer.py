"""Trainer: resume == uninterrupted (bit-identical), TBPTT carry/detach, clipping, schedules,
divergence stop, early stopping, time budget, determinism. Tiny models: the file runs in seconds."""

import math
import random

import pytest
import torch

import rnnkit_toytask as toy
from rnnkit import GRU
from rnnkit.artifacts import read_tensors
from rnnkit.tasks.artifact import read_artifact
from rnnkit.data.batching import Batch
from rnnkit.models import ModelConfig, SequenceModel
from rnnkit.training.callbacks import Callback
from rnnkit.training.config import TrainConfig
from rnnkit.training.schedules import cosine, learning_rate, step_decay, warmup_factor
from rnnkit.training.trainer import Trainer, TrainingDiverged


def _values(n=160, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n, dtype=torch.float32)
    return torch.sin(0.3 * t) + 0.1 * torch.randn(n, generator=g)


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(encoder="linear", input_size=1, embedding_dim=4, hidden_size=6, cell="lstm",
               head="per_step", output_size=1, embedding_dropout=0.2, head_dropout=0.1,
               use_fused="false")  # oneDNN's per-call set-up dominates at these toy sizes
    cfg.update(kw)
    return SequenceModel(ModelConfig(**cfg))


def _loss(outputs, batch):
    return torch.nn.functional.mse_loss(outputs, batch.targets)


def _evaluate(source):
    return lambda m: toy.TASK.evaluate(m, source.epoch(0, 0))


class Kill(Exception):
    pass


class KillAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, logs):
        if logs["step"] == self.step:
            raise Kill()


@pytest.mark.parametrize("source_cls,ema", [(toy.StreamSource, 0.0), (toy.ShuffledSource, 0.0), (toy.ShuffledSource, 0.9)])
def test_resume_after_kill_is_bit_identical(tmp_path, source_cls, ema):
    values = _values()
    train, val = source_cls(values[:128], 4, 5), toy.StreamSource(values[128:], 1, 8)
    cfg = TrainConfig(seed=3, epochs=3, eval_every=4, checkpoint_every=3, lr=1e-2, schedule="cosine",
                      warmup_steps=2, log_every=2, patience=5, ema=ema)
    meta = {"task": "toy", "model": _model().config.to_dict()}
    total = 3 * len(train)
    kill = random.Random(total).randrange(4, total - 1)  # a "random" step, fixed for reproducibility

    ref_model = _model()
    ref = Trainer(cfg).fit(ref_model, train, _loss, _evaluate(val), run_dir=tmp_path / "ref", meta=meta)

    with pytest.raises(Kill):
        Trainer(cfg, [KillAt(kill)]).fit(_model(), train, _loss, _evaluate(val), run_dir=tmp_path / "cut", meta=meta)
    assert read_artifact(tmp_path / "cut").meta["step"] == (kill - 1) // 3 * 3  # killed inside step `kill`, before its save
    resumed_model = _model(seed=99)  # different init: everything must come from the checkpoint
    resumed = Trainer(cfg).fit(resumed_model, train, _loss, _evaluate(val), run_dir=tmp_path / "cut",
                               meta=meta, resume=True)

    names = ["model.safetensors", "checkpoint/model.safetensors", "checkpoint/optimizer.safetensors"]
    for name in names + (["checkpoint/average.safetensors"] if ema else []):
        a, b = read_tensors(tmp_path / "ref" / name, name), read_tensors(tmp_path / "cut" / name, name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    for k, v in ref_model.state_dict().items():
        assert torch.equal(v, resumed_model.state_dict()[k])
    assert ref.eval == resumed.eval and ref.best == resumed.best
    assert [r["loss"] for r in ref.train] == [r["loss"] for r in resumed.train]


class WeightSnapshots(Callback):
    def __init__(self, model):
        self.model, self.after_step = model, []

    def on_step_end(self, trainer, logs):
        self.after_step.append({k: v.detach().clone() for k, v in self.model.named_parameters()})


def test_ema_weights_follow_the_formula_and_are_what_evaluation_sees(tmp_path):
    values = _values()
    train, val = toy.ShuffledSource(values[:128], 4, 5), toy.StreamSource(values[128:], 1, 8)
    decay, model = 0.8, _model()
    seen = []
    evaluate = lambda m: seen.append({k: v.clone() for k, v in m.named_parameters()}) or _evaluate(val)(m)  # noqa: E731
    snaps = WeightSnapshots(model)
    Trainer(TrainConfig(epochs=1, lr=1e-2, ema=decay, log_every=0), [snaps]).fit(model, train, _loss, evaluate)
    average = {k: v.detach().clone() for k, v in _model().named_parameters()}  # the same initial weights
    for t, w in enumerate(snaps.after_step):
        d = min(decay, (1 + t) / (10 + t))
        average = {k: d * average[k] + (1 - d) * w[k] for k in average}
    assert len(snaps.after_step) == len(train) and len(seen) == 1  # one evaluation, at the epoch end
    for k, v in model.named_parameters():
        torch.testing.assert_close(seen[0][k], average[k], rtol=1e-5, atol=1e-6)  # evaluated: the average
        torch.testing.assert_close(v.detach(), average[k], rtol=1e-5, atol=1e-6)  # returned: the average
        assert not torch.allclose(average[k], snaps.after_step[-1][k])  # ... which is not the last weights


class Recorder(torch.nn.Module):
    """Wraps a model and records the state each call receives and returns."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x, state=None, lengths=None):
        out, new = self.inner(x, state, lengths)
        self.seen.append((state, new))
        return out, new


def _chunks(carries):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 1, generator=g)
    return [Batch(x[:, :3], x[:, 1:4], carries_state=carries), Batch(x[:, 3:5], x[:, 4:6], carries_state=carries)]


class ListSource:
    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def epoch(self, epoch, seed):
        return iter(self.batches)


class GradCapture(Callback):
    def __init__(self, model):
        self.model, self.grads, self.norms = model, [], []

    def on_step_end(self, trainer, logs):
        self.grads.append({n: p.grad.clone() for n, p in self.model.named_parameters()})
        self.norms.append(logs["grad_norm"])


def test_tbptt_carries_values_not_gradients():
    batches = _chunks(carries=True)
    model = Recorder(_model(embedding_dropout=0.0, head_dropout=0.0))
    cap = GradCapture(model)
    cfg = TrainConfig(epochs=1, optimizer="sgd", lr=0.0, clip_grad_norm=None, explode_factor=0)
    Trainer(cfg, [cap]).fit(model, ListSource(batches), _loss)
    (in1, out1), (in2, _) = model.seen
    assert in1 is None
    for carried, final in zip(in2, out1):  # LSTM: (h, c)
        assert torch.equal(carried, final.detach()) and carried.grad_fn is None and not carried.requires_grad
    # the step-2 gradients are exactly those of a forward that starts from the detached state
    ref = _model(embedding_dropout=0.0, head_dropout=0.0)
    ref.load_state_dict(model.inner.state_dict())
    _, h = ref(batches[0].inputs)
    out, _ = ref(batches[1].inputs, tuple(s.detach() for s in h))
    _loss(out, batches[1]).backward()
    for n, p in ref.named_parameters():
        assert torch.allclose(cap.grads[1]["inner." + n], p.grad, atol=1e-7), n
    # ... and differ from full BPTT through the boundary (so the test can tell them apart)
    ref.zero_grad()
    _, h = ref(batches[0].inputs)
    out, _ = ref(batches[1].inputs, h)
    _loss(out, batches[1]).backward()
    assert not torch.allclose(cap.grads[1]["inner.rnn.weight_hh_l0"], ref.rnn.weight_hh_l0.grad)


def test_batches_without_carry_start_from_zeros():
    model = Recorder(_model())
    Trainer(TrainConfig(epochs=1)).fit(model, ListSource(_chunks(carries=False)), _loss)
    assert [s for s, _ in model.seen] == [None, None]


def test_gradient_clipping_scales_to_max_norm():
    batches = _chunks(carries=False)[:1]
    model = _model(embedding_dropout=0.0, head_dropout=0.0)
    ref = _model(embedding_dropout=0.0, head_dropout=0.0)
    cap = GradCapture(model)
    Trainer(TrainConfig(epochs=1, optimizer="sgd", lr=0.0, clip_grad_norm=1e-3), [cap]).fit(model, ListSource(batches), _loss)
    out, _ = ref(batches[0].inputs)
    _loss(out, batches[0]).backward()
    raw = torch.sqrt(sum((p.grad ** 2).sum() for p in ref.parameters()))
    assert cap.norms[0] == pytest.approx(float(raw), rel=1e-6) and float(raw) > 1e-3
    clipped = torch.sqrt(sum((g ** 2).sum() for g in cap.grads[0].values()))
    assert float(clipped) == pytest.approx(1e-3, rel=1e-4)
    for n, p in ref.named_parameters():
        assert torch.allclose(cap.grads[0][n], p.grad * (1e-3 / (raw + 1e-6)), atol=1e-9)


def test_schedules_hand_computed():
    assert [warmup_factor(s, 4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert cosine(0, 1.0, 10) == 1.0
    assert cosine(5, 1.0, 10, 0.0) == pytest.approx(0.5)
    assert cosine(10, 1.0, 10, 0.1) == pytest.approx(0.1) and cosine(20, 1.0, 10, 0.1) == pytest.approx(0.1)
    assert cosine(2, 1.0, 8) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert [step_decay(s, 1.0, 3, 0.5) for s in (0, 2, 3, 6, 7)] == [1.0, 1.0, 0.5, 0.25, 0.25]
    lrs = [learning_rate(s, 0.1, "cosine", warmup_steps=2, total_steps=6) for s in range(7)]
    assert lrs[:2] == [0.05, 0.1]
    assert lrs[2:] == pytest.approx([0.1, 0.1 * (1 + math.cos(math.pi / 4)) / 2, 0.05, 0.1 * (1 + math.cos(3 * math.pi / 4)) / 2, 0.0])
    assert learning_rate(5, 0.1, "constant", warmup_steps=2) == 0.1
    with pytest.raises(ValueError):
        learning_rate(0, 0.1, "linear")


def test_trainer_applies_the_schedule_each_step():
    seen = []

    class LR(Callback):
        def on_step_end(self, trainer, logs):
            seen.append(logs["lr"])

    src = toy.StreamSource(_values(), 4, 5)
    cfg = TrainConfig(epochs=1, max_steps=6, lr=0.1, schedule="step", step_size=2, gamma=0.1, warmup_steps=1)
    Trainer(cfg, [LR()]).fit(_model(), src, _loss)
    assert seen == pytest.approx([0.1, 0.1, 0.1, 0.01, 0.01, 0.001])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    toy.register(monkeypatch)
    calls = []

    def loss(outputs, batch):
        calls.append(1)
        value = _loss(outputs, batch)
        return value * float("nan") if len(calls) == 5 else value

    src = toy.StreamSource(_values(), 4, 5)
    meta = {"task": "toy", "model": _model().config.to_dict()}
    with pytest.raises(TrainingDiverged) as err:
        Trainer(TrainConfig(epochs=2, checkpoint_every=2)).fit(_model(), src, loss, run_dir=tmp_path / "r", meta=meta)
    assert str(err.value) == (
        f"training diverged at step 5: loss is nan; the last good checkpoint (step 4) is kept in {tmp_path / 'r'}; "
        "try a lower --lr or --clip-grad-norm")
    art = read_artifact(tmp_path / "r")
    assert art.meta["step"] == 4 and art.meta["status"] == "training"
    art.build_model()  # loadable


def test_exploding_loss_stops():
    def loss(outputs, batch):
        return _loss(outputs, batch) * (1.0 if batch.inputs.sum() < 1e9 and not hasattr(loss, "n") else 1e6)

    src = ListSource(_chunks(False) * 3)

    class Boom(Callback):
        def on_step_end(self, trainer, logs):
            loss.n = 1

    with pytest.raises(TrainingDiverged, match=r"training diverged at step 2: loss .* exceeds 10 x the first loss"):
        Trainer(TrainConfig(epochs=1), [Boom()]).fit(_model(), src, loss)


def test_early_stopping_keeps_best_weights():
    src = toy.StreamSource(_values(), 4, 5)
    scores = iter([1.0, 0.5, 0.7, 0.8, 0.9, 1.0, 1.1])
    snapshots = {}

    def evaluate(model):
        snapshots[len(snapshots) + 1] = {k: v.clone() for k, v in model.state_dict().items()}
        return {"loss": next(scores)}

    model = _model()
    hist = Trainer(TrainConfig(epochs=5, eval_every=1, patience=2)).fit(model, src, _loss, evaluate)
    assert hist.stop_reason == "early stopping: val loss did not improve for 2 evaluations (best 0.5 at step 2)"
    assert [e["step"] for e in hist.eval] == [1, 2, 3, 4] and hist.best["step"] == 2
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshots[2][k])


def test_monitor_max_selects_highest():
    src = toy.StreamSource(_values(), 4, 5)
    scores = iter([0.1, 0.9, 0.3, 0.2])
    hist = Trainer(TrainConfig(epochs=1, max_steps=4, eval_every=1, monitor="acc", monitor_mode="max")).fit(
        _model(), src, _loss, lambda m: {"loss": 0.0, "acc": next(scores)})
    assert hist.best["step"] == 2 and hist.best["acc"] == 0.9


def test_time_budget_stops_cleanly(tmp_path):
    src = toy.StreamSource(_values(), 4, 5)
    hist = Trainer(TrainConfig(epochs=100, time_budget=1e-9)).fit(_model(), src, _loss, run_dir=tmp_path / "r",
                                                                   meta={"task": "toy", "model": {}})
    assert hist.stop_reason == "time budget of 1e-09 s reached at step 0"


class OneSecondSteps(Trainer):
    """A trainer whose clock says every optimizer step took exactly one second."""

    @property
    def elapsed(self):
        return float(self.state.step)


@pytest.mark.parametrize("fit", [True, False])
def test_schedule_to_budget_ends_the_cosine_when_the_budget_ends(fit):
    seen = []

    class LR(Callback):
        def on_step_end(self, trainer, logs):
            seen.append(logs["lr"])

    src = toy.StreamSource(_values(), 4, 5)
    planned = 100 * len(src)
    cfg = TrainConfig(epochs=100, lr=0.1, min_lr=0.001, schedule="cosine", warmup_steps=2, time_budget=30,
                      schedule_to_budget=fit)
    hist = OneSecondSteps(cfg, [LR()]).fit(_model(), src, _loss)
    assert hist.stop_reason == "time budget of 30 s reached at step 30" and len(seen) == 30
    timed = 10  # steps measured before the schedule is refitted to the budget
    expect = [learning_rate(s, 0.1, "cosine", 2, 30 if fit and s >= timed else planned, 0.001) for s in range(30)]
    assert seen == pytest.approx(expect)
    assert (seen[-1] < 0.002) == fit  # the decay reached its floor only when fitted to the budget


def test_same_seed_same_weights_and_optimizers():
    src = toy.ShuffledSource(_values(), 4, 5)
    for opt in ("adamw", "adam", "sgd", "rmsprop"):
        cfg = TrainConfig(epochs=1, max_steps=5, optimizer=opt, momentum=0.5, seed=7, lr=1e-2)
        a, b = _model(), _model()
        Trainer(cfg).fit(a, src, _loss)
        Trainer(cfg).fit(b, src, _loss)
        init = _model()
        for k, v in a.state_dict().items():
            assert torch.equal(v, b.state_dict()[k])
        assert not torch.equal(a.state_dict()["head.weight"], init.state_dict()["head.weight"]), opt


@pytest.mark.parametrize("cell,use_fused,path", [("lstm", "true", "fused"), ("gru", "auto", "bptt"),
                                                 ("lstm", "false", "bptt")])
def test_bf16_precision_trains_close_to_fp32_with_fp32_weights_and_state(cell, use_fused, path):
    """precision=bf16 autocasts forward and loss; weights, carried state and outputs stay fp32."""
    src = toy.StreamSource(_values(), 4, 5)
    runs = {}
    for precision in ("fp32", "bf16"):
        model = _model(cell=cell, use_fused=use_fused, embedding_dropout=0.0, head_dropout=0.0)
        seen = []
        orig = model.rnn.forward

        def spy(*a, **k):
            y, state = orig(*a, **k)
            seen.append((model.rnn.last_path, y.dtype, (state[0] if isinstance(state, tuple) else state).dtype))
            return y, state
        model.rnn.forward = spy
        hist = Trainer(TrainConfig(epochs=1, max_steps=6, lr=1e-2, precision=precision, log_every=1)).fit(model, src, _loss)
        runs[precision] = [r["loss"] for r in hist.train]
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert set(seen) == {(path, torch.float32, torch.float32)}
    assert len(runs["bf16"]) == 6
    # the non-fused paths run fp32 inside autocast; only the embedding/head matmuls round to bf16
    assert runs["bf16"] == pytest.approx(runs["fp32"], rel=3e-2)


@pytest.mark.parametrize("path", ["bptt", "reference"])
def test_non_fused_paths_ignore_autocast_exactly(path):
    """Under autocast the loops keep fp32: the same numbers as without autocast."""
    torch.manual_seed(0)
    layer = GRU(3, 5, num_layers=2, bidirectional=True, layer_norm=True)
    layer.force_path = path
    x = torch.randn(2, 7, 3)
    y0, h0 = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y1, h1 = layer(x)
    assert layer.last_path == path and y1.dtype == torch.float32
    assert torch.equal(y0, y1) and torch.equal(h0, h1)
