"""Video and audio decoding with PyAV (build time), JPEG frames (read time), and a small writer.

Build time: `read_video` decodes every frame (optionally resampled to a lower fps) resized so its
short side is `short_side`, and returns JPEG bytes at a constant rate (a variable frame rate is
resampled by timestamp); `read_audio` decodes the audio track to mono 16-bit PCM at a chosen rate
(libswresample), or an empty array when the file has no audio. Both decode packet by packet and
skip a damaged packet; `iter_frames` yields each frame with its presentation time.
Read time: `decode_jpegs` turns the stored JPEGs of the sampled frames back into PIL images.
`write_video` writes mp4/webm/avi files with an audio track (fixtures and the synthetic set).
"""

from __future__ import annotations

import dataclasses
import io
import logging
from typing import Iterator

import av
import numpy as np
from PIL import Image

log = logging.getLogger(__name__)
# Keep PyAV's default no-op FFmpeg log callback. Any log level (even PANIC) installs a callback
# that takes the GIL for every ERROR message; a frame-threaded decoder freed mid-stream (a segment
# cut before the end of the file) logs from its worker threads while the freeing thread holds the
# GIL and joins them: a deadlock in avcodec_free_context.
av.logging.set_level(None)


class DecodeError(Exception):
  """A file that cannot be used (missing, unreadable, no video stream, no frames)."""


def _scaled_size(width, height, short_side):
  if not short_side or min(width, height) <= 0:
    return width, height
  if width <= height:
    w, h = short_side, int(round(height * short_side / width))
  else:
    w, h = int(round(width * short_side / height)), short_side
  return w + (w % 2), h + (h % 2)  # keep even sizes


def encode_jpeg(img: Image.Image, quality: int = 90) -> bytes:
  buf = io.BytesIO()
  img.save(buf, format='JPEG', quality=quality)
  return buf.getvalue()


def decode_jpegs(blobs, size_hint=None):
  """JPEG bytes -> list of RGB PIL images (DCT-domain downscale when much larger than needed)."""
  out = []
  for b in blobs:
    img = Image.open(io.BytesIO(b))
    if size_hint:
      img.draft('RGB', size_hint)
    out.append(img.convert('RGB'))
  return out


@dataclasses.dataclass
class VideoFrames:
  jpegs: list          # JPEG bytes per stored frame; stored frame k shows time k / fps
  times: np.ndarray    # presentation time (s, from `start`) of the source frame stored at k
  fps: float           # stored frame rate (constant)
  duration: float      # seconds
  width: int
  height: int
  source_width: int    # the decoded source's frame size, before the build rescaled it: the
  source_height: int   # authors resize the source itself, so eval views follow its aspect


def _open(path):
  try:
    return av.open(str(path))
  except Exception as e:  # pylint: disable=broad-except
    raise DecodeError(f'cannot open {path}: {e}') from e


def _stream_t0(stream) -> float:
  return (stream.start_time or 0) * float(stream.time_base) if stream.time_base else 0.0


def _seek(container, stream, start):
  """Seeks to the keyframe before `start` seconds (no-op near the beginning)."""
  if start > 1.0:
    try:
      container.seek(int((start + _stream_t0(stream) - 0.5) / float(stream.time_base)),
                     stream=stream, backward=True, any_frame=False)
    except av.FFmpegError:
      pass


def _decoded_frames(container, stream, path):
  """Frames of `stream`, decoded packet by packet: a packet that fails to decode is skipped.

  Yields frames until the end of the file or an unreadable container; `bad_packets` of the
  returned generator's caller is logged here once.
  """
  bad, first_error = 0, None
  packets = container.demux(stream)
  while True:
    try:
      packet = next(packets)
    except StopIteration:
      break
    except (av.FFmpegError, ValueError) as e:  # the container itself is unreadable from here
      first_error = first_error or e
      log.warning('%s: unreadable after this point (%s); keeping what was decoded', path, e)
      try:
        yield from stream.codec_context.decode(None)  # drain the frames still in the decoder
      except (av.FFmpegError, ValueError):
        pass
      break
    try:
      frames = packet.decode()
    except (av.FFmpegError, ValueError) as e:
      bad, first_error = bad + 1, first_error or e
      continue
    yield from frames
  if bad:
    log.warning('%s: skipped %d undecodable %s packet(s), e.g. %s', path, bad, stream.type,
                first_error)


