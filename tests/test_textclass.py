"""Text classification: tokenizer/vocabulary, readers and their errors, packing == one-by-one, fit."""

from __future__ import annotations

import csv
import gzip
import random

import numpy as np
import pytest
import torch

from rnnkit.data.labelled import read_aclimdb, read_labelled
from rnnkit.data.tokenize import OOV, PAD, Vocabulary, bigram_ids, read_word_vectors, tokenize, truncate
from rnnkit.errors import UserError
from rnnkit.models import ModelConfig, SequenceModel
from rnnkit.tasks import textclass as tc
from rnnkit.training.config import TrainConfig

# ------------------------------------------------------------------------------ tokenizer


def test_tokenize_lowercases_and_drops_html_breaks():
    assert tokenize("Great<br />film,<BR>isn't it?! 10/10") == ["great", "film", "isn't", "it", "?", "!", "10", "10"]
    assert tokenize("<br /><br />") == []


def test_vocabulary_frequency_order_ties_max_size_min_freq():
    docs = [tokenize("b a a c"), tokenize("a b d"), tokenize("e")]  # a:3 b:2 c,d,e:1
    v = Vocabulary.build(docs, max_size=5, min_freq=1)
    assert v.words == ["<pad>", "<oov>", "a", "b", "c"]  # ties (c, d, e) alphabetical, cut at 5
    assert v.encode(["a", "d", "b", "zzz"]) == [2, OOV, 3, OOV]
    assert Vocabulary.build(docs, max_size=100, min_freq=2).words == ["<pad>", "<oov>", "a", "b"]
    assert Vocabulary.from_dict(v.to_dict()).words == v.words and PAD == 0


def test_truncate_head_tail_both():
    seq = list(range(10))
    assert truncate(seq, 5, "head") == [0, 1, 2, 3, 4]
    assert truncate(seq, 5, "tail") == [5, 6, 7, 8, 9]
    assert truncate(seq, 5, "both") == [0, 1, 2, 8, 9]
    assert truncate(np.arange(10), 4, "both").tolist() == [0, 1, 8, 9]
    assert truncate(seq, 20, "head") == seq
    with pytest.raises(UserError, match="truncate must be one of head, tail, both, got 'middle'"):
        truncate(seq, 5, "middle")


def test_bigram_ids_are_deterministic_pair_hashes():
    a = bigram_ids([5, 6, 5, 6], vocab_size=10, buckets=1000)
    assert a[:, 0].tolist() == [5, 6, 5, 6]
    assert a[1, 1] == a[3, 1]  # the pair (5, 6) twice
    assert a[0, 1] != a[2, 1]  # (start, 5) vs (6, 5)
    assert ((a[:, 1] >= 10) & (a[:, 1] < 1010)).all()
    assert (bigram_ids([5, 6, 5, 6], 10, 1000) == a).all()


def test_word_vectors_glove_and_word2vec_text(tmp_path):
    vocab = Vocabulary(["<pad>", "<oov>", "good", "bad"])
    glove = tmp_path / "glove.txt"
    glove.write_text("good 1 2 3\nunused 9 9 9\nbad -1 0 0.5\n")
    vec, found = read_word_vectors(glove, vocab, 3)
    assert found == 2
    assert vec.tolist() == [[0, 0, 0], [0, 0, 0], [1, 2, 3], [-1, 0, 0.5]]
    w2v = tmp_path / "w2v.txt"
    w2v.write_text("1 3\ngood 1 2 3\n")
    assert read_word_vectors(w2v, vocab, 3)[1] == 1
    with pytest.raises(UserError, match=r"glove.txt line 1: expected a word and 4 numbers, found 3 numbers"):
        read_word_vectors(glove, vocab, 4)


# ------------------------------------------------------------------------------ readers


def test_read_csv_tsv_jsonl_gz(tmp_path):
    (tmp_path / "a.csv").write_text('review,sentiment\n"Good, really",pos\nbad,neg\n')
    assert read_labelled(tmp_path / "a.csv", "review", "sentiment") == (["Good, really", "bad"], ["pos", "neg"])
    (tmp_path / "a.tsv").write_text("text\tlabel\nfine\t2\n")
    assert read_labelled(tmp_path / "a.tsv") == (["fine"], ["2"])
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        f.write('{"text": "ok", "label": 1}\n\n{"text": "meh", "label": "x"}\n')
    assert read_labelled(tmp_path / "a.jsonl.gz") == (["ok", "meh"], ["1", "x"])


