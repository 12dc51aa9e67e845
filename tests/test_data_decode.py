"""Decoding faults: hangs at a segment cut, variable frame rate, partly corrupt files."""
import av
import numpy as np

from ca2st_jax.data import decode, sampling


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


def _write_vfr(path, times, rate=16000):
  """Frames shown at `times` (s); frame i has brightness 5 * i; a 1 s-period audio tone."""
  import fractions  # pylint: disable=import-outside-toplevel
  with av.open(str(path), 'w') as out:
    vs = out.add_stream('libx264', rate=25)
    vs.width, vs.height, vs.pix_fmt = 32, 24, 'yuv420p'
    vs.time_base = fractions.Fraction(1, 1000)
    vs.options = {'preset': 'ultrafast', 'crf': '10'}
    for i, t in enumerate(times):
      f = av.VideoFrame.from_ndarray(np.full((24, 32, 3), 5 * i, np.uint8), format='rgb24')
      f.pts, f.time_base = int(round(t * 1000)), vs.time_base
      for p in vs.encode(f):
        out.mux(p)
    for p in vs.encode():
      out.mux(p)


# 3.0 s: 25 fps for the first second, then 12.5 fps (the headers of .mkv say 25 fps).
VFR_TIMES = list(np.arange(25) / 25) + list(1.0 + np.arange(25) / 12.5)


def _brightness_index(jpeg):
  return int(round(np.asarray(decode.decode_jpegs([jpeg])[0]).mean() / 5))


def test_variable_frame_rate_stored_at_true_times(tmp_path):
  path = tmp_path / 'vfr.mkv'
  _write_vfr(path, VFR_TIMES)
  # The decode API reports each frame's own presentation time.
  got = [t for t, _ in decode.iter_frames(str(path))]
  np.testing.assert_allclose(got, VFR_TIMES, atol=1e-3)
  v = decode.read_video(str(path))
  assert abs(v.duration - 3.0) < 0.1            # was 50 frames "at 25 fps": 2.0 s
  for k in range(len(v.jpegs)):                  # stored frame k shows the content at k / fps
    true_time = VFR_TIMES[_brightness_index(v.jpegs[k])]
    assert abs(true_time - k / v.fps) <= 1.0 / 12.5, (k, true_time, k / v.fps)
    assert abs(v.times[k] - true_time) < 1e-3


def test_variable_frame_rate_audio_times_follow_the_frames(tmp_path):
  from ca2st_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  from ca2st_jax.data.builders import base  # pylint: disable=import-outside-toplevel
  path = tmp_path / 'vfr.mkv'
  _write_vfr(path, VFR_TIMES)
  cfg = base.VideoBuilderConfig(name='t', short_side=24)
  record = base.make_example(base.Item(key='v', path=str(path), labels={'label': 0}), cfg)
  from tests_helpers import clip_options  # pylint: disable=import-outside-toplevel
  opts = clip_options(num_frames=8, sampling='dense', frame_stride=4, crop_size=16,
                      eval_short_side=16, with_audio=False)
  idx = pipeline.frame_indices(len(record['frames']), opts, None, 1, 2)   # the later view
  times = sampling.frame_times(idx, float(record['fps']))
  for i, t in zip(idx, times):
    true_time = VFR_TIMES[_brightness_index(record['frames'][i])]
    assert abs(true_time - t) <= 1.0 / 12.5, (i, true_time, t)
  assert times[-1] > 2.0                          # was ~1.3 s: frames placed at 25 fps


def test_corrupt_audio_packet_is_skipped_not_the_whole_track(tmp_path):
  path = tmp_path / 'clip.mp4'
  n, fps = 40, 8
  frames = np.zeros((n, 48, 64, 3), np.uint8) + (np.arange(n, dtype=np.uint8) * 5)[:, None, None,
                                                                                    None]
  decode.write_video(path, frames, fps, 0.3 * np.sin(2 * np.pi * 440 * np.arange(80000) / 16000))
  clean, _ = decode.read_audio(str(path), 16000)
  with av.open(str(path)) as c:
    packets = [(p.pos, p.size) for p in c.demux(c.streams.audio[0]) if p.size]
  data = bytearray(path.read_bytes())
  pos, size = packets[1]
  data[pos + size // 2] ^= 0xFF                   # one flipped byte in the second audio packet
  bad = tmp_path / 'bad.mp4'
  bad.write_bytes(bytes(data))
  pcm, rate = decode.read_audio(str(bad), 16000)
  assert rate == 16000 and abs(pcm.size - clean.size) <= 1024    # was 0 samples: no audio
  # Audio after the damage keeps its place in time (the skipped packet became silence).
  np.testing.assert_array_equal(pcm[-16000:], clean[-16000:])
  assert len(decode.read_video(str(bad)).jpegs) == n
