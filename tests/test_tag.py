"""Sequence labelling (the tag task): data sources and splits, the network (padding does not leak),
metrics equal to entity_scores of the decoded tags, the CLI (train, evaluate, predict), the
facade, CoNLL-U (POS), bad input, and a tiny model that learns 5 sentences exactly."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

import rnnkit
from conftest import cli_error, run_cli
from rnnkit import metrics
from rnnkit.data.tagging import split_words
from rnnkit.errors import UserError
from rnnkit.models import ModelConfig
from rnnkit.tasks import tag_data
from rnnkit.tasks.tag import TASK, TagConfig, Tagger, tagging_pass
from rnnkit.tasks.tag_model import decode
from rnnkit.training.config import TrainConfig

TINY = ["--hidden-size", "8", "--word-dim", "8", "--char-dim", "4", "--char-hidden", "4", "--batch-size", "4",
        "--min-word-count", "1", "--lr", "0.02", "--quiet"]
NAMES, SURNAMES, CITIES, ORGS = ["John", "Mary", "Peter", "Anna"], ["Smith", "Jones"], ["Paris", "Rome"], ["Google", "Reuters"]


def _ner_sentences(n: int, seed: int = 0) -> list[list[tuple[str, str]]]:
    """n toy sentences of (word, BIO tag): a person, a verb, then a city or an organisation."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s = [(rng.choice(NAMES), "B-PER")] + ([(rng.choice(SURNAMES), "I-PER")] if rng.random() < 0.5 else [])
        s.append((rng.choice(["visited", "left", "likes"]), "O"))
        s += [(rng.choice(CITIES), "B-LOC")] if rng.random() < 0.5 else [("the", "O"), (rng.choice(ORGS), "B-ORG")]
        out.append(s + [(".", "O")])
    return out


def _write_conll(path, sentences, tag=lambda t: t):
    path.write_text("".join("".join(f"{w} NN {tag(t)}\n" for w, t in s) + "\n" for s in sentences))
    return path


def _write_conllu(path, n: int):
    rows = [("The", "DET"), ("dog", "NOUN"), ("runs", "VERB"), (".", "PUNCT")], [("A", "DET"), ("cat", "NOUN"), ("sleeps", "VERB")]
    text = ""
    for k in range(n):
        text += f"# sent_id = {k}\n" + "".join(f"{i}\t{w}\t_\t{t}\t_\t_\t0\t_\t_\t_\n" for i, (w, t) in enumerate(rows[k % 2], 1)) + "\n"
    path.write_text(text)
    return path


def _tiny_tagger(decoder: str = "crf", **train) -> Tagger:
    config = TagConfig(word_dim=8, char_dim=4, char_hidden=4, min_word_count=1, batch_size=4, decoder=decoder,
                       val_fraction=0.2)
    return Tagger(config, ModelConfig(hidden_size=8, bidirectional=True),
                  TrainConfig(log_every=0, **{"max_steps": 10, "lr": 0.02, **train}))


# ------------------------------------------------------------------------------ data


def test_split_words_keeps_punctuation_clitics_and_abbreviations():
    assert split_words("Hi, I'm in the U.S. now.") == ["Hi", ",", "I", "'m", "in", "the", "U.S.", "now", "."]


def test_a_directory_names_its_parts_and_a_file_is_split_by_seed(tmp_path):
    folder = tmp_path / "ner"
    folder.mkdir()
    for name in ("my-train.conll", "my.valid.conll", "README.md"):
        _write_conll(folder / name, _ner_sentences(5))
    assert set(tag_data.part_files(str(folder))) == {"train", "dev"}
    _write_conll(folder / "dev.txt", _ner_sentences(2))
    with pytest.raises(UserError, match=r"2 files could be the dev part \(dev.txt, my.valid.conll\); expected one"):
        tag_data.part_files(str(folder))
    cut = tag_data.split_file(20, 0.2, 0.1, seed=3)
    assert [len(cut[p]) for p in ("train", "dev", "test")] == [14, 4, 2]
    assert sorted(i for idx in cut.values() for i in idx.tolist()) == list(range(20))
    assert all((tag_data.split_file(20, 0.2, 0.1, seed=3)[p] == cut[p]).all() for p in cut)