def test_read_aclimdb_layout(tmp_path):
    for split, label, name, text in [("train", "pos", "10_9.txt", "great"), ("train", "pos", "2_8.txt", "good"),
                                     ("train", "neg", "0_1.txt", "awful")]:
        (tmp_path / split / label).mkdir(parents=True, exist_ok=True)
        (tmp_path / split / label / name).write_text(text)
    assert read_aclimdb(tmp_path, "train") == (["awful", "good", "great"], ["neg", "pos", "pos"])
    with pytest.raises(UserError, match=r"test/neg: folder not found; expected the aclImdb layout"):
        read_aclimdb(tmp_path, "test")


@pytest.mark.parametrize("name, content, message", [
    ("m.csv", b"text,stars\nhi,1\n", "m.csv line 1: no column 'label'; the header has 'text', 'stars'"),
    ("e.csv", b"", "e.csv: the file is empty; expected a header row with columns text,label"),
    ("e.jsonl", b"\n\n", "e.jsonl: the file is empty; expected columns text,label"),
    ("u.csv", b"text,label\nok,1\ncaf\xe9,0\n", "u.csv line 3: byte 0xe9 is not valid UTF-8; expected UTF-8 text"),
    ("c.csv", b"text,label\nok,1\na,b,c\n", "c.csv line 3: expected 2 columns (text,label), found 3"),
    ("h.csv", b"text,label\n", "h.csv: no rows after the header; expected labelled texts"),
    ("j.jsonl", b'{"text": "a", "label": 1}\n{"text": \n', "j.jsonl line 2: not valid JSON (Expecting value); expected one object per line"),
    ("k.jsonl", b'{"text": "a"}\n', "k.jsonl line 1: no key 'label'; the object has 'text'"),
    ("x.txt", b"hello", "x.txt: unknown file type '.txt'; expected .csv, .tsv or .jsonl (optionally .gz)"),
])
def test_bad_files_give_one_line_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        read_labelled(path)
    assert str(err.value) == f"{path.parent}/{message}"
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------ model


@pytest.mark.parametrize("head", ["mean", "max", "last", "concat"])
@pytest.mark.parametrize("use_fused", ["auto", "false"])
@pytest.mark.parametrize("bigrams", [0, 50])
def test_packed_batch_equals_each_text_alone(head, use_fused, bigrams):
    texts = ["a good film", "bad", "a really really good and fun film with a bad end", "fun fun"]
    state = tc.make_task_state(tc.Config(max_length=50, ngram_buckets=bigrams), [tokenize(t) for t in texts], ["x", "y"])
    enc = tc.Encoder(state)
    torch.manual_seed(0)
    cfg = ModelConfig(encoder="embedding", input_size=enc.input_size, embedding_dim=8, cell="gru", hidden_size=6,
                      num_layers=2, bidirectional=True, head=head, output_size=3, use_fused=use_fused)
    model = SequenceModel(cfg).eval()
    items = enc.encode(texts)
    batch = next(tc.batch_source(items, [0] * 4, batch_size=4, shuffle=False).epoch(0, 0))
    order = tc.batch_source(items, None, 4, False).batch_indices(0, 0)[0].tolist()
    assert batch.lengths.tolist() == sorted(len(i) for i in items)
    same = next(tc.batch_source([items[0], items[0]], [0, 0], 2, False).epoch(0, 0))
    assert same.lengths is None and same.inputs.shape[:2] == (2, len(items[0]))  # no padding: dense batch
    with torch.no_grad():
        packed, _ = model(batch.inputs, lengths=batch.lengths)
        for row, i in enumerate(order):
            alone, _ = model(torch.as_tensor(items[i]).unsqueeze(0))
            torch.testing.assert_close(packed[row], alone[0], rtol=1e-5, atol=1e-6)