def _release(stream):
  """Stops the decoder's threads before the codec is freed (the caller then closes the file)."""
  try:
    stream.codec_context.flush_buffers()
  except (av.FFmpegError, ValueError, AttributeError):
    pass


def video_size(path: str) -> tuple[int, int]:
  """(width, height) of the first video stream's decoded frames, from its codec headers."""
  with _open(path) as c:
    if not c.streams.video:
      raise DecodeError(f'no video stream in {path}')
    ctx = c.streams.video[0].codec_context
    return int(ctx.width), int(ctx.height)


def iter_frames(path: str, short_side: int = 0, fps: float = 0.0,
                start: float = 0.0) -> Iterator[tuple[float, Image.Image]]:
  """Yields (presentation time in seconds from the stream start, PIL frame) from `start` on.

  The times are the frames' own timestamps (variable frame rate files included). With `fps`, at
  most one frame per 1/fps seconds is kept. Closing the generator early (e.g. at a segment end)
  stops the decoder and closes the file at once. Raises DecodeError if the file cannot be
  opened, has no video stream or no decodable frame.
  """
  with _open(path) as container:
    if not container.streams.video:
      raise DecodeError(f'no video stream in {path}')
    stream = container.streams.video[0]
    stream.thread_type = 'AUTO'
    t0 = _stream_t0(stream)
    _seek(container, stream, start)
    size = None
    next_t = start
    frames = _decoded_frames(container, stream, path)
    try:
      for frame in frames:
        t = (float(frame.time) if frame.time is not None else 0.0) - t0
        if t < start - 1e-6:
          continue
        if fps:
          if t + 1e-6 < next_t:
            continue
          while next_t <= t + 1e-6:
            next_t += 1.0 / fps
        if size is None:
          size = _scaled_size(frame.width, frame.height, short_side)
        yield t, frame.to_image(width=size[0], height=size[1])
    finally:
      frames.close()
      _release(stream)
    if size is None:
      raise DecodeError(f'cannot decode {path}: no decodable video frame')


def video_info(path: str) -> tuple[float, float]:
  """(native fps, duration seconds) from the container headers."""
  with _open(path) as c:
    if not c.streams.video:
      raise DecodeError(f'no video stream in {path}')
    s = c.streams.video[0]
    fps = float(s.average_rate or s.guessed_rate or 0) or 25.0
    dur = float(c.duration / av.time_base) if c.duration else 0.0
  return fps, dur


@dataclasses.dataclass
class StreamInfo:
  """What a caller needs before decoding: the first video stream's frame size and the start times
  (seconds on the container's clock) of the video and audio streams (None: no audio stream)."""
  width: int
  height: int
  video_start: float
  audio_start: float | None


def probe(path: str) -> StreamInfo:
  """The file's StreamInfo from its headers (raises DecodeError without a video stream)."""
  with _open(path) as c:
    if not c.streams.video:
      raise DecodeError(f'no video stream in {path}')
    v = c.streams.video[0]
    a = c.streams.audio[0] if c.streams.audio else None
    return StreamInfo(int(v.codec_context.width or 0), int(v.codec_context.height or 0),
                      _stream_t0(v), None if a is None else _stream_t0(a))


