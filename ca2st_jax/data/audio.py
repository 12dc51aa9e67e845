"""Audio features: Kaldi-compatible log-mel filterbank in numpy, crop/pad, SpecAugment.

The filterbank follows Kaldi's `compute-fbank-feats` (what torchaudio's
`compliance.kaldi.fbank` and the `kaldi-native-fbank` package implement) with the options the
AST/CAVA recipe uses: 25 ms frames, 10 ms shift, snip_edges, per-frame DC removal,
pre-emphasis 0.97, Hanning window, FFT padded to the next power of two, power spectrum,
triangular mel bins between 20 Hz and Nyquist, natural log floored at float32 epsilon, dither 0,
no energy. It works at any sample rate (the test compares it with kaldi-native-fbank at several).

Crop/pad and the `[start, end]` seconds of the crop follow the authors' `Spectrogram._specgram`
/ `loadaudio` ('ast' branch) in joohyun7u/CA2ST `util_tools/audio_transforms.py`:
- the waveform's mean is removed, fbank computed, then
- if it has fewer than T frames it is zero-padded at the end (before normalisation) and the
  reported span is [0, duration * T / n_frames];
- otherwise the T-frame window ends at `n + int((T - n) * (1 - c))` (clamped), with `c` uniform
  in [0, 1) in training and, in evaluation, moving with the view
  (pipeline.eval_audio_position); the span is [duration * s / n, duration * e / n].
- normalisation (x + 4.2677393) / (2 * 4.5689974); SpecAugment afterwards (masks set to 0).
"""

from __future__ import annotations

import functools
import math

import numpy as np

AUDIO_MEAN = -4.2677393
AUDIO_STD = 4.5689974
_EPS = float(np.finfo(np.float32).eps)


def pcm_to_float(pcm: np.ndarray) -> np.ndarray:
  """int16 PCM -> float32 in [-1, 1) (torchaudio.load's convention)."""
  if pcm.dtype == np.int16:
    return pcm.astype(np.float32) / 32768.0
  return pcm.astype(np.float32)


