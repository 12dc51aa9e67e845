"""Frame-index sampling, exactly the formulas of the reference datasets (CAST/VideoMAE).

- `dense_train_indices`: `dataset/kinetics.py` `loadvideo_decord` (train/validation mode), one
  random window of `clip_len * stride` frames, `clip_len` frames spaced by linspace.
- `dense_eval_indices`: the same file's test mode: every `stride`-th frame (padded with the last
  one to `clip_len`), then view `k` of `num_clips` starts at `int(k * max((L - clip_len) /
  (num_clips - 1), 0))`. With one clip (validation) the reference divides by zero; we take the
  centred window.
- `tsn_train_indices`: `dataset/ssv2.py` / `dataset/epic.py` train mode: one random frame in each of
  `num_segments` equal segments (fallbacks for short videos as the reference).
- `tsn_eval_indices`: the test mode: view `k` of `num_clips` takes `int(tick * x + tick * k / K)`,
  tick = n / num_segments (for K = 2 this is the reference's sorted union of offsets 0 and 1/2
  read with `[k::2]`).

Every function returns int64 indices into the stored frames; times in seconds are index / fps.
"""

from __future__ import annotations

import numpy as np


def dense_train_indices(num_frames: int, clip_len: int, stride: int,
                        rng: np.random.Generator, num_segments: int = 1) -> np.ndarray:
  converted_len = int(clip_len * stride)
  seg_len = num_frames // num_segments
  out = []
  for i in range(num_segments):
    if seg_len <= converted_len:
      index = np.linspace(0, seg_len, num=seg_len // stride)
      index = np.concatenate((index, np.ones(clip_len - seg_len // stride) * seg_len))
      index = np.clip(index, 0, seg_len - 1).astype(np.int64)
    else:
      end_idx = int(rng.integers(converted_len, seg_len))
      str_idx = end_idx - converted_len
      index = np.linspace(str_idx, end_idx, num=clip_len)
      index = np.clip(index, str_idx, end_idx - 1).astype(np.int64)
    out.append(index + i * seg_len)
  return np.maximum(np.concatenate(out), 0)


def dense_eval_indices(num_frames: int, clip_len: int, stride: int, clip_index: int,
                       num_clips: int) -> np.ndarray:
  all_index = list(range(0, max(num_frames, 1), stride))
  while len(all_index) < clip_len:
    all_index.append(all_index[-1])
  if num_clips > 1:
    step = max((len(all_index) - clip_len) / (num_clips - 1), 0.0)
    start = int(clip_index * step)
  else:
    start = (len(all_index) - clip_len) // 2
  return np.asarray(all_index[start:start + clip_len], np.int64)


def tsn_train_indices(num_frames: int, num_segments: int,
                      rng: np.random.Generator) -> np.ndarray:
  average_duration = num_frames // num_segments
  if average_duration > 0:
    index = (np.arange(num_segments) * average_duration
             + rng.integers(0, average_duration, size=num_segments))
  elif num_frames > num_segments:
    index = np.sort(rng.integers(0, num_frames, size=num_segments))
  else:
    index = np.zeros(num_segments)
  return index.astype(np.int64)


def tsn_eval_indices(num_frames: int, num_segments: int, clip_index: int,
                     num_clips: int) -> np.ndarray:
  tick = num_frames / float(num_segments)
  offset = tick * clip_index / max(num_clips, 1)
  return np.asarray([int(tick * x + offset) for x in range(num_segments)], np.int64)


def frame_times(indices: np.ndarray, fps: float) -> np.ndarray:
  """Seconds of each sampled frame (the reference's `idx / vr.get_avg_fps()`)."""
  return (np.asarray(indices, np.float64) / max(float(fps), 1e-6)).astype(np.float32)


def audio_times_rows(audio_span: np.ndarray, times: np.ndarray, tubelet: int = 2) -> np.ndarray:
  """The `audio_times` rows [1 + F // tubelet, 2] the CAVA/CA²ST time MLP reads.

  The authors' datasets return `np.concatenate(([a_start, a_end], frame_times))` and the model
  reshapes it to (-1, 2): row 0 is the audio crop's [start, end] seconds, row 1 + k is
  [time of frame tubelet*k, time of frame tubelet*k + tubelet - 1] (for tubelet 2: the two
  frames of temporal slot k, the pair CLIP frame k sits in).
  """
  times = np.asarray(times, np.float32)
  slots = times.reshape(-1, tubelet)[:, [0, tubelet - 1]]
  return np.concatenate([np.asarray(audio_span, np.float32).reshape(1, 2), slots], 0)
