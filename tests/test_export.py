"""ONNX export: onnxruntime == rnnkit (1e-4) for every job, two batch sizes and two lengths,
and step-wise use through the explicit state; the preprocessing JSON beside the graph."""

import json

import numpy as np
import pytest
import torch

from rnnkit.runs import open_run
from rnnkit.cli.main import main
from rnnkit.errors import UserError
from rnnkit.export import export_onnx
from rnnkit.models import ModelConfig
from rnnkit.training.config import TrainConfig
from rnnkit.runs import train_task

ort = pytest.importorskip("onnxruntime")

TRAIN = TrainConfig(max_steps=2, log_every=1, seed=0)


def tiny_text(tmp_path):
    p = tmp_path / "text.txt"
    p.write_text("the quick brown fox jumps over the lazy dog. " * 20)
    return p


def tiny_reviews(tmp_path):
    p = tmp_path / "reviews.csv"
    rows = ["text,label"] + [f"{'good great fine' if i % 2 else 'bad awful poor'} film number {i},{'pos' if i % 2 else 'neg'}"
                             for i in range(40)]
    p.write_text("\n".join(rows) + "\n")
    return p


def tiny_sequences(tmp_path):
    p = tmp_path / "seqs.npz"
    g = np.random.default_rng(0)
    np.savez(p, x=g.normal(size=(40, 9, 3)).astype(np.float32), y=g.integers(0, 3, 40),
             lengths=g.integers(2, 10, 40))
    return p


def make_run(tmp_path, task):
    from rnnkit.tasks import get_task

    out = tmp_path / task
    cfg = get_task(task).Config
    if task == "textgen":
        data, tc, mc = tiny_text(tmp_path), cfg(seq_len=8, batch_size=4), ModelConfig(cell="lstm", hidden_size=8, embedding_dim=6, num_layers=2)
    elif task == "textclass":
        data, tc = tiny_reviews(tmp_path), cfg(batch_size=8, ngram_buckets=16, max_length=12)
        mc = ModelConfig(cell="gru", hidden_size=8, embedding_dim=6, bidirectional=True, head="mean")
    elif task == "seqclass":
        data, tc, mc = tiny_sequences(tmp_path), cfg(batch_size=8), ModelConfig(cell="rnn", hidden_size=8, head="last")
    else:
        data, tc = "sines", cfg(lookback=12, horizon=3, batch_size=16, sines_series="40,10,10")
        mc = ModelConfig(cell="lstm", hidden_size=8)
    train_task(task, str(data), out, mc, TRAIN, tc, progress=False)
    return out


def feeds(meta, B, T, seed):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for spec in meta["inputs"]:
        shape = [B if d == "batch" else T if d == "time" else d for d in spec["shape"]]
        if spec["name"] == "inputs" and spec["dtype"] == "int64":
            V = meta["model"]["input_size"]
            out["inputs"] = torch.randint(0, V, shape, generator=g)
        elif spec["name"] == "inputs":
            out["inputs"] = torch.randn(shape, generator=g)
        elif spec["name"] == "lengths":
            out["lengths"] = torch.randint(1, T + 1, (B,), generator=g)
            out["lengths"][0] = T
        else:  # a state: state_batch = B x channels for channel-independent forecasters
            shape = [B if d == "state_batch" else d for d in spec["shape"]]
            out[spec["name"]] = 0.5 * torch.randn(shape, generator=g)
    return out


def reference(run, x):
    model = open_run(run).build_model()
    state = (x["h0"], x["c0"]) if "c0" in x else x.get("h0")
    with torch.no_grad():
        y, st = model(x["inputs"], state, x.get("lengths"))
    parts = () if st is None else (st if isinstance(st, tuple) else (st,))
    return [y, *parts]


@pytest.mark.parametrize("task", ["textgen", "forecast", "textclass", "seqclass"])
def test_onnxruntime_matches_rnnkit(tmp_path, task):
    run = make_run(tmp_path, task)
    onnx_path, side = export_onnx(run)
    assert onnx_path == run / "model.onnx" and side == run / "model.json"
    meta = json.loads(side.read_text())
    assert meta["task"] == task and meta["format"] == "rnnkit-onnx"
    assert meta["preprocessing"] == open_run(run).task_state
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [s["name"] for s in meta["inputs"]]
    for B, T, seed in ((1, 12, 0), (5, 7, 1)):
        x = feeds(meta, B, T, seed)
        got = session.run(None, {k: v.numpy() for k, v in x.items()})
        want = reference(run, x)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-4)


def test_textgen_graph_runs_step_by_step(tmp_path):
    """Feeding one token at a time with hn/cn carried == one pass over the whole sequence."""
    run = make_run(tmp_path, "textgen")
    onnx_path, _ = export_onnx(run, tmp_path / "lm.onnx")
    s = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(0).integers(0, 10, (2, 6)).astype(np.int64)
    h = c = np.zeros((2, 2, 8), np.float32)
    whole, hw, cw = s.run(None, {"inputs": ids, "h0": h, "c0": c})
    steps = []
    for t in range(6):
        y, h, c = s.run(None, {"inputs": ids[:, t : t + 1], "h0": h, "c0": c})
        steps.append(y)
    np.testing.assert_allclose(np.concatenate(steps, 1), whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h, hw, rtol=1e-5, atol=1e-5)