def test_iob1_files_train_in_bioes_and_the_tag_set_has_every_prefix(tmp_path):
    iob1 = {"B-PER": "I-PER", "I-PER": "I-PER", "B-LOC": "I-LOC", "B-ORG": "I-ORG", "O": "O"}
    path = _write_conll(tmp_path / "d.conll", _ner_sentences(10), tag=iob1.get)
    prep = TASK.prepare(TagConfig(scheme="bioes", val_fraction=0.2, test_fraction=0.0), str(path))
    state = prep.task_state
    assert state["scheme"] == "BIOES" and state["tags"][:5] == ["O", "B-LOC", "I-LOC", "E-LOC", "S-LOC"]
    assert len(state["tags"]) == 1 + 4 * 3 and state["words"][:2] == ["<pad>", "<oov>"]
    batch = next(prep.train.epoch(0, 0))
    B, T, width = batch.inputs.shape
    assert batch.targets.shape == (B, T) and width == 1 + max(len(w) for w in NAMES + SURNAMES + CITIES + ORGS + ["visited"])


@pytest.mark.parametrize("name", ["conll2003", "wnut17", "ud-en-ewt"])
def test_presets_resolve_and_name_their_local_dataset(name, data_dir):
    from rnnkit.cli.flags import resolve_configs

    path = Path(__file__).resolve().parent.parent / "configs" / f"{name}.json"
    configs, file = resolve_configs({"model": ModelConfig, "train": TrainConfig, "data": TagConfig}, path, {})
    assert file["task"] == "tag" and file["dataset"] == name and configs["train"].time_budget <= 3600
    files = tag_data.part_files(name)
    assert set(files) == {"train", "dev", "test"} and all(str(p).startswith(str(data_dir)) for p in files.values())


# ------------------------------------------------------------------------------ network and metrics


def test_padding_does_not_leak_into_any_sentences_emissions(tmp_path):
    path = _write_conll(tmp_path / "d.conll", _ner_sentences(12))
    prep = TASK.prepare(TagConfig(word_dim=6, char_dim=3, char_hidden=3, min_word_count=1), str(path))
    mc = TASK.model_config(prep.task_state, TagConfig(), ModelConfig(hidden_size=5, num_layers=2))
    net = TASK.new_model(mc, prep.task_state, TagConfig(), seed=1).eval()
    enc = tag_data.Encoder(prep.task_state)
    rows = [enc.encode_words(s) for s in (["John", "Smith", "visited", "Paris", "."], ["Anna", "left"], ["x"])]
    batch = tag_data.batch_source(rows, [[0] * len(r) for r in rows], 3, shuffle=False).make_batch([0, 1, 2])
    assert batch.lengths.tolist() == [5, 2, 1] and batch.inputs.shape == (3, 5, 8)
    together, _ = net(batch.inputs, None, batch.lengths)
    for b, row in enumerate(rows):
        alone, _ = net(torch.from_numpy(row)[None], None, None)
        torch.testing.assert_close(together[b, : len(row)], alone[0], rtol=1e-5, atol=1e-6)
        assert not together[b, len(row):].any()


@pytest.mark.parametrize("decoder", ["crf", "softmax"])
def test_evaluate_is_entity_scores_of_the_decoded_tags(decoder):
    data = _ner_sentences(20)
    tagger = _tiny_tagger(decoder).fit([[w for w, _ in s] for s in data], [[t for _, t in s] for s in data])
    val = tagger.prepared.val
    reported = TASK.evaluate(tagger.model, val.epoch(0, 0))
    true, pred = [], []
    for batch in val.epoch(0, 0):
        emissions, _ = tagger.model(batch.inputs, None, batch.lengths)
        lengths = tag_data.batch_lengths(batch)
        pred += [[tagger.tags[i] for i in row] for row in decode(tagger.model, emissions, lengths)]
        true += [[tagger.tags[i] for i in row[:n]] for row, n in zip(batch.targets.tolist(), lengths.tolist())]
    expected = metrics.entity_scores(true, pred)
    assert set(reported) == {"loss", "f1", "precision", "recall", "accuracy"}
    assert {k: reported[k] for k in ("f1", "precision", "recall", "accuracy")} == \
        {k: expected[k] for k in ("f1", "precision", "recall", "accuracy")}
    assert tagging_pass(tagger.model, val.epoch(0, 0))[1] == [[tagger.tags.index(t) for t in row] for row in pred]


def test_a_tiny_model_learns_five_sentences_exactly():
    data = _ner_sentences(5, seed=4)
    words, tags = [[w for w, _ in s] for s in data], [[t for _, t in s] for s in data]
    tagger = _tiny_tagger(max_steps=100, epochs=100, lr=0.05)
    tagger.fit(words, tags, val_sentences=words, val_tags=tags)
    assert tagger.predict(words) == tags
    assert tagger.evaluate(words, tags)["f1"] == 1.0


