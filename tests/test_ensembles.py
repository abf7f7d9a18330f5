"""Ensembles of finished runs (``rnnkit ensemble``, ``rnnkit.ensemble``): the averages equal the
members loaded separately and averaged by hand, mismatched runs are refused in one line,
validation weights are never worse on validation than the best member, and the artifact is
self-contained and used by every verb like any run."""

import itertools
import json
import shutil

import numpy as np
import pytest
import torch

import rnnkit
from rnnkit import artifacts
from rnnkit.runs import open_run
from rnnkit.cli.main import main
from rnnkit.ensembles import EnsembleModel, build_ensemble, mixture_weights, simplex_least_squares
from rnnkit.models import ModelConfig
from rnnkit.tasks import get_task
from rnnkit.training.config import TrainConfig
from rnnkit.runs import evaluate_run, train_task

TEXT = "the quick brown fox jumps over the lazy dog. a stitch in time saves nine. " * 8


def _train(out, task, data, task_config, model, seed, steps=4):
    train_task(task, str(data), out, model, TrainConfig(max_steps=steps, log_every=1, seed=seed), task_config,
               progress=False)
    return out


@pytest.fixture(scope="module")
def textgen_runs(tmp_path_factory):
    """Two finished textgen runs on one text: an LSTM (seed 0) and a GRU (seed 1)."""
    tmp = tmp_path_factory.mktemp("textgen")
    (tmp / "text.txt").write_text(TEXT)
    config = get_task("textgen").Config(seq_len=8, batch_size=4, val_fraction=0.2)
    return [_train(tmp / f"run{i}", "textgen", tmp / "text.txt", config,
                   ModelConfig(cell=cell, hidden_size=8, embedding_dim=6), seed=i)
            for i, cell in enumerate(("lstm", "gru"))]


@pytest.fixture(scope="module")
def forecast_runs(tmp_path_factory):
    """Two forecasting runs on the sines panel: a dense GRU (seed 0) and a SegRNN (seed 1)."""
    tmp = tmp_path_factory.mktemp("forecast")
    Config = get_task("forecast").Config
    rnn = Config(lookback=12, horizon=3, batch_size=16, sines_series="60,20,10")
    seg = Config(lookback=12, horizon=3, batch_size=16, sines_series="60,20,10", architecture="segrnn",
                 segment_length=4)
    return [_train(tmp / "rnn", "forecast", "sines", rnn, ModelConfig(cell="gru", hidden_size=8), seed=0, steps=6),
            _train(tmp / "seg", "forecast", "sines", seg, ModelConfig(cell="gru", hidden_size=8), seed=1, steps=6)]


def _probs(model, ids):
    with torch.no_grad():
        return torch.softmax(model(ids)[0].double(), -1)


def _set_weights(run, weights):
    meta = json.loads((run / "artifact.json").read_text())
    meta["ensemble"]["weights"] = weights
    (run / "artifact.json").write_text(json.dumps(meta))


# -- the averages are the members' averages ----------------------------------------------------------


def test_textgen_probabilities_are_the_weighted_mean_of_the_members_loaded_alone(textgen_runs, tmp_path):
    out = tmp_path / "ens"
    gen = rnnkit.ensemble(textgen_runs, out=out)
    a, b = (rnnkit.load(run) for run in textgen_runs)
    ids = a.vocab.encode("the lazy dog").view(1, -1)
    torch.testing.assert_close(_probs(gen.model, ids), (_probs(a.model, ids) + _probs(b.model, ids)) / 2)
    _set_weights(out, [0.25, 0.75])
    weighted = rnnkit.load(out)
    expected = 0.25 * _probs(a.model, ids) + 0.75 * _probs(b.model, ids)
    torch.testing.assert_close(_probs(weighted.model, ids), expected)


def test_textgen_sampling_carries_each_members_state(textgen_runs, tmp_path):
    """Greedy sampling equals a reference that re-runs every member over the whole text at each
    step (so no state is carried at all) and takes the argmax of the mean distribution."""
    gen = rnnkit.ensemble(textgen_runs, out=tmp_path / "ens")
    members = [rnnkit.load(run).model for run in textgen_runs]
    ids = gen.vocab.encode("a stitch ").tolist()
    for _ in range(15):
        x = torch.tensor([ids])
        ids.append(int(sum(_probs(m, x)[0, -1] for m in members).argmax()))
    assert gen.sample("a stitch ", 15, temperature=0) == gen.vocab.decode(ids)
    assert gen.sample("the ", 20, seed=3, num_samples=2) == gen.sample("the ", 20, seed=3, num_samples=2)


