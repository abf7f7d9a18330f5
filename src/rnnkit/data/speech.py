"""Labelled recordings: a folder or tar of WAV files named ``LABEL_SPEAKER_TAKE.wav`` (the Free
Spoken Digit Dataset's scheme, ``7_jackson_32.wav``), their parts, and their features.

- :func:`read_recordings` reads every ``*.wav`` of a folder or a tar (without unpacking it);
- :func:`split_recordings` keeps the official FSDD split (takes 0-4 of every speaker and label
  are the test part) or holds one speaker out entirely as the test part;
- :class:`AudioFeatures` turns a recording into normalised log-mel or MFCC frames (T, F)
  (:mod:`rnnkit.data.audio`), and :func:`labelled_features` a list of them into padded
  :class:`~rnnkit.data.sequences.LabelledSequences`.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from rnnkit.data import audio
from rnnkit.data.sequences import LabelledSequences, encode_labels, pad_ragged
from rnnkit.errors import UserError


@dataclass
class Recording:
    samples: np.ndarray  # (S,) float32 in [-1, 1]
    rate: int
    label: str
    speaker: str
    take: int
    name: str


def parse_name(name: str) -> tuple[str, str, int]:
    """``"7_jackson_32.wav"`` -> ("7", "jackson", 32); a UserError for another shape."""
    stem = Path(name).stem
    parts = stem.split("_")
    if len(parts) != 3 or not parts[0] or not parts[1] or not parts[2].isdigit():
        raise UserError(f"{name}: expected a file name LABEL_SPEAKER_TAKE.wav (e.g. 7_jackson_32.wav)")
    return parts[0], parts[1], int(parts[2])


def read_recordings(path) -> list[Recording]:
    """Every ``*.wav`` of the folder or tar file ``path``, sorted by name."""
    path = Path(path)
    found = []
    if path.is_dir():
        for f in sorted(path.glob("*.wav")):
            found.append((f.name, *audio.read_wav(f)))
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as tar:
            for member in sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".wav")),
                                 key=lambda m: m.name):
                data = io.BytesIO(tar.extractfile(member).read())
                found.append((Path(member.name).name, *audio.read_wav(data, f"{path}:{member.name}")))
    else:
        raise UserError(f"{path}: expected a folder or a tar file of LABEL_SPEAKER_TAKE.wav recordings")
    if not found:
        raise UserError(f"{path}: no .wav recordings")
    return [Recording(samples, rate, *parse_name(name), name) for name, samples, rate in found]


def split_recordings(recordings: list[Recording], test_speaker: str = "", test_takes: int = 5) -> dict:
    """{"train", "test"}: with ``test_speaker`` that speaker's recordings are the test part,
    else takes ``0 .. test_takes - 1`` of every speaker and label (FSDD's official split)."""
    if test_speaker:
        speakers = sorted({r.speaker for r in recordings})
        if test_speaker not in speakers:
            raise UserError(f"--test-speaker {test_speaker!r}: not a speaker of the data ({', '.join(speakers)})")
        is_test = [r.speaker == test_speaker for r in recordings]
    else:
        is_test = [r.take < test_takes for r in recordings]
    parts = {"train": [r for r, t in zip(recordings, is_test) if not t], "test": [r for r, t in zip(recordings, is_test) if t]}
    if not parts["train"]:
        raise UserError("the split leaves no training recordings")
    return parts


@dataclass
class AudioFeatures:
    """How a recording becomes frames: ``kind`` logmel (``n_mels`` bands) or mfcc (``n_mfcc``
    coefficients of ``n_mels`` bands), windows of ``window_ms`` every ``hop_ms``, each utterance
    normalised to zero mean and unit variance per feature. All recordings must share one rate."""

    kind: str = "logmel"
    n_mels: int = 40
    n_mfcc: int = 13
    window_ms: float = 32.0
    hop_ms: float = 10.0
    sample_rate: int = 0  # set from the data

    def frames(self, samples: np.ndarray, where: str = "") -> np.ndarray:
        """(T, F) float32 of one recording at ``sample_rate``."""
        x = torch.from_numpy(np.asarray(samples, dtype=np.float32))
        n_fft = max(16, int(round(self.window_ms * self.sample_rate / 1000)))
        hop = max(1, int(round(self.hop_ms * self.sample_rate / 1000)))
        options = dict(n_fft=n_fft, hop=hop)
        if self.kind == "mfcc":
            feats = audio.mfcc(x, self.sample_rate, self.n_mfcc, self.n_mels, **options)
        elif self.kind == "logmel":
            feats = audio.log_mel(x, self.sample_rate, self.n_mels, **options)
        else:
            raise UserError(f"{where}audio features {self.kind!r}: expected logmel or mfcc")
        return audio.normalize_utterance(feats).numpy().astype(np.float32)

    def to_dict(self) -> dict:
        return asdict(self)


def labelled_features(recordings: list[Recording], features: AudioFeatures, names: Optional[list] = None) -> LabelledSequences:
    """Padded features (N, T_max, F) with their lengths and label ids (names from the labels, or ``names``)."""
    rates = sorted({r.rate for r in recordings})
    if features.sample_rate == 0:
        features.sample_rate = rates[0]
    odd = [r for r in recordings if r.rate != features.sample_rate]
    if odd:
        raise UserError(f"{odd[0].name}: sample rate {odd[0].rate} Hz; expected {features.sample_rate} Hz like the others")
    x, lengths = pad_ragged([features.frames(r.samples, f"{r.name}: ") for r in recordings])
    labels, names = encode_labels([r.label for r in recordings], names)
    return LabelledSequences(x, lengths, labels, names)
