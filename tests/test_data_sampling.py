"""Frame sampling equals the reference datasets' formulas; audio_times layout."""
import numpy as np
import pytest

from ca2st_jax.data import sampling


# --- the reference formulas, transcribed from CAST dataset/kinetics.py and dataset/ssv2.py ------
# (np.random.randint(a, b[, size]) written as rng.integers(a, b[, size]) with the same rng).
# The dense train sampler is checked against indices computed by hand from the formula below.

def ref_kinetics_test(n, clip_len, rate, chunk_nb, test_num_segment):
  all_index = [x for x in range(0, n, rate)]
  while len(all_index) < clip_len:
    all_index.append(all_index[-1])
  buffer = np.asarray(all_index)          # the decoded frames are these indices
  temporal_step = max(1.0 * (buffer.shape[0] - clip_len) / (test_num_segment - 1), 0)
  temporal_start = int(chunk_nb * temporal_step)
  return list(buffer[temporal_start:temporal_start + clip_len])


def ref_ssv2_train(n, num_segment, rng):
  average_duration = n // num_segment
  all_index = []
  if average_duration > 0:
    all_index += list(np.multiply(list(range(num_segment)), average_duration)
                      + rng.integers(average_duration, size=num_segment))
  elif n > num_segment:
    all_index += list(np.sort(rng.integers(n, size=num_segment)))
  else:
    all_index += list(np.zeros((num_segment,)))
  return [int(i) for i in all_index]


def ref_ssv2_test(n, num_segment, chunk_nb, test_num_segment=2):
  tick = n / float(num_segment)
  all_index = list(np.array([int(tick / 2.0 + tick * x) for x in range(num_segment)]
                            + [int(tick * x) for x in range(num_segment)]))
  while len(all_index) < (num_segment * test_num_segment):
    all_index.append(all_index[-1])
  all_index = list(np.sort(np.array(all_index)))
  return [int(i) for i in all_index[chunk_nb::2]]


LENGTHS = [1, 3, 15, 16, 17, 40, 63, 64, 65, 100, 250, 301, 1000]


class _FixedDraw:
  """Stands in for the generator: integers(lo, hi) returns lo + offset and records (lo, hi)."""

  def __init__(self, offset):
    self.offset, self.calls = offset, []

  def integers(self, lo, hi):
    self.calls.append((lo, hi))
    return lo + self.offset


def test_dense_train_indices_by_hand():
  """CAST dataset/kinetics.py train mode, 16 frames at stride 4 (window of 64 frames):
  a video longer than the window draws end_idx in [64, n) and takes
  int(clip(linspace(end - 64, end, 16), end - 64, end - 1)); a shorter one takes
  linspace(0, n, n // 4), padded with n, clipped to n - 1."""
  draw = _FixedDraw(10)  # n = 100: end_idx = 74, start 10, step 64 / 15 = 4.267
  got = sampling.dense_train_indices(100, 16, 4, draw)
  assert draw.calls == [(64, 100)]
  assert list(got) == [10, 14, 18, 22, 27, 31, 35, 39, 44, 48, 52, 56, 61, 65, 69, 73]
  # n = 40 <= 64: linspace(0, 40, 10) = 0, 4.44, 8.89, 13.3, 17.8, 22.2, 26.7, 31.1, 35.6, 40,
  # then six 40s; clipped to 39
  draw = _FixedDraw(0)
  got = sampling.dense_train_indices(40, 16, 4, draw)
  assert draw.calls == []
  assert list(got) == [0, 4, 8, 13, 17, 22, 26, 31, 35] + [39] * 7
  # n = 3: no linspace points (3 // 4 = 0), sixteen 3s clipped to 2
  assert list(sampling.dense_train_indices(3, 16, 4, _FixedDraw(0))) == [2] * 16


@pytest.mark.parametrize('n', LENGTHS)
def test_dense_train_stays_in_one_window(n):
  for seed in range(5):
    ours = sampling.dense_train_indices(n, 16, 4, np.random.default_rng(seed))
    assert len(ours) == 16 and ours.min() >= 0 and ours.max() <= max(n - 1, 0)
    assert (np.diff(ours) >= 0).all() and ours[-1] - ours[0] < 64


def test_dense_eval_indices_by_hand():
  """Test mode: every 4th frame of 100 (0, 4, ..., 96: 25 entries); view k of 5 starts at
  int(k * (25 - 16) / 4) = 0, 2, 4, 6, 9 entries, i.e. frame 4 * start."""
  for k, first in enumerate([0, 8, 16, 24, 36]):
    assert list(sampling.dense_eval_indices(100, 16, 4, k, 5)) == list(range(first, first + 64, 4))


@pytest.mark.parametrize('n', LENGTHS)
def test_dense_eval_equals_reference(n):
  for chunk in range(5):
    ours = sampling.dense_eval_indices(n, 16, 4, chunk, 5)
    assert list(ours) == [int(i) for i in ref_kinetics_test(n, 16, 4, chunk, 5)]
  one = sampling.dense_eval_indices(n, 16, 4, 0, 1)     # single-clip validation: centred
  assert len(one) == 16


@pytest.mark.parametrize('n', LENGTHS)
def test_tsn_train_equals_reference(n):
  for seed in range(5):
    ours = sampling.tsn_train_indices(n, 16, np.random.default_rng(seed))
    assert list(ours) == ref_ssv2_train(n, 16, np.random.default_rng(seed))
    assert (ours < max(n, 1)).all()


@pytest.mark.parametrize('n', LENGTHS)
def test_tsn_eval_equals_reference(n):
  for chunk in range(2):
    assert list(sampling.tsn_eval_indices(n, 16, chunk, 2)) == ref_ssv2_test(n, 16, chunk)


def test_audio_times_rows_layout():
  # The authors: idx = concat([a_start, a_end], frame_seconds); model: idx.reshape(B, -1, 2).
  span = np.array([0.5, 10.74], np.float32)
  idx = np.arange(16) * 4 + 3
  times = sampling.frame_times(idx, 25.0)
  rows = sampling.audio_times_rows(span, times, tubelet=2)
  authors = np.concatenate([span, times]).reshape(-1, 2)
  np.testing.assert_array_equal(rows, authors)
  assert rows.shape == (9, 2)
  np.testing.assert_allclose(rows[1], [3 / 25, 7 / 25])