def test_forecast_is_the_weighted_mean_of_the_members_forecasts(forecast_runs, tmp_path):
    f = rnnkit.ensemble(forecast_runs, out=tmp_path / "ens", weights="validation")
    weights = open_run(tmp_path / "ens").weights
    assert min(weights) >= 0 and sum(weights) == pytest.approx(1.0)
    members = [rnnkit.load(run).predict(5).values for run in forecast_runs]  # beyond the horizon too
    np.testing.assert_allclose(f.predict(5).values, sum(w * y for w, y in zip(weights, members)), rtol=1e-5, atol=1e-6)


def _csv_reviews(path):
    rows = [f"{'good great fine' if i % 2 else 'bad awful poor'} film {i},{'pos' if i % 2 else 'neg'}" for i in range(40)]
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    return path


def test_textclass_probabilities_are_the_mean_of_the_members(tmp_path):
    data, config = _csv_reviews(tmp_path / "reviews.csv"), get_task("textclass").Config(batch_size=8)
    runs = [_train(tmp_path / cell, "textclass", data, config, ModelConfig(cell=cell, hidden_size=6, embedding_dim=4,
                                                                           head="mean"), seed=0)
            for cell in ("gru", "lstm")]  # one seed: one validation split, so one vocabulary
    clf = rnnkit.ensemble(runs, out=tmp_path / "ens")
    texts = ["good film", "awful awful", "an unseen word"]
    members = [rnnkit.load(run).predict_proba(texts) for run in runs]
    np.testing.assert_allclose(clf.predict_proba(texts), (members[0] + members[1]) / 2, rtol=1e-5, atol=1e-7)


def test_seqclass_probabilities_are_the_mean_of_the_members(tmp_path):
    g = np.random.default_rng(0)
    data = tmp_path / "seqs.npz"
    np.savez(data, x=g.normal(size=(40, 6, 2)).astype(np.float32), y=g.integers(0, 3, 40))
    config = get_task("seqclass").Config(batch_size=8)
    runs = [_train(tmp_path / f"s{seed}", "seqclass", data, config, ModelConfig(cell="rnn", hidden_size=6, head="last"),
                   seed=seed) for seed in (0, 1)]
    clf = rnnkit.ensemble(runs, out=tmp_path / "ens", weights="validation")
    x = g.normal(size=(5, 6, 2)).astype(np.float32)
    w = open_run(tmp_path / "ens").weights
    members = [rnnkit.load(run).predict_proba(x) for run in runs]
    np.testing.assert_allclose(clf.predict_proba(x), w[0] * members[0] + w[1] * members[1], rtol=1e-5, atol=1e-6)


# -- validation weights --------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["textgen_runs", "forecast_runs"])
def test_validation_weights_are_never_worse_on_validation_than_the_best_member(fixture, tmp_path, request):
    runs = request.getfixturevalue(fixture)
    build_ensemble(runs, tmp_path / "ens", weights="validation")
    best = min(evaluate_run(run)["loss"] for run in runs)
    assert evaluate_run(tmp_path / "ens")["loss"] <= best * (1 + 1e-9)
    recorded = open_run(tmp_path / "ens").meta["ensemble"]["members"]
    assert [m["metrics"]["val_loss"] for m in recorded] == pytest.approx([evaluate_run(run)["loss"] for run in runs])


def _grid(M, step=0.02):
    n = round(1 / step)
    for counts in itertools.product(range(n + 1), repeat=M - 1):
        if sum(counts) <= n:
            yield np.array([*counts, n - sum(counts)]) / n


def test_weight_solvers_match_a_brute_force_grid():
    """Against every weight vector of a 0.02 grid on the simplex (3 members): never worse, and
    where the optimum is inside the simplex, the same point."""
    g = np.random.default_rng(1)
    truth = g.normal(size=400)
    preds = np.stack([truth + g.normal(scale=s, size=400) + b for s, b in ((0.5, 0.3), (0.7, -0.2), (1.0, 0.0))])
    mse = lambda w: float(np.mean((w @ preds - truth) ** 2))  # noqa: E731
    best = min(_grid(3), key=mse)
    w = np.array(simplex_least_squares(preds, truth))
    assert mse(w) <= mse(best) + 1e-12 and np.abs(w - best).max() <= 0.03
    logp = torch.from_numpy(np.log(np.abs(preds[:, :200]) / 4 + 0.05).clip(max=0.0))  # (M, N) log-likelihoods
    nll = lambda w: -float(np.mean(np.log(np.maximum(w @ np.exp(logp.numpy()), 1e-300))))  # noqa: E731
    best = min(_grid(3), key=nll)
    w = np.array(mixture_weights(logp))
    assert nll(w) <= nll(best) + 1e-9 and np.abs(w - best).max() <= 0.03
    assert mixture_weights(torch.tensor([[-1.0, -1.0], [-5.0, -5.0]])) == [1.0, 0.0]  # a member alone is better


# -- refusals -----------------------------------------------------------------------------------------------


