"""Audio in: WAV files, log-mel and MFCC features, per-utterance normalisation, SpecAugment masks.

Shape letters: ``S`` samples, ``T`` frames, ``M`` mel bands, ``K`` cepstral coefficients,
``N`` FFT size, ``R`` sample rate (Hz).

Features of a waveform x (S,) at rate R, with a periodic Hann window w of ``N`` samples moved by
``hop`` samples (frames centred on t * hop, the signal zero-padded by N/2 at both ends):

    P[t, k]   = |sum_n w[n] x[t*hop + n - N/2] exp(-2 pi i k n / N)|^2          (T, N/2 + 1) power
    mel(f)    = 2595 log10(1 + f / 700)                                         (HTK's mel scale)
    F[m, k]   = triangle m over FFT bin k's frequency k R / N: rising from the mel point m to
                m + 1, falling to m + 2, where M + 2 points lie evenly in mel from fmin to fmax;
                peak 1 (M, N/2 + 1)
    logmel    = log(P F^T + 1e-6)                                               (T, M)
    mfcc      = logmel D^T, D the orthonormal DCT-II, first K rows             (T, K)

torch.stft computes P; the filterbank and DCT are built here (no torchaudio: its builds are tied
to torch versions). ``read_wav`` reads PCM WAV with the standard library.
"""

from __future__ import annotations

import functools
import math
import wave
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
import torch
from torch import Tensor

from rnnkit.errors import UserError

LOG_FLOOR = 1e-6


def read_wav(source: Union[str, Path, BinaryIO], name: str = "") -> tuple[np.ndarray, int]:
    """(samples (S,) float32 in [-1, 1], sample rate) of a PCM WAV file (8, 16, 24 or 32 bits;
    several channels are averaged). ``source``: a path or an open binary file (``name`` names it
    in errors). Anything else is a one-line UserError."""
    where = name or str(source)
    try:
        with wave.open(source if not isinstance(source, (str, Path)) else str(source), "rb") as w:
            channels, width, rate, frames = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(frames)
    except FileNotFoundError:
        raise UserError(f"{where}: no such file") from None
    except (wave.Error, EOFError) as exc:
        raise UserError(f"{where}: not a PCM WAV file ({str(exc) or 'it ends before its header does'})") from None
    if width not in (1, 2, 3, 4):
        raise UserError(f"{where}: {8 * width}-bit samples; expected 8, 16, 24 or 32-bit PCM")
    samples = _pcm_to_float(raw[: len(raw) - len(raw) % (width * channels)], width)
    if samples.size == 0:
        raise UserError(f"{where}: no samples")
    return samples.reshape(-1, channels).mean(1).astype(np.float32), rate


def _pcm_to_float(raw: bytes, width: int) -> np.ndarray:
    """Little-endian PCM bytes -> floats in [-1, 1] (8-bit WAV is unsigned, the others signed)."""
    if width == 1:
        return (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    if width == 3:  # no numpy dtype: sign-extend each 3-byte sample into an int32
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        ints = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        return (np.where(ints >= 1 << 23, ints - (1 << 24), ints) / float(1 << 23)).astype(np.float32)
    ints = np.frombuffer(raw, "<i2" if width == 2 else "<i4")
    return (ints / float(1 << (8 * width - 1))).astype(np.float32)


def hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=16)
def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, fmin: float = 0.0, fmax: float | None = None) -> Tensor:
    """The triangular filters F (M, N/2 + 1) of the module docstring, float32 (cached: do not
    modify the returned tensor)."""
    fmax = sample_rate / 2 if fmax is None else fmax
    if not 0 <= fmin < fmax <= sample_rate / 2:
        raise ValueError(f"expected 0 <= fmin < fmax <= {sample_rate / 2}, got {fmin}, {fmax}")
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))  # (M + 2,)
    freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft  # (N/2 + 1,)
    low, centre, high = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (M, 1) each
    rising, falling = (freqs - low) / (centre - low), (high - freqs) / (high - centre)
    return torch.from_numpy(np.clip(np.minimum(rising, falling), 0.0, None)).float()


@functools.lru_cache(maxsize=16)
def dct_matrix(n_out: int, n_in: int) -> Tensor:
    """The first ``n_out`` rows of the orthonormal DCT-II of size ``n_in``: (n_out, n_in)."""
    n, k = np.arange(n_in), np.arange(n_out)[:, None]
    d = np.cos(math.pi / n_in * (n + 0.5) * k) * math.sqrt(2.0 / n_in)
    d[0] /= math.sqrt(2.0)
    return torch.from_numpy(d).float()


def power_spectrum(samples: Tensor, n_fft: int, hop: int) -> Tensor:
    """P (T, N/2 + 1) of samples (S,), T = S // hop + 1 (see the module docstring)."""
    window = torch.hann_window(n_fft, periodic=True, dtype=samples.dtype, device=samples.device)
    spec = torch.stft(samples, n_fft, hop, window=window, center=True, pad_mode="constant", return_complex=True)
    return spec.abs().pow(2).T  # (T, N/2 + 1)


def log_mel(samples: Tensor, sample_rate: int, n_mels: int = 40, n_fft: int = 256, hop: int = 80,
            fmin: float = 0.0, fmax: float | None = None) -> Tensor:
    """logmel (T, M) of samples (S,) (defaults: 32 ms windows every 10 ms at 8 kHz)."""
    bank = mel_filterbank(n_mels, n_fft, sample_rate, fmin, fmax).to(samples.device, samples.dtype)
    return torch.log(power_spectrum(samples, n_fft, hop) @ bank.T + LOG_FLOOR)


def mfcc(samples: Tensor, sample_rate: int, n_mfcc: int = 13, n_mels: int = 40, **options) -> Tensor:
    """The first ``n_mfcc`` cepstral coefficients (T, K) of :func:`log_mel` (T, M)."""
    logmel = log_mel(samples, sample_rate, n_mels, **options)
    return logmel @ dct_matrix(n_mfcc, n_mels).to(logmel.device, logmel.dtype).T


def normalize_utterance(features: Tensor, eps: float = 1e-5) -> Tensor:
    """Each feature (column) of one utterance (T, F) to zero mean and unit variance over its frames."""
    mean = features.mean(0, keepdim=True)
    std = features.std(0, unbiased=False, keepdim=True)
    return (features - mean) / (std + eps)


def spec_augment(features: Tensor, generator: torch.Generator, freq_masks: int = 2, freq_width: int = 6,
                 time_masks: int = 2, time_width: int = 10) -> Tensor:
    """SpecAugment-style masking of one utterance (T, F) for training: ``freq_masks`` bands of up
    to ``freq_width`` features and ``time_masks`` spans of up to ``time_width`` frames set to 0
    (the normalised mean); widths and places drawn from ``generator``. Returns a new tensor."""
    out = features.clone()
    T, F = out.shape
    for size, width, count, axis in ((F, freq_width, freq_masks, 1), (T, time_width, time_masks, 0)):
        for _ in range(count):
            w = int(torch.randint(0, min(width, size) + 1, (1,), generator=generator))
            start = int(torch.randint(0, size - w + 1, (1,), generator=generator))
            if axis == 1:
                out[:, start : start + w] = 0.0
            else:
                out[start : start + w] = 0.0
    return out
