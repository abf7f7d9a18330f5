"""Sequence classification: readers, normalisation, metrics, image path, a tiny end-to-end fit."""

import gzip
import struct

import numpy as np
import pytest
import torch

from rnnkit.data import sequences as sq
from rnnkit.errors import UserError
from rnnkit.models import ModelConfig, SequenceModel
from rnnkit.tasks import seqclass as sc
from rnnkit.tasks.classify import split_validation


def _idx_bytes(arr: np.ndarray, code: int) -> bytes:
    head = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


# ------------------------------------------------------------------ IDX / MNIST


def test_idx_reader_plain_and_gzip(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    ints = np.array([-5, 70000, 3], dtype=np.int32)
    (tmp_path / "a.idx").write_bytes(_idx_bytes(images, 0x08))
    (tmp_path / "b.idx.gz").write_bytes(gzip.compress(_idx_bytes(ints, 0x0C)))
    np.testing.assert_array_equal(sq.read_idx(tmp_path / "a.idx"), images)
    out = sq.read_idx(tmp_path / "b.idx.gz")
    np.testing.assert_array_equal(out, ints)
    assert out.dtype == np.int32 and out.dtype.byteorder in ("=", "<", "|")


def test_idx_reader_errors_name_file_and_expectation(tmp_path):
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x08\x03\x00\x00rest")
    with pytest.raises(UserError, match=r"bad\.idx: not an IDX file; expected magic"):
        sq.read_idx(bad)
    short = tmp_path / "short.idx"
    short.write_bytes(_idx_bytes(np.zeros((2, 2), np.uint8), 0x08)[:-1])
    with pytest.raises(UserError, match=r"short\.idx: IDX header says shape \(2, 2\) \(4 data bytes\) but the file holds 3"):
        sq.read_idx(short)


def _write_mnist(folder, n_train=12, n_test=4, seed=0):
    rng = np.random.default_rng(seed)
    for stem, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labs = (np.arange(n) % 10).astype(np.uint8)
        (folder / f"{stem}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(imgs, 0x08)))
        (folder / f"{stem}-labels-idx1-ubyte").write_bytes(_idx_bytes(labs, 0x08))
    return folder


def test_mnist_modes_and_split(tmp_path):
    _write_mnist(tmp_path)
    images, labels = sq.read_mnist(tmp_path)["train"]
    for mode, shape in (("rows", (2, 28, 28)), ("pixels", (2, 784, 1)), ("permuted", (2, 784, 1))):
        cfg = sc.SeqclassConfig(mode=mode, val_size=2, batch_size=2, normalize="none")
        prep = sc.TASK.prepare(cfg, str(tmp_path))
        assert (len(prep.train), len(prep.val), len(prep.test)) == (5, 1, 1)
        batch = next(iter(prep.val.epoch(0, 0)))
        assert tuple(batch.inputs.shape) == shape and batch.lengths is None
        _, val_i = split_validation(labels, 2, 0)
        first = torch.from_numpy(images[val_i[0]]).float() / 255
        if mode == "rows":
            torch.testing.assert_close(batch.inputs[0], first)
        elif mode == "pixels":
            torch.testing.assert_close(batch.inputs[0, :, 0], first.reshape(-1))
        else:
            perm = np.random.default_rng(0).permutation(784)
            torch.testing.assert_close(batch.inputs[0, :, 0], first.reshape(-1)[perm])
            assert prep.task_state["permutation"] == perm.tolist()


def test_random_shift_is_a_translation():
    img = torch.zeros(1, 6, 6)
    img[0, 2, 3] = 1.0
    gen = torch.Generator().manual_seed(3)
    out = sq.random_shift(img.repeat(50, 1, 1), 1, gen)
    pos = [tuple(int(v) for v in torch.nonzero(o)[0]) for o in out]
    assert all(o.sum() == 1 for o in out)
    assert {p for p in pos} == {(2 + dy, 3 + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}


# ------------------------------------------------------------------ .ts / CSV / arrays

TS = """# a comment
@problemName Toy
@timeStamps false
@missing true
@univariate false
@dimensions 2
@equalLength false
@classLabel true up down
@data
1,2,3:4,5,6:up
7,?:8,9:down
10:11:up
"""


def test_ts_reader_variable_lengths_and_missing(tmp_path):
    p = tmp_path / "Toy_TRAIN.ts"
    p.write_text(TS)
    s = sq.read_ts(p)
    assert s.lengths.tolist() == [3, 2, 1] and s.x.shape == (3, 3, 2)
    np.testing.assert_array_equal(s.x[0], [[1, 4], [2, 5], [3, 6]])
    assert np.isnan(s.x[1, 1, 0]) and s.x[1, 1, 1] == 9  # '?' is missing
    assert np.isnan(s.x[2, 1:]).all()  # padding
    assert s.label_names == ["up", "down"] and s.labels.tolist() == [0, 1, 0]


def test_ts_reader_errors(tmp_path):
    p = tmp_path / "bad.ts"
    p.write_text(TS.replace("10:11:up", "10:up"))
    with pytest.raises(UserError, match=r"bad\.ts:12: expected 2 dimensions like the first case, got 1"):
        sq.read_ts(p)
    p.write_text(TS.replace("7,?", "7,x"))
    with pytest.raises(UserError, match=r"bad\.ts line 11, column 3: expected a number, found 'x'"):
        sq.read_ts(p)
    p.write_text("@problemName Toy\n1,2:a\n")
    with pytest.raises(UserError, match=r"bad\.ts:2: expected a header line starting with @ before @data"):
        sq.read_ts(p)
    p.write_text(TS.replace("@classLabel true up down", "@classLabel false"))
    with pytest.raises(UserError, match=r"expected '@classLabel true <labels...>'"):
        sq.read_ts(p)


def test_ucr_test_file_is_found_next_to_train(tmp_path):
    (tmp_path / "Toy_TRAIN.ts").write_text(TS)
    (tmp_path / "Toy_TEST.ts").write_text(TS.replace("10:11:up", "12:13:down"))
    prep = sc.TASK.prepare(sc.SeqclassConfig(val_size=0, batch_size=8), str(tmp_path / "Toy_TRAIN.ts"))
    batch = next(iter(prep.test.epoch(0, 0)))
    assert batch.targets.tolist() == [0, 1, 1] and batch.lengths.tolist() == [3, 2, 1]


def test_csv_wide_and_long(tmp_path):
    wide = tmp_path / "wide.csv"
    wide.write_text("label,v1,v2,v3,v4\ncat,1,2,3,4\ndog,5,6,,\n")
    s = sq.read_csv(wide, features=2)
    assert s.lengths.tolist() == [2, 1] and s.label_names == ["cat", "dog"]
    np.testing.assert_array_equal(s.x[0], [[1, 2], [3, 4]])
    long = tmp_path / "long.csv"
    long.write_text("id,time,a,b,label\ns1,2,3,30,x\ns1,1,1,10,x\ns2,1,5,50,y\n")
    s = sq.read_csv(long)
    np.testing.assert_array_equal(s.x[0], [[1, 10], [3, 30]])  # sorted by time
    assert s.lengths.tolist() == [2, 1] and s.labels.tolist() == [0, 1]


def test_csv_and_array_errors(tmp_path):
    p = tmp_path / "w.csv"
    p.write_text("label,v1,v2\n0,1,2\n1,1,oops\n")
    with pytest.raises(UserError, match=r"w\.csv line 3, column 3: expected a number, found 'oops'"):
        sq.read_csv(p)
    p.write_text("label,v1,v2,v3\n0,1,2,3\n")
    with pytest.raises(UserError, match=r"w\.csv:2: expected a label and a positive multiple of 2 values, got 3"):
        sq.read_csv(p, features=2)
    p.write_text("id,time,a,label\ns1,1,1,x\ns1,2,1,y\n")
    with pytest.raises(UserError, match=r"w\.csv:3: sequence 's1' has label 'y' but earlier rows say 'x'"):
        sq.read_csv(p)
    z = tmp_path / "a.npz"
    np.savez(z, x=np.zeros((3, 4, 2)))
    with pytest.raises(UserError, match=r"a\.npz: no labels found; add an array named y"):
        sq.read_arrays(z)
    np.savez(z, x=np.zeros((3, 4, 2)), y=np.zeros(2))
    with pytest.raises(UserError, match=r"a\.npz: 3 sequences but 2 labels"):
        sq.read_arrays(z)
    with pytest.raises(UserError, match=r"unknown file type '\.txt'"):
        sc.read_labelled(tmp_path / "x.txt", sc.SeqclassConfig())


def test_npz_keras_style(tmp_path):
    z = tmp_path / "k.npz"
    np.savez(z, x_train=np.ones((4, 3, 2)), y_train=[2, 1, 2, 1], x_test=np.ones((2, 3, 2)), y_test=[1, 2])
    out = sq.read_arrays(z)
    assert out["train"].label_names == ["1", "2"] and out["test"].labels.tolist() == [0, 1]


# ------------------------------------------------------------------ normalisation


def test_normalisation_is_fitted_on_training_part_only():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5, 2)).astype(np.float32)
    lengths = rng.integers(1, 6, size=40)
    y = np.arange(40) % 2
    seqs = sq._as_sequences(x, y, lengths, None, "t")
    train_i, val_i = split_validation(y, 0.25, 7)
    seqs.x[val_i] += 1000.0  # validation values must not move the statistics
    prep = sc.prepare_sequences(seqs, None, sc.SeqclassConfig(val_size=0.25, split_seed=7), {})
    valid = np.concatenate([x[i, : lengths[i]] for i in train_i]).astype(np.float64)  # padding excluded
    np.testing.assert_allclose(prep.task_state["normalizer"]["mean"], valid.mean(0), rtol=1e-6)
    np.testing.assert_allclose(prep.task_state["normalizer"]["std"], valid.std(0), rtol=1e-6)
    g = sq.fit_normalizer(seqs.subset(train_i).x, per_feature=False)
    assert g["mean"][0] == g["mean"][1] == pytest.approx(valid.mean())
    batch = next(iter(prep.train.epoch(0, 0)))
    assert not torch.isnan(batch.inputs).any()  # padding -> 0 after normalisation


def test_batches_carry_lengths_only_when_ragged():
    x = np.zeros((3, 4, 1))
    src = sc._source(x.astype(np.float32), np.array([4, 2, 4]), np.array([0, 1, 0]), 2, lambda r, t, g: torch.nan_to_num(r), False)
    b1, b2 = list(src.epoch())
    assert b1.lengths.tolist() == [4, 2] and b2.lengths is None and b2.inputs.shape == (1, 4, 1)


# ------------------------------------------------------------------ images


def _digit_png(path, light_background=True, size=(60, 40)):
    from PIL import Image, ImageDraw

    bg, fg = (255, 0) if light_background else (0, 255)
    img = Image.new("RGB", size, (bg, bg, bg))
    ImageDraw.Draw(img).line([(20, 10), (20, 50)], fill=(fg, fg, fg), width=5)  # a "1", off-centre
    img.save(path)


@pytest.mark.parametrize("light", [True, False])
def test_image_to_mnist_is_white_on_black_centred(tmp_path, light):
    p = tmp_path / "one.png"
    _digit_png(p, light_background=light, size=(40, 60))
    img = sc.image_to_mnist(p)
    assert img.shape == (28, 28) and img.dtype == np.uint8
    assert img[0].max() == 0 and img[:, 0].max() == 0 and img.max() == 255  # black border, white ink
    rows, cols = np.indices(img.shape)
    w = img.astype(float)
    assert abs((rows * w).sum() / w.sum() - 13.5) <= 1 and abs((cols * w).sum() / w.sum() - 13.5) <= 1
    assert 18 <= np.ptp(np.nonzero(img.max(1))[0]) + 1 <= 21  # longest side scaled to ~20 px


def test_predict_images_matches_predict_proba(tmp_path):
    torch.manual_seed(0)
    model = SequenceModel(ModelConfig(encoder="identity", input_size=28, cell="gru", hidden_size=8, head="last", output_size=10))
    state = {"kind": "mnist", "mode": "rows", "permutation": None, "label_names": [str(i) for i in range(10)],
             "features": 28, "normalizer": {"mean": [0.13] * 28, "std": [0.3] * 28}}
    clf = sc.SequenceClassifier.from_model(model, state)
    p = tmp_path / "d.jpg"
    _digit_png(p)
    probs = clf.predict_images([p])
    np.testing.assert_allclose(probs, clf.predict_proba(sc.image_to_mnist(p)[None]), rtol=1e-6)
    assert probs.shape == (1, 10) and probs.sum() == pytest.approx(1, abs=1e-5)
    bad = tmp_path / "no.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(UserError, match=r"no\.png: not a readable PNG/JPEG image"):
        clf.predict_images([bad])


# ------------------------------------------------------------------ end to end


def _toy_set(n=240, seed=0):
    """Three classes of noisy sines (frequencies 1, 2, 4 cycles) with lengths 12..24, 2 features."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    lengths = rng.integers(12, 25, size=n)
    t = np.arange(24) / 24
    x = np.zeros((n, 24, 2), np.float32)
    for i in range(n):
        f = (1, 2, 4)[y[i]]
        x[i, :, 0] = 5 + 3 * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3))
        x[i, :, 1] = rng.normal(size=24) * 10
    return x, np.array(["lo", "mid", "hi"])[y], lengths


def test_fit_predict_evaluate_multiclass(tmp_path):
    from rnnkit.training.config import TrainConfig

    x, y, lengths = _toy_set()
    clf = sc.SequenceClassifier(sc.SeqclassConfig(batch_size=16, val_size=0.2),
                                ModelConfig(cell="gru", hidden_size=16, head="last"),
                                TrainConfig(epochs=12, lr=0.01, monitor="accuracy", monitor_mode="max", log_every=0))
    clf.fit(x, y, lengths, out=str(tmp_path / "run"))
    assert clf.metrics["accuracy"] >= 0.9
    xt, yt, lt = _toy_set(90, seed=1)
    report = clf.evaluate(xt, yt, lt)
    assert report["accuracy"] >= 0.9 and np.array(report["confusion"]).sum() == 90
    assert set(clf.predict(xt[:5], lt[:5])) <= {"lo", "mid", "hi"}
    assert clf.predict_proba(xt[:5], lt[:5]).shape == (5, 3)
    from rnnkit.runs import load

    again = load(tmp_path / "run")
    np.testing.assert_allclose(again.predict_proba(xt, lt), clf.predict_proba(xt, lt), rtol=1e-5, atol=1e-6)
    assert again.label_names == sorted(["lo", "mid", "hi"])


def test_python_fit_and_cli_train_give_the_same_model_for_a_seed(tmp_path):
    from conftest import assert_same_weights

    from rnnkit.training.config import TrainConfig
    from rnnkit.runs import train_task

    x, y, lengths = _toy_set(60)
    np.savez(tmp_path / "toy.npz", x=x, y=y)
    config, model = sc.SeqclassConfig(batch_size=16, val_size=0.2), ModelConfig(cell="gru", hidden_size=8, head="max")
    train = TrainConfig(epochs=1, lr=0.01, seed=5, log_every=0)
    torch.manual_seed(123)  # the global RNG's state must not matter
    clf = sc.SequenceClassifier(config, model, train).fit(data=str(tmp_path / "toy.npz"), out=str(tmp_path / "py"))
    torch.manual_seed(456)
    train_task("seqclass", str(tmp_path / "toy.npz"), tmp_path / "cli", model, train, config, progress=False)
    assert_same_weights(tmp_path / "py", tmp_path / "cli")
    assert clf.history.best["step"] > 0


def test_real_mnist_reader(data_dir):
    from tests.conftest import need_file

    need_file(data_dir, "mnist/t10k-images-idx3-ubyte.gz")
    test_images, test_labels = sq.read_mnist(data_dir / "mnist")["test"]
    assert test_images.shape == (10000, 28, 28) and np.bincount(test_labels).tolist()[:3] == [980, 1135, 1032]


# ------------------------------------------------------------------ CLI


def test_cli_train_predict_image_and_evaluate(tmp_path, capsys):
    import json

    from rnnkit.cli.main import main

    (tmp_path / "mnist_idx").mkdir()
    data = _write_mnist(tmp_path / "mnist_idx", n_train=40, n_test=10)
    run = tmp_path / "run"
    assert main(["train", "seqclass", "--data", str(data), "--out", str(run), "--cell", "gru", "--hidden-size", "4",
                 "--epochs", "1", "--val-size", "8", "--batch-size", "16", "--quiet"]) == 0
    digit = tmp_path / "digit.png"
    _digit_png(digit)
    capsys.readouterr()
    assert main(["predict", str(run), str(digit), "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)["predictions"][0]
    assert pred["label"] in [str(i) for i in range(10)] and sum(pred["probabilities"].values()) == pytest.approx(1, abs=1e-4)
    assert main(["evaluate", str(run), "--split", "test", "--show-errors", "4", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert np.array(metrics["confusion"]).sum() == 10 and 0 <= metrics["accuracy"] <= 1
    per_class = {f"{k}_{c}" for k in ("precision", "recall", "f1", "support") for c in range(10)}
    assert set(metrics) == {"loss", "accuracy", "macro_f1", "examples", "confusion", "confusion_png",
                            "errors_png", "errors_shown"} | per_class  # textclass's keys, plus the error pictures
    assert (run / "confusion_test.png").read_bytes()[:4] == b"\x89PNG"
    assert (run / "errors_test.png").exists() and metrics["errors_shown"] <= 4


@pytest.mark.parametrize("name", ["mnist-rows-rnn", "mnist-rows", "mnist-pixels"])
def test_presets_are_valid_configs(name):
    from pathlib import Path

    from rnnkit.training.config import TrainConfig, from_dict, load_config_file

    path = Path(__file__).resolve().parent.parent / "configs" / f"{name}.json"
    d = load_config_file(path)
    assert d["task"] == "seqclass" and d["dataset"] == "mnist"
    data = from_dict(sc.SeqclassConfig, d["data"], str(path))
    model = from_dict(ModelConfig, d["model"], str(path))
    train = from_dict(TrainConfig, d["train"], str(path))
    assert data.val_size == 5000 and train.monitor == "accuracy"
    if name == "mnist-rows-rnn":  # the tutorials' model (its training is the preset's to choose)
        assert (model.cell, model.hidden_size, model.num_layers) == ("rnn", 32, 1)