def test_bucketed_batches_cover_every_item_once_and_repeat_per_seed():
    src = tc.batch_source([np.zeros(n, dtype=np.int64) for n in range(1, 101)], list(range(100)), 8, shuffle=True)
    batches = src.batch_indices(epoch=2, seed=5)
    assert sorted(i for b in batches for i in b.tolist()) == list(range(100))
    assert [b.tolist() for b in batches] == [b.tolist() for b in src.batch_indices(2, 5)]
    assert [b.tolist() for b in batches] != [b.tolist() for b in src.batch_indices(3, 5)]
    # one pool (100 < 50 * 8): each batch is a run of consecutive lengths (item i has length i + 1)
    assert max(int(b.max() - b.min()) for b in batches) == 7 and len(src) == 13
    src.pool = 1  # pools of one batch: no bucketing, only shuffling
    assert max(int(b.max() - b.min()) for b in src.batch_indices(2, 5)) > 7


# ------------------------------------------------------------------------------ end to end

WORDS = {"sports": "match goal team coach score", "food": "recipe tasty bake flour sugar", "tech": "cpu code chip laptop bug"}
FILLER = "the a of and it is was this that very".split()


def _generated(n, seed):
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        label = rng.choice(sorted(WORDS))
        words = [rng.choice(WORDS[label].split()) for _ in range(rng.randint(1, 3))]
        words += [rng.choice(FILLER) for _ in range(rng.randint(2, 12))]
        rng.shuffle(words)
        texts.append(" ".join(words).capitalize() + ".<br />")
        labels.append(label)
    return texts, labels


