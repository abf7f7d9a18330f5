"""Audio features: WAV reading (widths, channels, bad files), the power spectrum against a numpy
framing of the equation, the mel filterbank's triangles, a pure tone's peak band, MFCC as the
orthonormal DCT of log-mel, per-utterance normalisation and SpecAugment masks."""

import math
import wave

import numpy as np
import pytest
import torch

from rnnkit.data import audio
from rnnkit.errors import UserError


def write_wav(path, samples: np.ndarray, rate: int = 8000, width: int = 2, channels: int = 1):
    """samples (S, channels) floats in [-1, 1) as little-endian PCM."""
    scale = float(1 << (8 * width - 1))
    ints = np.round(samples * scale).astype(np.int64).clip(-scale, scale - 1)
    if width == 1:
        raw = (ints + 128).astype(np.uint8).tobytes()
    else:
        raw = b"".join(int(v).to_bytes(width, "little", signed=True) for v in ints.reshape(-1))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)
    return path


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_read_wav_every_pcm_width(tmp_path, width):
    x = 0.9 * np.sin(np.arange(400) / 7.0)[:, None]
    samples, rate = audio.read_wav(write_wav(tmp_path / "a.wav", x, 16000, width))
    assert rate == 16000 and samples.dtype == np.float32 and samples.shape == (400,)
    np.testing.assert_allclose(samples, x[:, 0], atol=2.0 / (1 << (8 * width - 1)))


def test_read_wav_averages_channels_and_refuses_bad_files(tmp_path):
    x = np.stack([np.full(100, 0.5), np.full(100, -0.25)], 1)
    samples, _ = audio.read_wav(write_wav(tmp_path / "s.wav", x, channels=2))
    np.testing.assert_allclose(samples, 0.125, atol=1e-4)
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(UserError, match=r"text.wav: not a PCM WAV file"):
        audio.read_wav(tmp_path / "text.wav")
    with pytest.raises(UserError, match="no such file"):
        audio.read_wav(tmp_path / "missing.wav")
    with pytest.raises(UserError, match="no samples"):
        audio.read_wav(write_wav(tmp_path / "empty.wav", np.zeros((0, 1))))


def test_power_spectrum_is_the_framed_equation():
    g = np.random.default_rng(0)
    x, N, hop = g.normal(size=1000), 256, 80
    padded = np.pad(x, N // 2)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N) / N)  # periodic Hann
    frames = [padded[t * hop : t * hop + N] * window for t in range(len(x) // hop + 1)]
    want = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (T, N/2 + 1)
    got = audio.power_spectrum(torch.from_numpy(x), N, hop).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_mel_filterbank_triangles_peak_at_their_centres():
    M, N, R = 20, 512, 8000
    bank = audio.mel_filterbank(M, N, R).double().numpy()  # (M, N/2 + 1)
    edges = audio.mel_to_hz(np.linspace(0, audio.hz_to_mel(R / 2), M + 2))
    freqs = np.arange(N // 2 + 1) * R / N
    for m in range(M):
        inside = (freqs > edges[m]) & (freqs < edges[m + 2])
        assert (bank[m][~inside] == 0).all() and (bank[m][inside] > 0).all()
        below = np.searchsorted(freqs, edges[m + 1]) - 1  # the bins either side of the centre
        assert np.argmax(bank[m]) in (below, below + 1) and bank[m].max() > 0.75
        rising = bank[m][(freqs > edges[m]) & (freqs <= edges[m + 1])]
        assert (np.diff(rising) > 0).all()  # up to the centre, then down
    assert audio.hz_to_mel(1000.0) == pytest.approx(1000.0, abs=0.1)  # HTK's scale: 1 kHz ~ 1000 mel
    np.testing.assert_allclose(audio.mel_to_hz(audio.hz_to_mel([0.0, 440.0, 3999.0])), [0.0, 440.0, 3999.0])


@pytest.mark.parametrize("tone", [300.0, 1000.0, 2500.0])
def test_a_pure_tone_peaks_in_the_band_centred_nearest_it(tone):
    R, M = 8000, 40
    t = np.arange(R) / R
    logmel = audio.log_mel(torch.from_numpy(np.sin(2 * np.pi * tone * t)).float(), R, n_mels=M, n_fft=512, hop=160)
    centres = audio.mel_to_hz(np.linspace(0, audio.hz_to_mel(R / 2), M + 2))[1:-1]
    band = int(np.argmin(np.abs(centres - tone)))
    peaks = logmel[2:-2].argmax(-1)  # frames away from the zero-padded ends
    assert logmel.shape == (R // 160 + 1, M) and set(peaks.tolist()) == {band}


def test_mfcc_is_the_orthonormal_dct_of_log_mel():
    D = audio.dct_matrix(16, 16).double()
    np.testing.assert_allclose((D @ D.T).numpy(), np.eye(16), atol=1e-6)
    x = torch.from_numpy(np.random.default_rng(1).normal(size=2000)).float()
    logmel = audio.log_mel(x, 8000, n_mels=24).double().numpy()
    n, k = np.arange(24), np.arange(13)[:, None]
    dct = np.sqrt(2 / 24) * np.cos(np.pi * k * (2 * n + 1) / 48)
    dct[0] /= np.sqrt(2)
    np.testing.assert_allclose(audio.mfcc(x, 8000, n_mfcc=13, n_mels=24).numpy(), logmel @ dct.T, rtol=1e-4, atol=1e-4)


def test_normalize_and_spec_augment():
    g = torch.Generator().manual_seed(0)
    f = 3.0 + 2.0 * torch.randn(50, 8, generator=g, dtype=torch.float64)
    z = audio.normalize_utterance(f)
    np.testing.assert_allclose(z.mean(0).numpy(), 0, atol=1e-9)
    np.testing.assert_allclose(z.std(0, unbiased=False).numpy(), 1, atol=1e-4)
    masked = audio.spec_augment(z, torch.Generator().manual_seed(3), freq_masks=1, freq_width=3, time_masks=1,
                                time_width=5)
    again = audio.spec_augment(z, torch.Generator().manual_seed(3), freq_masks=1, freq_width=3, time_masks=1,
                               time_width=5)
    changed = masked != z
    assert torch.equal(masked, again) and bool((masked[changed] == 0).all())
    assert int(changed.all(0).sum()) <= 3 and int(changed.all(1).sum()) <= 5
