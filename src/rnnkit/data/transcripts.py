"""Transcription data: items of a feature sequence (T, F) and its transcript (a string).

- :class:`DigitStrings`: strings of 3-7 MNIST digits side by side with random blank gaps, read
  column by column (T = the strip's width, F = 28 pixels), generated from fixed recipes (which
  images, which gaps) drawn with a seed and rendered when a batch needs them;
- :func:`connected_recordings`: 2-6 recordings of one speaker joined with random silences and
  light noise (connected spoken digits from single ones);
- :class:`FeatureItems`: features computed once (recordings' log-mel frames) with their transcripts;
- :func:`stack_frames`: s consecutive frames joined into one step (subsampling time by s).

Both offer ``len``, ``length(i)`` (T of item i, known before rendering so batches can be bucketed
by length), ``features(i)`` (T, F) float32 and ``transcript(i)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIDE = 28  # MNIST images are SIDE x SIDE


@dataclass
class DigitStrings:
    """``images`` (N, 28, 28) uint8 with ``labels`` (N,); string i shows images ``digits[i]``
    left to right with ``gaps[i]`` (n + 1,) blank columns before each digit and after the last."""

    images: np.ndarray
    labels: np.ndarray
    digits: list
    gaps: list

    def __len__(self) -> int:
        return len(self.digits)

    def length(self, i: int) -> int:
        return SIDE * len(self.digits[i]) + int(self.gaps[i].sum())

    def features(self, i: int) -> np.ndarray:
        """The strip's columns (T, 28) as floats in [0, 1], top pixel first."""
        strip = np.zeros((self.length(i), SIDE), dtype=np.float32)
        at = int(self.gaps[i][0])
        for image, gap in zip(self.digits[i], self.gaps[i][1:]):
            strip[at : at + SIDE] = self.images[image].T / 255.0  # column c of the image is step at + c
            at += SIDE + int(gap)
        return strip

    def transcript(self, i: int) -> str:
        return "".join(str(int(self.labels[d])) for d in self.digits[i])

    def subset(self, index) -> "DigitStrings":
        return DigitStrings(self.images, self.labels, [self.digits[i] for i in index], [self.gaps[i] for i in index])


def digit_strings(images: np.ndarray, labels: np.ndarray, count: int, seed: int, min_digits: int = 3,
                  max_digits: int = 7, max_gap: int = 8) -> DigitStrings:
    """``count`` recipes drawn with ``seed``: a length in [min_digits, max_digits], that many
    images (any of ``images``), and gaps of 0..max_gap blank columns."""
    rng = np.random.default_rng(seed)
    digits, gaps = [], []
    for _ in range(count):
        n = int(rng.integers(min_digits, max_digits + 1))
        digits.append(rng.integers(0, len(images), n))
        gaps.append(rng.integers(0, max_gap + 1, n + 1))
    return DigitStrings(images, labels, digits, gaps)


@dataclass
class FeatureItems:
    """Precomputed features (a list of (T_i, F) float32 arrays) and their transcripts."""

    frames: list
    transcripts: list

    def __len__(self) -> int:
        return len(self.frames)

    def length(self, i: int) -> int:
        return len(self.frames[i])

    def features(self, i: int) -> np.ndarray:
        return self.frames[i]

    def transcript(self, i: int) -> str:
        return self.transcripts[i]

    def subset(self, index) -> "FeatureItems":
        return FeatureItems([self.frames[i] for i in index], [self.transcripts[i] for i in index])


def stack_frames(frames: np.ndarray, s: int) -> np.ndarray:
    """(T, F) -> (ceil(T / s), s * F): step t joins frames s*t .. s*t + s - 1, zeros past the end.
    Followed by a linear layer this is a convolution of width s and stride s over time."""
    if s == 1:
        return frames
    steps = -(-len(frames) // s)
    padded = np.zeros((steps * s, frames.shape[1]), dtype=frames.dtype)
    padded[: len(frames)] = frames
    return padded.reshape(steps, s * frames.shape[1])


def connected_recordings(recordings: list, count: int, seed: int, min_n: int = 2, max_n: int = 6,
                         silence_s: tuple = (0.05, 0.3), noise: float = 0.003) -> list[tuple[np.ndarray, str]]:
    """``count`` (signal (S,) float32, transcript) pairs drawn with ``seed``: a speaker, then
    ``min_n``..``max_n`` of their recordings (:class:`rnnkit.data.speech.Recording`), each after a
    silence of ``silence_s`` seconds (one more at the end), plus Gaussian noise of std ``noise``."""
    rng = np.random.default_rng(seed)
    by_speaker: dict = {}
    for r in recordings:
        by_speaker.setdefault(r.speaker, []).append(r)
    speakers = sorted(by_speaker)
    out = []
    for _ in range(count):
        mine = by_speaker[speakers[int(rng.integers(len(speakers)))]]
        chosen = [mine[int(k)] for k in rng.integers(0, len(mine), int(rng.integers(min_n, max_n + 1)))]
        rate = chosen[0].rate
        pieces = []
        for r in chosen:
            pieces += [np.zeros(int(rng.uniform(*silence_s) * rate), np.float32), r.samples]
        pieces.append(np.zeros(int(rng.uniform(*silence_s) * rate), np.float32))
        signal = np.concatenate(pieces)
        out.append(((signal + noise * rng.standard_normal(len(signal))).astype(np.float32), "".join(r.label for r in chosen)))
    return out


def strip_from_image(path) -> np.ndarray:
    """A picture of a written digit string -> its columns (W, 28) in [0, 1], like
    :meth:`DigitStrings.features`: grey, inverted when the background is light, the ink's rows
    scaled to 20 pixels high (keeping the aspect ratio) and centred in 28 rows."""
    from PIL import Image

    from rnnkit.data.images import read_ink
    from rnnkit.errors import UserError

    grey = read_ink(path)
    rows = np.flatnonzero(grey.max(1) > 0.1 * max(grey.max(), 1.0))
    if grey.max() <= 0 or not len(rows):
        raise UserError(f"{path}: the picture is blank")
    crop = grey[rows.min() : rows.max() + 1]
    width = max(1, round(crop.shape[1] * 20.0 / crop.shape[0]))
    small = np.asarray(Image.fromarray(crop.astype(np.uint8)).resize((width, 20), Image.LANCZOS), dtype=np.float32)
    strip = np.zeros((SIDE, width), dtype=np.float32)
    strip[4:24] = small / max(small.max(), 1.0)
    return np.clip(strip, 0, 1).T