def test_multiclass_fit_predict_evaluate_and_artifact_round_trip(tmp_path, capsys):
    import json

    from rnnkit.runs import load
    from rnnkit.cli.main import main

    texts, labels = _generated(300, 0)
    test_texts, test_labels = _generated(90, 1)
    clf = tc.TextClassifier(tc.Config(vocab_size=100, max_length=20, batch_size=16, ngram_buckets=64),
                            ModelConfig(embedding_dim=16, cell="gru", hidden_size=16, bidirectional=True, head="max"),
                            TrainConfig(epochs=8, lr=1e-2, log_every=1000))
    clf.fit(texts, labels, out=str(tmp_path / "run"))
    assert clf.labels == ["food", "sports", "tech"]
    report = clf.evaluate(test_texts, test_labels)
    assert report["accuracy"] >= 0.95
    assert np.array(report["confusion"]).sum() == 90
    assert set(report["per_class"]) == {"food", "sports", "tech"}
    probs = clf.predict_proba(["A tasty recipe", "the coach and the team"])
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
    assert clf.predict(["A tasty recipe", "the coach and the team", "cpu bug"]) == ["food", "sports", "tech"]
    assert clf.predict_proba([]).shape == (0, 3)
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0
    loaded = load(tmp_path / "run")
    assert isinstance(loaded, tc.TextClassifier) and loaded.labels == clf.labels
    np.testing.assert_allclose(loaded.predict_proba(test_texts), clf.predict_proba(test_texts), rtol=1e-6)
    (tmp_path / "in.txt").write_text("cpu bug\n\nA tasty recipe\n")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run"), "the coach", "--file", str(tmp_path / "in.txt"), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["label"] for d in lines] == ["sports", "tech", "food"] and lines[1]["text"] == "cpu bug"
    assert sum(lines[0]["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    assert main(["predict", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == "rnnkit: error: predict: no texts; pass texts as arguments or --file F (one text per line)"
    with open(tmp_path / "t.csv", "w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *zip(test_texts, test_labels)])
    assert main(["evaluate", str(tmp_path / "run"), "--data", str(tmp_path / "t.csv"), "--show-examples", "2"]) == 0
    out = capsys.readouterr().out
    assert sum(line.startswith(("ok ", "WRONG ")) for line in out.splitlines()) == 2
    assert "precision_food" in out and (tmp_path / "run" / "confusion_data.png").exists()
    assert main(["evaluate", str(tmp_path / "run"), "--data", str(tmp_path / "t.csv"), "--show-examples", "1", "--json"]) == 0
    captured = capsys.readouterr()
    metrics = json.loads(captured.out)  # the examples go to stderr with --json
    assert set(metrics) == EVALUATE_KEYS | {f"{k}_{c}" for k in ("precision", "recall", "f1", "support") for c in clf.labels}
    assert sum(metrics[f"support_{c}"] for c in clf.labels) == metrics["examples"] == 90
    assert metrics["accuracy"] == pytest.approx(report["accuracy"]) and metrics["confusion"] == report["confusion"]
    assert captured.err.startswith(("ok ", "WRONG "))


EVALUATE_KEYS = {"loss", "accuracy", "macro_f1", "examples", "confusion", "confusion_png"}  # as seqclass's


def test_unseen_label_and_single_label_are_user_errors():
    with pytest.raises(UserError, match="found only one label \\('a'\\); a classifier needs at least two"):
        tc.prepare_texts(tc.Config(val_fraction=0), ["x", "y"], ["a", "a"])
    with pytest.raises(UserError, match="test data row 2: label 'c' was not seen in training; expected one of a, b"):
        tc.prepare_texts(tc.Config(val_fraction=0), ["x", "y"], ["a", "b"], test=(["x", "y"], ["a", "c"]))


def test_word_vectors_initialise_the_embedding(tmp_path):
    glove = tmp_path / "g.txt"
    glove.write_text("good 1 2 3 4\n")
    config = tc.Config(word_vectors=str(glove))
    state = tc.make_task_state(config, [["good", "bad"]], ["p", "n"])
    model = SequenceModel(tc.TASK.model_config(state, config, ModelConfig(embedding_dim=4, hidden_size=3)))
    assert tc.TASK.init_model(model, state, config) == 1
    row = state["vocab"]["words"].index("good")
    assert model.encoder.weight[row].tolist() == [1, 2, 3, 4]


def test_imdb_named_dataset(data_dir):
    from conftest import need_file

    need_file(data_dir, "imdb/imdb_test.csv.gz")
    splits = tc.load_splits(tc.Config(), "imdb")
    for split in ("train", "test"):
        texts, labels = splits[split]
        assert len(texts) == 25000 and labels.count("pos") == 12500 and labels.count("neg") == 12500


def test_new_model_starts_from_word_vectors_and_loading_does_not_read_them(tmp_path):
    (tmp_path / "g.txt").write_text("good 1 2 3 4\n")
    (tmp_path / "d.csv").write_text("text,label\ngood film,pos\nbad film,neg\nso good,pos\n")
    config = tc.Config(word_vectors=str(tmp_path / "g.txt"), val_fraction=0)
    prep = tc.TASK.prepare(config, str(tmp_path / "d.csv"), 0)
    mc = tc.TASK.model_config(prep.task_state, config, ModelConfig(embedding_dim=4, hidden_size=3))
    row = prep.task_state["vocab"]["words"].index("good")
    assert tc.TASK.new_model(mc, prep.task_state, config, seed=0).encoder.weight[row].tolist() == [1, 2, 3, 4]
    (tmp_path / "g.txt").unlink()  # an artifact is rebuilt by build_model alone: the file is not needed
    assert tc.TASK.build_model(mc, prep.task_state).encoder.weight[row].tolist() != [1, 2, 3, 4]


def test_python_fit_and_cli_train_give_the_same_model_for_a_seed(tmp_path):
    from conftest import assert_same_weights

    from rnnkit.training.config import TrainConfig
    from rnnkit.runs import train_task

    (tmp_path / "g.txt").write_text("good 1 2 3 4\n")
    rows = ["good film,pos", "bad film,neg", "so good,pos", "awful,neg"] * 6
    (tmp_path / "d.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    config = tc.Config(word_vectors=str(tmp_path / "g.txt"), val_fraction=0.25, batch_size=4)
    model, train = ModelConfig(embedding_dim=4, hidden_size=3), TrainConfig(epochs=1, lr=0.01, seed=5, log_every=0)
    torch.manual_seed(123)  # the global RNG's state must not matter
    tc.TextClassifier(config, model, train).fit(data=str(tmp_path / "d.csv"), out=tmp_path / "py")
    torch.manual_seed(456)
    train_task("textclass", str(tmp_path / "d.csv"), tmp_path / "cli", model, train, config, progress=False)
    assert_same_weights(tmp_path / "py", tmp_path / "cli")