def constant_rate(times: np.ndarray, header_fps: float, fps: float = 0.0,
                  end: float | None = None) -> tuple[np.ndarray, float]:
  """(index of the source frame to store at each k / rate, rate) for frames shown at `times`.

  Regular timestamps keep every frame (the rate: `fps` when given, else the header's when it
  agrees with the timestamps). Irregular ones (a variable frame rate, or frames lost to
  corruption) are resampled to a constant rate (`fps`, else the header's when most frames come
  at that rate, else the mean rate of the timestamps):
  stored frame k is the source frame nearest to k / rate seconds, up to `end` (default: one
  median frame interval after the last frame).
  """
  times = np.asarray(times, np.float64)
  n = len(times)
  if n < 2:
    return np.arange(n), float(fps or header_fps)
  gaps = np.diff(times)
  step = float(np.median(gaps))
  regular = step > 0 and bool(np.all(np.abs(gaps - step) <= 0.25 * step))
  if regular:
    measured = 1.0 / step
    if fps:
      rate = float(fps)
    else:
      rate = header_fps if abs(header_fps - measured) <= 0.01 * measured else measured
    if fps == 0 or abs(rate - measured) <= 0.01 * measured:
      return np.arange(n), rate
  if fps:
    rate = float(fps)
  elif step > 0 and abs(1.0 / step - header_fps) <= 0.01 * header_fps:
    rate = header_fps   # mostly at the nominal rate (slower stretches, lost frames): keep it
  else:
    rate = (n - 1) / max(times[-1] - times[0], 1e-6)
  stop = times[-1] + max(step, 1e-6) if end is None else end
  grid = np.arange(max(int(round(stop * rate - 1e-3)), 1)) / rate
  right = np.clip(np.searchsorted(times, grid), 1, n - 1)
  left = right - 1
  nearest = np.where(grid - times[left] <= times[right] - grid, left, right)
  return nearest, rate


def read_video(path: str, short_side: int = 0, fps: float = 0.0, quality: int = 90,
               start: float = 0.0, stop: float | None = None) -> VideoFrames:
  """Decodes [start, stop) seconds of `path` into JPEG frames at a constant rate.

  Stored frame k shows the content at k / fps seconds after `start`: a variable frame rate is
  resampled (see `constant_rate`), so frame indices / fps are true times for sampling and
  `audio_times`; `times` keeps each stored frame's own presentation time.
  """
  native_fps, _ = video_info(path)
  jpegs, times, size = [], [], (0, 0)
  frames = iter_frames(path, short_side, fps if fps and fps < native_fps else 0.0, start)
  try:
    for t, img in frames:
      if stop is not None and t >= stop:
        break
      jpegs.append(encode_jpeg(img, quality))
      times.append(t - start)
      size = img.size
  finally:
    frames.close()  # now, not at garbage collection: the decoder is stopped and the file closed
  if not jpegs:
    raise DecodeError(f'no frames decoded from {path} in [{start}, {stop})')
  keep, out_fps = constant_rate(
      np.asarray(times), native_fps, fps if fps and fps < native_fps else 0.0,
      end=None if stop is None else stop - start)
  jpegs = [jpegs[i] for i in keep]
  times = np.asarray(times, np.float32)[keep]
  return VideoFrames(jpegs, times, out_fps, len(jpegs) / out_fps, size[0], size[1],
                     *video_size(path))


def read_audio(path: str, rate: int = 16000, start: float = 0.0,
               stop: float | None = None) -> tuple[np.ndarray, int]:
  """Mono int16 PCM of [start, stop) seconds of the first audio stream at `rate` (0: native).

  Decodes packet by packet: a damaged packet is skipped and its time filled with silence, so the
  rest of the track keeps its place. Returns an empty array and rate 0 when the file has no audio
  stream (or none of it decodes).
  """
  with _open(path) as container:
    if not container.streams.audio:
      return np.zeros(0, np.int16), 0
    stream = container.streams.audio[0]
    out_rate = int(rate or stream.rate)
    t0 = _stream_t0(stream)
    _seek(container, stream, start)
    resampler = av.AudioResampler(format='s16', layout='mono', rate=out_rate)
    chunks, first, expected = [], None, None  # `expected`: seconds where the next frame begins

    def resampled(frame):
      for f in resampler.resample(frame):
        chunks.append(f.to_ndarray().reshape(-1))

    frames = _decoded_frames(container, stream, path)
    try:
      for frame in frames:
        t = (float(frame.time) if frame.time is not None else None)
        t = None if t is None else t - t0
        if first is None:
          first = t or 0.0
        if stop is not None and t is not None and t > stop + 0.1:
          break
        if t is not None and expected is not None and t - expected > 0.5 * frame.samples / frame.sample_rate:
          resampled(None)   # a skipped packet: silence until this frame's time
          resampler = av.AudioResampler(format='s16', layout='mono', rate=out_rate)
          have = sum(c.size for c in chunks)
          chunks.append(np.zeros(max(int(round((t - first) * out_rate)) - have, 0), np.int16))
        frame.pts = None
        resampled(frame)
        if t is not None:
          expected = t + frame.samples / frame.sample_rate
      resampled(None)
    except (av.FFmpegError, ValueError) as e:
      log.warning('audio decode error in %s: %s (keeping the decoded part)', path, e)
    finally:
      frames.close()
      _release(stream)
  if not chunks or not sum(c.size for c in chunks):
    return np.zeros(0, np.int16), 0
  pcm = np.concatenate(chunks).astype(np.int16)
  first = max(first or 0.0, 0.0)
  lo = max(int(round((start - first) * out_rate)), 0)
  hi = None if stop is None else max(int(round((stop - first) * out_rate)), lo)
  return pcm[lo:hi], out_rate