def _refused(capsys, *argv) -> str:
    assert main(["ensemble", *map(str, argv)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rnnkit: error: ")
    return err.strip()[len("rnnkit: error: "):]


def test_mismatched_runs_are_one_line_errors(textgen_runs, forecast_runs, tmp_path, capsys):
    other = _train(tmp_path / "pangrams", "textgen", "pangrams", get_task("textgen").Config(seq_len=8, batch_size=4),
                   ModelConfig(hidden_size=8, embedding_dim=6), seed=0, steps=1)
    a, b = textgen_runs
    assert _refused(capsys, a, other, "--out", tmp_path / "e") == (
        f"{other}: its task state 'vocab' differs from {a}'s; an ensemble's members need the same data "
        f"and data options")
    assert _refused(capsys, a, forecast_runs[0], "--out", tmp_path / "e") == (
        f"{forecast_runs[0]}: a forecast run, {a} a textgen run; an ensemble's members are runs of one task")
    assert _refused(capsys, a, "--out", tmp_path / "e") == "an ensemble needs at least two runs, got 1"
    assert _refused(capsys, a, a, "--out", tmp_path / "e") == f"{a}: given twice; an ensemble's members are different runs"
    assert _refused(capsys, a, b, "--out", tmp_path / "e", "--weights", "best").startswith("ensemble: argument --weights: invalid choice")
    assert main(["ensemble", str(a), str(b), "--out", str(tmp_path / "e")]) == 0
    assert "already an ensemble" in _refused(capsys, tmp_path / "e", a, "--out", tmp_path / "e2")
    assert "already holds an artifact" in _refused(capsys, a, b, "--out", tmp_path / "e")
    unfinished = shutil.copytree(b, tmp_path / "unfinished")
    meta = json.loads((unfinished / "artifact.json").read_text())
    (unfinished / "artifact.json").write_text(json.dumps({**meta, "status": "training"}))
    assert "the run is not finished (status 'training'); `rnnkit resume" in _refused(capsys, a, unfinished, "--out",
                                                                                      tmp_path / "e3")


# -- the artifact --------------------------------------------------------------------------------------------


def test_artifact_is_self_contained_pickle_free_and_atomic(textgen_runs, tmp_path, monkeypatch):
    runs = [shutil.copytree(run, tmp_path / run.name) for run in textgen_runs]
    out = tmp_path / "ens"
    build_ensemble(runs, out)
    before = rnnkit.load(out).sample("the ", 12, temperature=0)
    for run in runs:
        shutil.rmtree(run)  # the sources are gone; the ensemble holds copies
    assert rnnkit.load(out).sample("the ", 12, temperature=0) == before
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["artifact.json"] + [f"members/{i}/{name}" for i in (0, 1)
                                         for name in ("artifact.json", "history.json", "model.safetensors")]
    assert json.loads((out / "artifact.json").read_text())["format_version"] == artifacts.FORMAT_VERSION == 2
    calls = []

    def failing_write(path, data):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_write(path, data)

    real_write = artifacts._write_file
    monkeypatch.setattr(artifacts, "_write_file", failing_write)
    with pytest.raises(OSError):
        build_ensemble([out / "members" / "1", out / "members" / "0"], out, overwrite=True)
    monkeypatch.undo()
    assert rnnkit.load(out).sample("the ", 12, temperature=0) == before  # the old ensemble, untouched


def test_cli_verbs_use_an_ensemble_like_any_run(forecast_runs, tmp_path, capsys):
    out = tmp_path / "ens"
    assert main(["ensemble", *map(str, forecast_runs), "--out", str(out), "--weights", "validation"]) == 0
    assert capsys.readouterr().out.startswith(f"saved {out} (2 forecast runs, validation weights ")
    assert main(["evaluate", str(out), "--split", "test", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["loss"] == metrics["mse"] and "naive_mse" in metrics
    assert main(["predict", str(out), "--horizon", "4"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 5
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "ensemble of 2 runs, validation weights" in info and "member 1: 1x gru H=8" in info
    assert main(["info", str(out), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["ensemble"]["members"]) == 2
    assert isinstance(rnnkit.load(out).model, EnsembleModel)


def test_serve_answers_as_the_facade_does(textgen_runs, forecast_runs, tmp_path):
    pytest.importorskip("starlette")
    from rnnkit.serve import make_app

    gen = rnnkit.ensemble(textgen_runs, out=tmp_path / "tg")
    job = make_app(tmp_path / "tg").state.job
    body = {"prime": "the ", "length": 10, "seed": 4}
    assert job.run([job.parse(body)]) == [{"text": gen.sample("the ", 10, seed=4)}]
    f = rnnkit.ensemble(forecast_runs, out=tmp_path / "fc")
    job = make_app(tmp_path / "fc").state.job
    history = f.task_state["history"]["values"]
    answer = job.run([job.parse({"history": history, "horizon": 3})])[0]["forecast"]
    np.testing.assert_allclose(answer, f.predict(3).values, rtol=1e-6)
