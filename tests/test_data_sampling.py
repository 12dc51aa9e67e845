"""Frame sampling equals the reference datasets' formulas; audio_times layout."""
import numpy as np
import pytest

from ca2st_jax.data import sampling


# --- the reference formulas, transcribed from CAST dataset/kinetics.py and dataset/ssv2.py ------
# (np.random.randint(a, b[, size]) written as rng.integers(a, b[, size]) with the same rng)

def ref_kinetics_train(n, clip_len, rate, rng, num_segment=1):
  converted_len = int(clip_len * rate)
  seg_len = n // num_segment
  all_index = []
  for i in range(num_segment):
    if seg_len <= converted_len:
      index = np.linspace(0, seg_len, num=seg_len // rate)
      index = np.concatenate((index, np.ones(clip_len - seg_len // rate) * seg_len))
      index = np.clip(index, 0, seg_len - 1).astype(np.int64)
    else:
      end_idx = rng.integers(converted_len, seg_len)
      str_idx = end_idx - converted_len
      index = np.linspace(str_idx, end_idx, num=clip_len)
      index = np.clip(index, str_idx, end_idx - 1).astype(np.int64)
    index = index + i * seg_len
    all_index.extend(list(index))
  return all_index


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


@pytest.mark.parametrize('n', LENGTHS)
def test_dense_train_equals_reference(n):
  for seed in range(5):
    ours = sampling.dense_train_indices(n, 16, 4, np.random.default_rng(seed))
    ref = ref_kinetics_train(n, 16, 4, np.random.default_rng(seed))
    assert list(ours) == [max(int(i), 0) for i in ref]
    assert len(ours) == 16


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