_CODECS = {  # container extension -> (video codec, audio codec, pixel format)
    '.mp4': ('libx264', 'aac', 'yuv420p'),
    '.mkv': ('libx264', 'aac', 'yuv420p'),
    '.webm': ('libvpx', 'libopus', 'yuv420p'),
    '.avi': ('mpeg4', 'mp3', 'yuv420p'),
    '.wav': (None, 'pcm_s16le', None),   # audio-only containers (frames=None)
    '.flac': (None, 'flac', None),
    '.m4a': (None, 'aac', None),
}


def write_video(path: str, frames: np.ndarray | None, fps: int, audio: np.ndarray | None = None,
                audio_rate: int = 16000) -> None:
  """Writes uint8 [T, H, W, 3] frames (+ float mono audio in [-1, 1]) with PyAV.

  frames=None writes an audio-only file (a fixture for 'no video stream').
  """
  import os  # pylint: disable=g-import-not-at-top
  vcodec, acodec, pix = _CODECS[os.path.splitext(str(path))[1].lower()]
  if vcodec is None and frames is not None:
    raise ValueError(f'{path}: an audio-only container; pass frames=None')
  with av.open(str(path), mode='w') as out:
    vs = None
    if frames is not None:  # None: an audio-only file
      vs = out.add_stream(vcodec, rate=int(fps))
      vs.width, vs.height, vs.pix_fmt = frames.shape[2], frames.shape[1], pix
      if vcodec == 'libx264':
        vs.options = {'preset': 'ultrafast', 'crf': '18'}
    astream = None
    if audio is not None:
      if acodec == 'libopus' and audio_rate not in (8000, 12000, 16000, 24000, 48000):
        raise ValueError('opus needs 8/12/16/24/48 kHz')
      astream = out.add_stream(acodec, rate=audio_rate)
      astream.layout = 'mono'
    for f in (frames if vs is not None else []):
      for p in vs.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format='rgb24')):
        out.mux(p)
    for p in (vs.encode() if vs is not None else []):
      out.mux(p)
    if astream is not None:
      pcm = np.clip(np.round(np.asarray(audio) * 32767), -32768, 32767).astype(np.int16)
      fmt = astream.codec_context.format.name if astream.codec_context.format else 's16'
      resampler = av.AudioResampler(format=fmt, layout='mono', rate=audio_rate)
      block = 1024
      pts = 0
      for i in range(0, len(pcm), block):
        chunk = pcm[i:i + block][None]
        af = av.AudioFrame.from_ndarray(chunk, format='s16', layout='mono')
        af.sample_rate = audio_rate
        af.pts = pts
        pts += chunk.shape[1]
        for rf in resampler.resample(af):
          for p in astream.encode(rf):
            out.mux(p)
      for rf in resampler.resample(None):
        for p in astream.encode(rf):
          out.mux(p)
      for p in astream.encode():
        out.mux(p)
