"""Video and audio decoding with PyAV (build time), JPEG frames (read time), and a small writer.

Build time: `read_video` decodes every frame (optionally resampled to a lower fps) resized so its
short side is `short_side`, and returns JPEG bytes; `read_audio` decodes the audio track to mono
16-bit PCM at a chosen rate (libswresample), or an empty array when the file has no audio.
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
  jpegs: list          # JPEG bytes per stored frame
  times: np.ndarray    # seconds of each stored frame (presentation time - first frame's)
  fps: float           # stored frame rate
  duration: float      # seconds
  width: int
  height: int


def _open(path):
  try:
    return av.open(str(path))
  except Exception as e:  # pylint: disable=broad-except
    raise DecodeError(f'cannot open {path}: {e}') from e


def _seek(container, stream, start):
  """Seeks to the keyframe before `start` seconds (no-op near the beginning)."""
  if start > 1.0:
    try:
      offset = (stream.start_time or 0) * float(stream.time_base)
      container.seek(int((start + offset - 0.5) / float(stream.time_base)), stream=stream,
                     backward=True, any_frame=False)
    except av.FFmpegError:
      pass


def iter_frames(path: str, short_side: int = 0, fps: float = 0.0,
                start: float = 0.0) -> Iterator[tuple[float, Image.Image]]:
  """Yields (seconds from the stream start, PIL frame) of the kept frames from `start` on.

  Raises DecodeError if the file cannot be opened, has no video stream or no decodable frame.
  """
  container = _open(path)
  with container:
    if not container.streams.video:
      raise DecodeError(f'no video stream in {path}')
    stream = container.streams.video[0]
    stream.thread_type = 'AUTO'
    t0 = (stream.start_time or 0) * float(stream.time_base) if stream.time_base else 0.0
    _seek(container, stream, start)
    size = None
    next_t = start
    try:
      for frame in container.decode(stream):
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
    except (av.FFmpegError, ValueError) as e:
      if size is None:
        raise DecodeError(f'cannot decode {path}: {e}') from e
      log.warning('decode error after some frames in %s: %s (keeping the decoded part)', path, e)


def video_info(path: str) -> tuple[float, float]:
  """(native fps, duration seconds) from the container headers."""
  try:
    c = av.open(str(path))
  except Exception as e:  # pylint: disable=broad-except
    raise DecodeError(f'cannot open {path}: {e}') from e
  with c:
    if not c.streams.video:
      raise DecodeError(f'no video stream in {path}')
    s = c.streams.video[0]
    fps = float(s.average_rate or s.guessed_rate or 0) or 25.0
    dur = float(c.duration / av.time_base) if c.duration else 0.0
  return fps, dur


def read_video(path: str, short_side: int = 0, fps: float = 0.0, quality: int = 90,
               start: float = 0.0, stop: float | None = None) -> VideoFrames:
  """Decodes [start, stop) seconds of `path` into JPEG frames."""
  native_fps, _ = video_info(path)
  jpegs, times, size = [], [], (0, 0)
  for t, img in iter_frames(path, short_side, fps, start):
    if stop is not None and t >= stop:
      break
    jpegs.append(encode_jpeg(img, quality))
    times.append(t - start)
    size = img.size
  if not jpegs:
    raise DecodeError(f'no frames decoded from {path} in [{start}, {stop})')
  out_fps = float(fps) if fps and fps < native_fps else native_fps
  duration = len(jpegs) / out_fps
  return VideoFrames(jpegs, np.asarray(times, np.float32), out_fps, duration, size[0], size[1])


def read_audio(path: str, rate: int = 16000, start: float = 0.0,
               stop: float | None = None) -> tuple[np.ndarray, int]:
  """Mono int16 PCM of [start, stop) seconds of the first audio stream at `rate` (0: native).

  Returns an empty array and rate 0 when the file has no audio stream.
  """
  container = _open(path)
  with container:
    if not container.streams.audio:
      return np.zeros(0, np.int16), 0
    stream = container.streams.audio[0]
    out_rate = int(rate or stream.rate)
    t0 = (stream.start_time or 0) * float(stream.time_base) if stream.time_base else 0.0
    _seek(container, stream, start)
    resampler = av.AudioResampler(format='s16', layout='mono', rate=out_rate)
    chunks, first = [], None
    try:
      for frame in container.decode(stream):
        if first is None:
          first = (float(frame.time) if frame.time is not None else 0.0) - t0
        if stop is not None and frame.time is not None and float(frame.time) - t0 > stop + 0.1:
          break
        frame.pts = None
        for f in resampler.resample(frame):
          chunks.append(f.to_ndarray().reshape(-1))
      for f in resampler.resample(None):
        chunks.append(f.to_ndarray().reshape(-1))
    except (av.FFmpegError, ValueError) as e:
      log.warning('audio decode error in %s: %s (keeping the decoded part)', path, e)
  if not chunks:
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
}


def write_video(path: str, frames: np.ndarray | None, fps: int, audio: np.ndarray | None = None,
                audio_rate: int = 16000) -> None:
  """Writes uint8 [T, H, W, 3] frames (+ float mono audio in [-1, 1]) with PyAV.

  frames=None writes an audio-only file (a fixture for 'no video stream').
  """
  import os  # pylint: disable=g-import-not-at-top
  vcodec, acodec, pix = _CODECS[os.path.splitext(str(path))[1].lower()]
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
