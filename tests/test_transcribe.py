"""Transcription with CTC: digit strings rendered from their recipes, batches, the CTC loss
against torch's on the flattened targets, error-rate metrics by hand, a tiny model that learns
to read strings of three bar-shaped 'digits', the CLI, and recordings of tone sequences."""

import gzip
import json
import struct

import numpy as np
import pytest
import torch

from conftest import run_cli
from rnnkit import metrics
from rnnkit.data.transcripts import digit_strings, stack_frames
from rnnkit.models import ModelConfig
from rnnkit.tasks.transcribe import PAD, TASK, TranscribeConfig, Transcriber, ctc_loss, make_source
from rnnkit.training.config import TrainConfig


def _idx(arr: np.ndarray) -> bytes:
    return gzip.compress(bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes())


def bar_images(labels: np.ndarray) -> np.ndarray:
    """Digit k drawn as a horizontal bar on row 6 + 6k, columns 6..21."""
    images = np.zeros((len(labels), 28, 28), dtype=np.uint8)
    for i, k in enumerate(labels):
        images[i, 6 + 6 * k, 6:22] = 255
    return images


@pytest.fixture
def bar_mnist(tmp_path, monkeypatch):
    """RNNKIT_DATA with an 'mnist' of three bar-shaped digits (0, 1, 2)."""
    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    for stem, n in (("train", 300), ("t10k", 60)):
        labels = (np.arange(n) % 3).astype(np.uint8)
        (folder / f"{stem}-images-idx3-ubyte.gz").write_bytes(_idx(bar_images(labels)))
        (folder / f"{stem}-labels-idx1-ubyte.gz").write_bytes(_idx(labels))
    monkeypatch.setenv("RNNKIT_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


def test_digit_strings_render_their_recipes():
    labels = np.array([0, 1, 2, 1])
    images = bar_images(labels)
    strings = digit_strings(images, labels, 20, seed=3, min_digits=2, max_digits=4, max_gap=5)
    assert len(strings) == 20
    for i in range(20):
        n, gaps = len(strings.digits[i]), strings.gaps[i]
        strip = strings.features(i)
        assert 2 <= n <= 4 and len(gaps) == n + 1 and gaps.max() <= 5
        assert strip.shape == (28 * n + gaps.sum(), 28) == (strings.length(i), 28)
        assert strings.transcript(i) == "".join(str(labels[d]) for d in strings.digits[i])
        first = int(gaps[0])
        np.testing.assert_array_equal(strip[first : first + 28], images[strings.digits[i][0]].T / 255.0)
        assert not strip[:first].any()
    again = digit_strings(images, labels, 20, seed=3, min_digits=2, max_digits=4, max_gap=5)
    assert all(np.array_equal(a, b) for a, b in zip(strings.digits, again.digits))


def test_batches_pad_inputs_and_targets_and_loss_matches_torch():
    labels = np.array([0, 1, 2])
    strings = digit_strings(bar_images(labels), labels, 7, seed=0, max_gap=4)
    source = make_source(strings, {"0": 1, "1": 2, "2": 3}, 4, False)
    batch = next(iter(source.epoch(0, 0)))
    lengths = batch.lengths if batch.lengths is not None else torch.full((len(batch.targets),), batch.inputs.shape[1])
    for row, n in zip(batch.targets, lengths.tolist()):
        assert (row[row != PAD] >= 1).all() and n <= batch.inputs.shape[1]
    outputs = torch.randn(*batch.inputs.shape[:2], 4, dtype=torch.float64)
    logp = torch.log_softmax(outputs, -1)
    want = []
    for b in range(len(batch.targets)):
        target = batch.targets[b][batch.targets[b] != PAD]
        nll = torch.nn.functional.ctc_loss(logp[b, : lengths[b]].unsqueeze(1), target[None], lengths[b : b + 1],
                                           torch.tensor([len(target)]), reduction="sum")
        want.append(nll / len(target))
    assert float(ctc_loss(outputs, batch)) == pytest.approx(float(torch.stack(want).mean()), rel=1e-5)


def test_error_rates_by_hand():
    assert metrics.edit_distance("kitten", "sitting") == 3
    assert metrics.edit_distance("", "abc") == 3 and metrics.edit_distance("abc", "abc") == 0
    s = metrics.transcription_scores(["123", "45", "a b c"], ["13", "45", "a x c d"])
    assert s["cer"] == pytest.approx((1 + 0 + 3) / 10)  # "a b c" -> "a x c d": substitute b, insert " d"
    assert s["wer"] == pytest.approx((1 + 0 + 2) / 5)  # 123->13, a b c->a x c d: one substitution, one insertion
    assert s["sequence_accuracy"] == pytest.approx(1 / 3)


def test_stacked_frames_then_linear_equal_a_strided_convolution():
    torch.manual_seed(0)
    frames = torch.randn(11, 3, dtype=torch.float64)  # T = 11 is not a multiple of s = 4: the tail is zero-padded
    stacked = torch.from_numpy(stack_frames(frames.numpy(), 4))
    assert stacked.shape == (3, 12) and torch.equal(stacked[0], frames[:4].reshape(-1))
    conv = torch.nn.Conv1d(3, 5, kernel_size=4, stride=4).double()
    linear = torch.nn.Linear(12, 5).double()
    with torch.no_grad():  # conv weight (out, in, k) -> linear weight over [frame 0 features, frame 1 features, ...]
        linear.weight.copy_(conv.weight.permute(0, 2, 1).reshape(5, 12))
        linear.bias.copy_(conv.bias)
        want = conv(torch.nn.functional.pad(frames.T, (0, 1)).unsqueeze(0))[0].T  # (3, 5)
        torch.testing.assert_close(linear(stacked), want)
    assert stack_frames(frames.numpy(), 1).shape == (11, 3)


def test_subsampled_batches_have_a_step_per_s_frames():
    labels = np.array([0, 1, 2])
    strings = digit_strings(bar_images(labels), labels, 6, seed=1, max_gap=3)
    ids = {"0": 1, "1": 2, "2": 3}
    halved = make_source(strings, ids, 6, False, subsample=2)
    order = next(iter(halved.batch_indices(0, 0))).tolist()
    batch = next(iter(halved.epoch(0, 0)))
    assert batch.inputs.shape == (6, (max(strings.length(i) for i in order) + 1) // 2, 56)
    for row, i in enumerate(order):
        frames = torch.from_numpy(strings.features(i))
        n = -(-len(frames) // 2)
        assert int(batch.lengths[row]) == n
        assert torch.equal(batch.inputs[row, : len(frames) // 2], frames[: len(frames) // 2 * 2].reshape(-1, 56))
        assert not batch.inputs[row, n:].any()
        plain = next(iter(make_source(strings.subset([i]), ids, 1, False).epoch(0, 0)))
        assert torch.equal(batch.targets[row, : plain.targets.shape[1]], plain.targets[0])


@pytest.mark.parametrize("subsample, encoder", [(1, "identity"), (2, "linear")])
def test_a_tiny_model_learns_to_read_bar_strings(bar_mnist, tmp_path, subsample, encoder):
    config = TranscribeConfig(train_strings=200, test_strings=40, val_images=60, min_digits=1, max_digits=3, max_gap=2,
                              subsample=subsample, batch_size=16)
    t = Transcriber(config, ModelConfig(encoder=encoder, embedding_dim=16, cell="gru", hidden_size=16, bidirectional=True),
                    TrainConfig(epochs=15, lr=0.03, monitor="cer", monitor_mode="min", log_every=0))
    t.fit("mnist-digits", out=str(tmp_path / "run"))
    assert t.model.config.input_size == 28 * subsample and t.model.config.encoder == encoder
    assert t.alphabet == ["0", "1", "2"] and t.metrics["cer"] < 0.05
    report = t.evaluate(split="test")
    assert report["sequence_accuracy"] > 0.9 and "wer" not in report
    strings = digit_strings(bar_images(np.array([2, 0, 1])), np.array([2, 0, 1]), 3, seed=9, min_digits=1, max_digits=3,
                            max_gap=2)
    assert t.predict([strings.features(i) for i in range(3)]) == [strings.transcript(i) for i in range(3)]
    assert t.predict([strings.features(0)], beam=4) == [strings.transcript(0)]


def test_cli_train_and_evaluate_with_beam(bar_mnist, tmp_path, capsys):
    run = tmp_path / "run"
    rc, out, err = run_cli(capsys, "train", "transcribe", "--data", "mnist-digits", "--out", run, "--train-strings", "64",
                           "--test-strings", "16", "--val-images", "30", "--hidden-size", "8", "--bidirectional",
                           "--max-steps", "6", "--batch-size", "16", "--quiet")
    assert rc == 0, err
    rc, out, err = run_cli(capsys, "evaluate", run, "--split", "test", "--json", "--beam", "3")
    report = json.loads(out)
    assert rc == 0 and report["examples"] == 16 and {"loss", "cer", "sequence_accuracy"} <= set(report)
    assert report["decoder"] == "prefix beam search, width 3" and report["cer"] >= 0


def test_connected_recordings_join_one_speakers_takes_with_silences():
    from rnnkit.data.speech import Recording
    from rnnkit.data.transcripts import connected_recordings

    recs = [Recording(np.full(50 + k, 0.5, np.float32), 8000, str(k % 10), speaker, k, f"{k % 10}_{speaker}_{k}.wav")
            for speaker in ("ann", "bob") for k in range(20)]
    pairs = connected_recordings(recs, 30, seed=1, min_n=2, max_n=4, silence_s=(0.01, 0.02), noise=0.0)
    for signal, transcript in pairs:
        assert 2 <= len(transcript) <= 4 and signal.dtype == np.float32
        loud = np.flatnonzero(np.diff(np.r_[0.0, (signal > 0).astype(float), 0.0]) == 1)  # starts of the recordings
        assert len(loud) == len(transcript)
        assert not signal[: int(0.01 * 8000)].any()  # a silence first
    assert [t for _, t in pairs] == [t for _, t in connected_recordings(recs, 30, 1, 2, 4, (0.01, 0.02), 0.0)]


def test_cli_predict_reads_pictures_and_refuses_other_files(bar_mnist, tmp_path, capsys):
    from PIL import Image

    run = tmp_path / "run"
    assert run_cli(capsys, "train", "transcribe", "--data", "mnist-digits", "--out", run, "--train-strings", "32",
                   "--test-strings", "8", "--val-images", "30", "--hidden-size", "8", "--max-steps", "2",
                   "--batch-size", "16", "--quiet")[0] == 0
    strip = np.concatenate([bar_images(np.array([k]))[0] for k in (2, 0, 1)], axis=1)  # (28, 84): "201"
    Image.fromarray(255 - strip).save(tmp_path / "digits.png")  # dark ink on white, as written
    rc, out, err = run_cli(capsys, "predict", run, "--input", tmp_path / "digits.png", "--beam", "2")
    name, text = out.rstrip("\n").split("\t") if "\t" in out else (out.strip(), "")
    assert rc == 0 and name == str(tmp_path / "digits.png") and set(text) <= set("012")
    from rnnkit.data.transcripts import strip_from_image

    columns = strip_from_image(tmp_path / "digits.png")  # ink rows 6-18 scaled to 20 pixels, centred
    assert columns.shape == (round(84 * 20 / 13), 28) and columns.max() == pytest.approx(1.0)
    assert not columns[:, :4].any() and not columns[:, 24:].any()
    (tmp_path / "a.wav").write_bytes(b"RIFF")
    assert "expected one of .png" in run_cli(capsys, "predict", run, "--input", tmp_path / "a.wav")[2]


def tone_recordings(folder, rate=8000):
    """TRANSCRIPT_SPEAKER_TAKE.wav files: 'a' a 500 Hz tone, 'b' 1500 Hz, silences between."""
    from test_audio import write_wav

    hz, g = {"a": 500.0, "b": 1500.0}, np.random.default_rng(0)
    folder.mkdir()
    for take in range(12):
        for speaker in ("ann", "bob"):
            text = "".join(g.choice(["a", "b"], int(g.integers(1, 4))))
            pieces = [np.zeros(400)]
            for c in text:
                pieces += [0.5 * np.sin(2 * np.pi * hz[c] * np.arange(1200) / rate), np.zeros(400)]
            write_wav(folder / f"{text}_{speaker}_{take}.wav", np.concatenate(pieces)[:, None], rate)
    return folder


def test_recordings_train_and_transcribe_wav_files(tmp_path, capsys):
    folder = tone_recordings(tmp_path / "rec")
    run = tmp_path / "run"
    rc, out, err = run_cli(capsys, "train", "transcribe", "--data", folder, "--out", run, "--hidden-size", "8",
                           "--n-mels", "16", "--max-steps", "3", "--batch-size", "4", "--val-size", "2", "--quiet")
    assert rc == 0, err
    wav = sorted(folder.glob("*_ann_0.wav"))[0]
    rc, out, err = run_cli(capsys, "predict", run, "--input", wav)
    assert rc == 0 and out.startswith(f"{wav}\t") and set(out.split("\t")[1].strip()) <= {"a", "b"}
    assert "expected a .wav file" in run_cli(capsys, "predict", run, "--input", tmp_path / "x.png")[2]


def test_onnx_graph_gives_the_per_step_scores_and_the_json_the_alphabet(tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    from rnnkit.export import export_onnx
    from rnnkit.runs import open_run

    run = tmp_path / "run"
    assert run_cli(capsys, "train", "transcribe", "--data", tone_recordings(tmp_path / "rec"), "--out", run,
                   "--hidden-size", "8", "--n-mels", "16", "--bidirectional", "--max-steps", "2", "--batch-size", "4",
                   "--val-size", "2", "--quiet")[0] == 0
    onnx_path, side = export_onnx(run)
    meta = json.loads(side.read_text())
    assert meta["decoder"] == {"kind": "ctc", "blank": 0, "alphabet": ["a", "b"]} and meta["subsample"] == 1
    x, lengths = torch.randn(3, 40, 16), torch.tensor([40, 25, 31])
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feed = {"inputs": x.numpy(), "lengths": lengths.numpy()}
    for spec in meta["inputs"][2:]:  # the recurrent state, zeros to start
        feed[spec["name"]] = np.zeros([3 if d == "state_batch" else d for d in spec["shape"]], np.float32)
    scores = session.run(None, feed)[0]
    with torch.no_grad():
        want = open_run(run).build_model()(x, None, lengths)[0]
    for row, n in enumerate(lengths.tolist()):  # past a row's length the graph's scores are not read
        np.testing.assert_allclose(scores[row, :n], want[row, :n].numpy(), rtol=1e-4, atol=1e-4)