def float_to_pcm(wave: np.ndarray) -> np.ndarray:
  """float waveform in [-1, 1] -> int16 PCM (clipped)."""
  return np.clip(np.round(np.asarray(wave, np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def resample(wave: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
  """Polyphase (Kaiser-windowed sinc) resampling of a 1-D waveform."""
  if rate_in == rate_out or wave.size == 0:
    return wave
  from scipy import signal  # pylint: disable=g-import-not-at-top
  g = math.gcd(int(rate_in), int(rate_out))
  out = signal.resample_poly(wave.astype(np.float32), rate_out // g, rate_in // g)
  return out.astype(wave.dtype if wave.dtype.kind == 'f' else np.float32)


def _mel(f):
  return 1127.0 * np.log(1.0 + np.asarray(f, np.float64) / 700.0)


@functools.lru_cache(maxsize=32)
def mel_banks(num_bins: int, padded_window: int, sample_rate: float,
              low_freq: float = 20.0, high_freq: float = 0.0) -> np.ndarray:
  """Kaldi's triangular mel weights, shape [num_bins, padded_window // 2 + 1] (Nyquist col 0)."""
  nyquist = 0.5 * sample_rate
  if high_freq <= 0.0:
    high_freq += nyquist
  num_fft_bins = padded_window // 2
  fft_bin_width = sample_rate / padded_window
  mel_low, mel_high = _mel(low_freq), _mel(high_freq)
  delta = (mel_high - mel_low) / (num_bins + 1)
  left = mel_low + np.arange(num_bins)[:, None] * delta
  center, right = left + delta, left + 2.0 * delta
  mel = _mel(fft_bin_width * np.arange(num_fft_bins))[None, :]
  up = (mel - left) / (center - left)
  down = (right - mel) / (right - center)
  w = np.where((mel > left) & (mel < right), np.where(mel <= center, up, down), 0.0)
  return np.concatenate([w, np.zeros((num_bins, 1))], axis=1).astype(np.float32)


@functools.lru_cache(maxsize=32)
def _bank_support(num_bins, padded_window, sample_rate):
  """(first, end, weights) of the nonzero FFT bins of each mel triangle."""
  out = []
  for row in mel_banks(num_bins, padded_window, sample_rate):
    nz = np.nonzero(row)[0]
    lo, hi = (int(nz[0]), int(nz[-1]) + 1) if nz.size else (0, 0)
    out.append((lo, hi, np.ascontiguousarray(row[lo:hi])))
  return tuple(out)


@functools.lru_cache(maxsize=16)
def _hanning(win):
  return np.hanning(win)[None]


def fbank(wave: np.ndarray, sample_rate: float, num_mel_bins: int = 128,
          frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0,
          preemphasis: float = 0.97) -> np.ndarray:
  """Kaldi log-mel filterbank of a float waveform, float32 [num_frames, num_mel_bins]."""
  wave = np.asarray(wave, np.float64).reshape(-1)
  win = int(sample_rate * frame_length_ms * 0.001)
  shift = int(sample_rate * frame_shift_ms * 0.001)
  if wave.size < win:
    return np.zeros((0, num_mel_bins), np.float32)
  n = 1 + (wave.size - win) // shift
  frames = np.lib.stride_tricks.as_strided(
      wave, shape=(n, win), strides=(wave.strides[0] * shift, wave.strides[0]))
  frames = frames - frames.mean(axis=1, keepdims=True)
  if preemphasis:
    frames[:, 1:] -= preemphasis * frames[:, :-1].copy()
    frames[:, 0] *= 1.0 - preemphasis
  frames *= _hanning(win)  # 0.5 - 0.5 cos(2 pi i / (win - 1))
  padded = 1 << (win - 1).bit_length()
  spectrum = np.fft.rfft(frames, n=padded, axis=1)
  power = (spectrum.real ** 2 + spectrum.imag ** 2).astype(np.float32)
  # Per-bin dot products over each triangle's support: no multi-threaded BLAS GEMM (which
  # oversubscribes data-loading workers) and ~10x fewer multiply-adds.
  mel = np.zeros((n, num_mel_bins), np.float32)
  for m, (lo, hi, w) in enumerate(_bank_support(num_mel_bins, padded, float(sample_rate))):
    if hi > lo:
      mel[:, m] = power[:, lo:hi] @ w
  return np.log(np.maximum(mel, _EPS)).astype(np.float32)


def crop_or_pad(spec: np.ndarray, length: int, position: float):
  """The authors' T-frame crop/pad; returns (spec [T, M], start_fraction, end_fraction).

  `position` is the authors' `audio_centra` in [0, 1]: 0.5 centres the window, 0 takes the
  start, →1 the end.
  """
  n = spec.shape[0]
  if n == 0:
    return np.zeros((length, spec.shape[1]), spec.dtype), 0.0, 0.0
  p = length - n
  start, end = 0, length
  if p > 0:
    spec = np.pad(spec, ((0, p), (0, 0)))
  elif p < 0:
    gap = int(p * (1.0 - position))
    start, end = n + gap - length, n + gap
    if start < 0:
      start, end = 0, length
    if end > n:
      start, end = n - length, n
    spec = spec[start:end]
  return spec, start / n, end / n


def normalize(spec: np.ndarray) -> np.ndarray:
  return ((spec - AUDIO_MEAN) / (2.0 * AUDIO_STD)).astype(np.float32)


def spec_augment(spec: np.ndarray, rng: np.random.Generator, time_mask: int = 70,
                 freq_mask: int = 20, num_time_masks: int = 2,
                 num_freq_masks: int = 2) -> np.ndarray:
  """Zero `num_*_masks` bands of width uniform[0, max) (the authors' `spec_augment`)."""
  spec = spec.copy()
  t_len, f_len = spec.shape
  for _ in range(num_time_masks):
    t = int(rng.uniform(0.0, time_mask))
    t0 = int(rng.integers(0, max(t_len - t, 0) + 1))
    spec[t0:t0 + t] = 0
  for _ in range(num_freq_masks):
    f = int(rng.uniform(0.0, freq_mask))
    f0 = int(rng.integers(0, max(f_len - f, 0) + 1))
    spec[:, f0:f0 + f] = 0
  return spec


def audio_features(pcm: np.ndarray, sample_rate: int, *, target_rate: int | None,
                   length: int, num_mel_bins: int, position: float,
                   rng: np.random.Generator | None = None, spec_aug: bool = False,
                   time_mask: int = 70, freq_mask: int = 20):
  """PCM -> (normalised fbank [length, M] float32, [start, end] seconds of the crop).

  Empty audio gives the spectrogram of silence after padding (all (0 - mean) / (2 std)) and the
  span [0, 0]; the caller sets `has_audio` False.
  """
  wave = pcm_to_float(np.asarray(pcm))
  rate = sample_rate
  if target_rate and sample_rate and target_rate != sample_rate:
    wave = resample(wave, sample_rate, target_rate)
    rate = target_rate
  if wave.size == 0 or not rate:
    spec = np.zeros((length, num_mel_bins), np.float32)
    return normalize(spec), np.zeros(2, np.float32)
  wave = wave - wave.mean()
  spec = fbank(wave, rate, num_mel_bins)
  spec, s, e = crop_or_pad(spec, length, position)
  duration = wave.size / rate
  spec = normalize(spec)
  if spec_aug and rng is not None:
    spec = spec_augment(spec, rng, time_mask, freq_mask)
  return spec, np.array([duration * s, duration * e], np.float32)
