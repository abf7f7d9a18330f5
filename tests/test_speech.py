"""Labelled recordings (LABEL_SPEAKER_TAKE.wav in a folder or a tar): names, the official and
held-out-speaker splits, features, and sequence classification of spoken digits end to end on
synthetic tones; the real FSDD tar's counts."""

import tarfile

import numpy as np
import torch
import pytest

from conftest import need_file, run_cli
from test_audio import write_wav
from rnnkit.data import speech
from rnnkit.errors import UserError

TONES = {"low": 400.0, "high": 1800.0}


def write_recordings(folder, speakers=("ann", "bob"), takes=8, rate=8000):
    """One tone per label, a little noise and a random length per recording."""
    folder.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(0)
    for label, hz in TONES.items():
        for speaker in speakers:
            for take in range(takes):
                t = np.arange(int(rate * g.uniform(0.15, 0.3))) / rate
                x = 0.5 * np.sin(2 * np.pi * hz * t) + 0.01 * g.normal(size=t.size)
                write_wav(folder / f"{label}_{speaker}_{take}.wav", x[:, None], rate)
    return folder


def test_names_splits_and_a_tar_equal_to_its_folder(tmp_path):
    folder = write_recordings(tmp_path / "rec")
    with tarfile.open(tmp_path / "rec.tar", "w") as tar:
        tar.add(folder, arcname="recordings")
    from_folder, from_tar = speech.read_recordings(folder), speech.read_recordings(tmp_path / "rec.tar")
    assert len(from_folder) == 32 and [r.name for r in from_folder] == [r.name for r in from_tar]
    np.testing.assert_array_equal(from_folder[5].samples, from_tar[5].samples)
    assert speech.parse_name("7_jackson_32.wav") == ("7", "jackson", 32)
    official = speech.split_recordings(from_folder)
    assert len(official["test"]) == 2 * 2 * 5 and {r.take for r in official["test"]} == set(range(5))
    held_out = speech.split_recordings(from_folder, test_speaker="bob")
    assert {r.speaker for r in held_out["test"]} == {"bob"} and {r.speaker for r in held_out["train"]} == {"ann"}
    with pytest.raises(UserError, match="not a speaker of the data \\(ann, bob\\)"):
        speech.split_recordings(from_folder, test_speaker="eve")


def test_bad_names_and_mixed_rates_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="expected a file name LABEL_SPEAKER_TAKE.wav"):
        speech.parse_name("hello.wav")
    folder = write_recordings(tmp_path / "rec", speakers=("ann",), takes=1)
    write_wav(folder / "low_ann_9.wav", np.zeros((100, 1)), 16000)
    with pytest.raises(UserError, match="low_ann_9.wav: sample rate 16000 Hz; expected 8000 Hz"):
        speech.labelled_features(speech.read_recordings(folder), speech.AudioFeatures())
    with pytest.raises(UserError, match="no .wav recordings"):
        speech.read_recordings((tmp_path / "empty").mkdir() or tmp_path / "empty")


@pytest.mark.parametrize("kind, width", [("logmel", 24), ("mfcc", 13)])
def test_features_are_normalised_frames(tmp_path, kind, width):
    rec = speech.read_recordings(write_recordings(tmp_path / "rec", speakers=("ann",), takes=2))
    seqs = speech.labelled_features(rec, speech.AudioFeatures(kind=kind, n_mels=24))
    assert seqs.x.shape[2] == width and seqs.label_names == ["high", "low"]
    first = seqs.x[0, : seqs.lengths[0]]
    assert seqs.lengths[0] == len(rec[0].samples) // 80 + 1  # 10 ms hops at 8 kHz
    np.testing.assert_allclose(first.mean(0), 0, atol=1e-4)


def test_seqclass_learns_tones_from_recordings_and_evaluates_held_out_takes(tmp_path, capsys):
    folder = write_recordings(tmp_path / "rec", takes=12)
    run = tmp_path / "run"
    rc, out, err = run_cli(capsys, "train", "seqclass", "--data", folder, "--out", run, "--hidden-size", "8",
                           "--n-mels", "16", "--head", "max", "--epochs", "8", "--lr", "0.02", "--val-size", "4", "--batch-size", "8",
                           "--quiet")
    assert rc == 0, err
    rc, out, err = run_cli(capsys, "evaluate", run, "--split", "test", "--json")
    import json

    report = json.loads(out)
    assert rc == 0 and report["examples"] == 20 and report["accuracy"] == 1.0
    assert json.loads(run_cli(capsys, "evaluate", run, "--data", folder, "--json")[1])["examples"] == 48


def test_real_fsdd_counts_and_official_split(data_dir):
    tar = need_file(data_dir, "speech/fsdd-recordings.tar")
    recordings = speech.read_recordings(tar)
    assert len(recordings) == 3000 and {r.rate for r in recordings} == {8000}
    assert sorted({r.speaker for r in recordings}) == ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
    parts = speech.split_recordings(recordings)
    assert (len(parts["train"]), len(parts["test"])) == (2700, 300)


def test_spec_augment_masks_training_batches_only(tmp_path):
    from rnnkit.tasks.seqclass import TASK, SeqclassConfig

    folder = write_recordings(tmp_path / "rec", speakers=("ann",), takes=8)
    plain = TASK.prepare(SeqclassConfig(val_size=4, batch_size=16, n_mels=16), str(folder))
    masked = TASK.prepare(SeqclassConfig(val_size=4, batch_size=16, n_mels=16, spec_augment=True), str(folder))
    a, b = next(iter(plain.train.epoch(0, 0))), next(iter(masked.train.epoch(0, 0)))
    changed = a.inputs != b.inputs
    assert bool(changed.any()) and bool((b.inputs[changed] == 0).all())
    for part in ("val", "test"):
        x, y = (next(iter(getattr(p, part).epoch(0, 0))).inputs for p in (plain, masked))
        assert torch.equal(x, y)