# ------------------------------------------------------------------------------ command line


def test_cli_train_evaluate_predict_and_load_agree(tmp_path, capsys):
    data = _write_conll(tmp_path / "ner.conll", _ner_sentences(40))
    run = tmp_path / "run"
    rc, out, err = run_cli(capsys, "train", "tag", "--data", data, "--out", run, "--max-steps", "20", *TINY)
    assert rc == 0, err
    rc, out, err = run_cli(capsys, "evaluate", run, "--split", "test", "--json")
    report = json.loads(out)
    assert rc == 0 and report["examples"] == 4 and {"loss", "f1", "accuracy", "f1_per", "support_loc"} <= set(report)
    assert 0 <= report["f1"] <= 1 and 0 <= report["accuracy"] <= 1
    assert json.loads(run_cli(capsys, "evaluate", run, "--data", data, "--json")[1])["examples"] == 40
    text = "Mary Jones likes Rome ."
    rc, out, err = run_cli(capsys, "predict", run, "--text", text)
    lines = out.split("\n\n")[0].splitlines()
    assert rc == 0 and [line.split("\t")[0] for line in lines] == text.split()
    assert [line.split("\t")[1] for line in lines] == rnnkit.load(run).predict(text)
    rc, out, err = run_cli(capsys, "predict", run, "--input", data, "--output", tmp_path / "tagged.conll")
    tagged = (tmp_path / "tagged.conll").read_text().splitlines()
    assert rc == 0 and out == "" and tagged[0].split()[:3] == data.read_text().splitlines()[0].split()
    assert len(tagged[0].split()) == 4


def test_conllu_pos_trains_and_reports_accuracy_without_f1(tmp_path, capsys):
    data = _write_conllu(tmp_path / "pos.conllu", 20)
    run = tmp_path / "run"
    rc, out, err = run_cli(capsys, "train", "tag", "--data", data, "--out", run, "--max-steps", "10",
                           "--decoder", "softmax", *TINY)
    assert rc == 0, err
    report = json.loads(run_cli(capsys, "evaluate", run, "--json")[1])
    assert "f1" not in report and 0 <= report["accuracy"] <= 1 and report["tokens"] > 0
    tagger = rnnkit.load(run)
    assert tagger.scheme is None and tagger.tags == ["DET", "NOUN", "PUNCT", "VERB"]
    assert len(tagger.predict([["The", "cat", "runs"]])[0]) == 3


def test_bad_files_and_missing_datasets_are_one_line_errors(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.conllu"
    bad.write_text("1\tThe\t_\tDET\n")
    assert cli_error(capsys, "train", "tag", "--data", bad, "--out", tmp_path / "r", *TINY) == \
        f"{bad} line 1: expected 10 tab-separated columns, found 4"
    ragged = tmp_path / "ragged.conll"
    ragged.write_text("John B-PER\nleft NN O\n")
    assert cli_error(capsys, "train", "tag", "--data", ragged, "--out", tmp_path / "r", *TINY) == \
        f"{ragged} line 2: expected 2 columns like line 1, found 3"
    monkeypatch.setenv("RNNKIT_DATA", str(tmp_path))
    monkeypatch.setenv("RNNKIT_CACHE", str(tmp_path / "cache"))
    message = cli_error(capsys, "train", "tag", "--data", "conll2003", "--out", tmp_path / "r", *TINY)
    assert message.startswith("dataset 'conll2003': ner/conll2003/train.txt is not in") and "no download source" in message


def test_pretrained_word_vectors_start_the_word_embedding(tmp_path):
    path = _write_conll(tmp_path / "d.conll", _ner_sentences(12))
    (tmp_path / "v.txt").write_text("paris 1 2 3 4 5 6\nnowhere 9 9 9 9 9 9\n")
    config = TagConfig(word_dim=6, char_hidden=0, min_word_count=1, word_vectors=str(tmp_path / "v.txt"))
    prep = TASK.prepare(config, str(path))
    net = TASK.new_model(TASK.model_config(prep.task_state, config, ModelConfig(hidden_size=4)), prep.task_state, config, 0)
    row = prep.task_state["words"].index("paris")
    assert net.word_embedding.weight[row].tolist() == [1, 2, 3, 4, 5, 6] and net.chars is None