def test_tag_graph_gives_the_emissions_and_the_json_the_crf(tmp_path):
    """onnxruntime's emissions == the network's for sentences of several lengths and word lengths;
    Viterbi over them with the JSON's CRF scores == Tagger.predict."""
    import rnnkit
    from rnnkit.crf import CRF
    from rnnkit.tasks import get_task
    from rnnkit.tasks.tag_data import Encoder
    from rnnkit.data.tagging import Sentence

    conll = tmp_path / "ner.conll"
    people, places = ["John", "Mary", "Anna", "Bartholomew"], ["Paris", "Rome", "Ulaanbaatar"]
    conll.write_text("".join(f"{people[i % 4]} NN B-PER\nvisited VB O\n{places[i % 3]} NN B-LOC\n. . O\n\n"
                             for i in range(24)))
    run = tmp_path / "tag"
    train_task("tag", str(conll), run, ModelConfig(hidden_size=8, bidirectional=True, num_layers=2), TRAIN,
               get_task("tag").Config(word_dim=8, char_dim=4, char_hidden=4, min_word_count=1, batch_size=4),
               progress=False)
    onnx_path, side = export_onnx(run)
    meta = json.loads(side.read_text())
    assert [i["name"] for i in meta["inputs"]] == ["inputs", "lengths"] and meta["state"] is None
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    tagger, model = rnnkit.load(run), open_run(run).build_model().eval()
    sentences = [["Anna", "visited", "Ulaanbaatar", "."], ["Bartholomew", "left"], ["Mary", "visited", "Rome", "today", "."]]
    x = Encoder(meta["preprocessing"]).source([Sentence(s, ["O"] * len(s)) for s in sentences], 8, False, tagged=False)
    batch = next(iter(x.epoch(0, 0)))
    lengths = (batch.inputs[..., 0] != 0).sum(1)
    assert batch.inputs.shape[1] == 5 and batch.inputs.shape[2] > 5  # padded words and characters
    (emissions,) = session.run(None, {"inputs": batch.inputs.numpy(), "lengths": lengths.numpy()})
    with torch.no_grad():
        want = model(batch.inputs, None, lengths)[0]
    np.testing.assert_allclose(emissions, want.numpy(), rtol=1e-4, atol=1e-4)
    decoder = meta["decoder"]
    crf = CRF(len(decoder["tags"]))
    with torch.no_grad():
        for name in ("transitions", "start", "end"):
            getattr(crf, name).copy_(torch.tensor(decoder[name]))
    paths = crf.viterbi(torch.from_numpy(emissions), lengths)[0]
    got = {tuple(decoder["tags"][i] for i in row[:n].tolist()) for row, n in zip(paths, lengths.tolist())}
    assert got == {tuple(tags) for tags in tagger.predict(sentences)}


def test_cli_export_and_refusals(tmp_path, capsys, monkeypatch):
    run = make_run(tmp_path, "textgen")
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").is_file() and (tmp_path / "m.json").is_file()
    assert main(["export", str(run), "--out", str(tmp_path / "m.bin")]) == 2
    assert "expected a file name ending in .onnx" in capsys.readouterr().err
    from rnnkit.tasks import get_task

    monkeypatch.setattr(type(get_task("textgen")), "exportable", False)  # a task whose graph cannot be traced
    assert main(["export", str(run)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"{run}: a textgen run cannot be exported to ONNX yet")
    with pytest.raises(UserError, match="layer_norm=True"):
        from rnnkit.export import pin_fused
        from rnnkit.models import SequenceModel

        pin_fused(SequenceModel(ModelConfig(layer_norm=True, hidden_size=4)).eval(), "run")


def test_ensemble_graph_averages_the_members_with_their_own_states(tmp_path, capsys):
    """An ensemble exports its averaging graph: member m's state is h0_m/c0_m; onnxruntime == rnnkit,
    and a forecast ensemble whose members' outputs differ in layout is refused in one line."""
    from dataclasses import replace

    from rnnkit.ensembles import build_ensemble
    from rnnkit.tasks import get_task

    text, config = tiny_text(tmp_path), get_task("textgen").Config(seq_len=8, batch_size=4)
    runs = [tmp_path / "lstm", tmp_path / "gru"]
    for seed, (run, cell) in enumerate(zip(runs, ("lstm", "gru"))):
        train_task("textgen", str(text), run, ModelConfig(cell=cell, hidden_size=8, embedding_dim=6),
                   replace(TRAIN, seed=seed), config, progress=False)
    build_ensemble(runs, tmp_path / "ens", weights="equal")
    onnx_path, side = export_onnx(tmp_path / "ens")
    meta = json.loads(side.read_text())
    assert [i["name"] for i in meta["inputs"]] == ["inputs", "h0_0", "c0_0", "h0_1"]
    assert meta["state"]["weights"] == [0.5, 0.5] and len(meta["state"]["members"]) == 2
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = feeds(meta, 3, 6, seed=0)
    got = session.run(None, {k: v.numpy() for k, v in x.items()})
    model = open_run(tmp_path / "ens").build_model()
    with torch.no_grad():
        y, states = model(x["inputs"], [(x["h0_0"], x["c0_0"]), x["h0_1"]])
    assert [o.name for o in session.get_outputs()] == ["outputs", "hn_0", "cn_0", "hn_1"]
    for g, w in zip(got, [y, *states[0], states[1]]):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-4)
    forecast = get_task("forecast").Config(lookback=12, horizon=3, batch_size=16, sines_series="40,10,10")
    for run, data in (("rnn", forecast), ("seg", replace(forecast, architecture="segrnn", segment_length=4))):
        train_task("forecast", "sines", tmp_path / run, ModelConfig(cell="gru", hidden_size=8), TRAIN, data,
                   progress=False)
    build_ensemble([tmp_path / "rnn", tmp_path / "seg"], tmp_path / "fens")
    assert main(["export", str(tmp_path / "fens")]) == 2
    assert "the members' outputs differ in shape" in capsys.readouterr().err
