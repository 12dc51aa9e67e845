"""Decoding faults: hangs at a segment cut, variable frame rate, partly corrupt files."""
import av
import numpy as np

from ca2st_jax.data import decode


def test_ffmpeg_log_callback_stays_off():
  # Any PyAV log level installs a callback that takes the GIL on every FFmpeg ERROR message; a
  # frame-threaded decoder freed after a segment cut then deadlocks in avcodec_free_context
  # (reproduced: /tmp loop of read_video(start, stop) under load). None = PyAV's no-op callback.
  assert decode.av is av
  assert av.logging.get_level() is None


def _ramp_video(path, n=48, fps=8):
  frames = (np.arange(n, dtype=np.uint8) * 4)[:, None, None, None] + np.zeros((n, 24, 32, 3),
                                                                              np.uint8)
  decode.write_video(path, frames, fps, 0.3 * np.sin(np.arange(16000 * n // fps) / 10), 16000)


def test_segment_cuts_repeat_without_hanging(tmp_path):
  path = tmp_path / 'seg.mp4'
  _ramp_video(path)
  for _ in range(20):   # bounded by pytest-timeout; each cut frees a decoder mid-stream
    v = decode.read_video(str(path), 16, 0, 90, start=1.0, stop=2.5)
    assert len(v.jpegs) == 12
