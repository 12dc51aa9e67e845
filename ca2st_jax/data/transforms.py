"""Video transforms on uint8 frames (PIL), the train/eval spatial recipe of the authors' code.

Train (the reference's `_aug_frame`): RandAugment `rand-m7-n4-mstd0.5-inc1` on the decoded frames
with ONE draw of ops/magnitudes/signs for the whole clip, then RandomResizedCrop (scale (0.08, 1),
ratio (3/4, 4/3), log-uniform ratio, 10 tries then centre fallback, as VideoMAE's
`_get_param_spatial_crop`) to `crop_size`, then horizontal flip with p 0.5 (off for SSv2).
Eval: resize the short side to `short_side` (bilinear), then view `k` of `num_crops` crops
`short_side` pixels along the long side starting at `int(k * (long - short) / (num_crops - 1))`
(one crop: the centre crop). Normalisation is done on device by `normalize_video`.
"""

from __future__ import annotations

import math
import os
import re

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

try:  # OpenCV, when installed, runs the geometric warps ~10x faster than PIL (same maps).
  import cv2  # pylint: disable=g-import-not-at-top
  cv2.setNumThreads(1)
except ImportError:  # pragma: no cover
  cv2 = None
USE_CV2 = cv2 is not None and not os.environ.get('CA2ST_NO_OPENCV')

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_FILL = (128, 128, 128)
_MAX_LEVEL = 10.0


def normalize_video(video, dtype=None):
  """uint8 [..., 3] RGB -> ImageNet-normalised float (jax; runs inside the jitted step)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  dtype = dtype or jnp.float32
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32) * 255.0
  std = jnp.asarray(IMAGENET_STD, jnp.float32) * 255.0
  return ((jnp.asarray(video, jnp.float32) - mean) / std).astype(dtype)


def normalize_video_np(video: np.ndarray) -> np.ndarray:
  mean = np.asarray(IMAGENET_MEAN, np.float32) * 255.0
  std = np.asarray(IMAGENET_STD, np.float32) * 255.0
  return (video.astype(np.float32) - mean) / std


# ----------------------------------------------------------------------------- RandAugment
# Op semantics follow timm's auto_augment (used by the reference's util_tools/rand_augment.py),
# 'increasing' variants (inc1). Each op fires with p 0.5; magnitude ~ N(m, mstd) clipped to
# [0, 10]; signed ops are negated with p 0.5. One draw applies to every frame of the clip.

def _sign(rng):
  return -1.0 if rng.random() > 0.5 else 1.0


def _affine(frames, matrix, resample):
  """PIL's `transform(AFFINE, matrix)` (output pixel centre -> input position), or the same map
  through cv2.warpAffine (pixel centres at integers there, hence the half-pixel shift)."""
  if not USE_CV2:
    return [f.transform(f.size, Image.AFFINE, matrix, resample=resample, fillcolor=_FILL)
            for f in frames]
  a, b, c, d, e, f = matrix
  m = np.array([[a, b, c + 0.5 * (a + b) - 0.5], [d, e, f + 0.5 * (d + e) - 0.5]], np.float64)
  flags = _CV_INTERP[resample] | cv2.WARP_INVERSE_MAP
  w, h = frames[0].size
  return [Image.fromarray(cv2.warpAffine(np.asarray(fr), m, (w, h), flags=flags,
                                         borderMode=cv2.BORDER_CONSTANT, borderValue=_FILL))
          for fr in frames]


def _rotate(frames, degrees, resample):
  """PIL's `Image.rotate(degrees)` (counter-clockwise about the centre, same size) as an affine."""
  w, h = frames[0].size
  angle = -math.radians(degrees)
  m = [round(math.cos(angle), 15), round(math.sin(angle), 15), 0.0,
       round(-math.sin(angle), 15), round(math.cos(angle), 15), 0.0]
  cx, cy = w / 2.0, h / 2.0
  m[2] = m[0] * -cx + m[1] * -cy + cx
  m[5] = m[3] * -cx + m[4] * -cy + cy
  return _affine(frames, tuple(m), resample)


def _solarize_add(img, add, thresh=128):
  lut = [min(255, i + add) if i < thresh else i for i in range(256)]
  return img.point(lut * 3)


_RESAMPLE = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC, 'nearest': Image.NEAREST}
_CV_INTERP = ({Image.BILINEAR: cv2.INTER_LINEAR, Image.BICUBIC: cv2.INTER_CUBIC,
               Image.NEAREST: cv2.INTER_NEAREST} if cv2 is not None else {})


def _apply_op(name, frames, level, rng, resample):
  """Applies op `name` at magnitude `level` in [0, 10] to every frame (one parameter draw)."""
  m = level / _MAX_LEVEL
  if name == 'AutoContrast':
    return [ImageOps.autocontrast(f) for f in frames]
  if name == 'Equalize':
    return [ImageOps.equalize(f) for f in frames]
  if name == 'Invert':
    return [ImageOps.invert(f) for f in frames]
  if name == 'Rotate':
    return _rotate(frames, m * 30.0 * _sign(rng), resample)
  if name == 'PosterizeIncreasing':
    bits = 4 - int(m * 4)
    return frames if bits >= 8 else [ImageOps.posterize(f, bits) for f in frames]
  if name == 'SolarizeIncreasing':
    thresh = 256 - int(m * 256)
    return [ImageOps.solarize(f, thresh) for f in frames]
  if name == 'SolarizeAdd':
    add = int(m * 110)
    return [_solarize_add(f, add) for f in frames]
  if name in ('ColorIncreasing', 'ContrastIncreasing', 'BrightnessIncreasing',
              'SharpnessIncreasing'):
    factor = 1.0 + m * 0.9 * _sign(rng)
    enh = {'ColorIncreasing': ImageEnhance.Color, 'ContrastIncreasing': ImageEnhance.Contrast,
           'BrightnessIncreasing': ImageEnhance.Brightness,
           'SharpnessIncreasing': ImageEnhance.Sharpness}[name]
    return [enh(f).enhance(factor) for f in frames]
  if name == 'ShearX':
    s = m * 0.3 * _sign(rng)
    return _affine(frames, (1, s, 0, 0, 1, 0), resample)
  if name == 'ShearY':
    s = m * 0.3 * _sign(rng)
    return _affine(frames, (1, 0, 0, s, 1, 0), resample)
  if name == 'TranslateXRel':
    px = m * 0.45 * _sign(rng) * frames[0].size[0]
    return _affine(frames, (1, 0, px, 0, 1, 0), resample)
  if name == 'TranslateYRel':
    px = m * 0.45 * _sign(rng) * frames[0].size[1]
    return _affine(frames, (1, 0, 0, 0, 1, px), resample)
  raise ValueError(name)


RAND_OPS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing',
            'SolarizeIncreasing', 'SolarizeAdd', 'ColorIncreasing', 'ContrastIncreasing',
            'BrightnessIncreasing', 'SharpnessIncreasing', 'ShearX', 'ShearY',
            'TranslateXRel', 'TranslateYRel')


def parse_randaugment(spec: str):
  """'rand-m7-n4-mstd0.5-inc1' -> (magnitude, num_ops, magnitude_std)."""
  if not spec:
    return None
  parts = spec.split('-')
  if parts[0] != 'rand':
    raise ValueError(f'only rand-* policies are supported, got {spec!r}')
  mag, num, mstd = 10.0, 2, 0.0
  for p in parts[1:]:
    key, val = re.match(r'([a-z]+)([\d.]+)', p).groups()
    if key == 'm':
      mag = float(val)
    elif key == 'n':
      num = int(val)
    elif key == 'mstd':
      mstd = float(val)
    elif key == 'inc':
      if int(val) != 1:
        raise ValueError('only the increasing (inc1) op set is implemented')
  return mag, num, mstd


def rand_augment(frames, rng: np.random.Generator, magnitude=7.0, num_ops=4, magnitude_std=0.5,
                 interpolation='bicubic'):
  """RandAugment over a list of PIL frames, the same ops and parameters for every frame."""
  resample = _RESAMPLE[interpolation]
  ops = rng.choice(len(RAND_OPS), size=num_ops, replace=True)
  for op in ops:
    if rng.random() > 0.5:  # each op fires with probability 0.5
      continue
    level = magnitude
    if magnitude_std > 0:
      level = rng.normal(magnitude, magnitude_std)
    level = min(_MAX_LEVEL, max(0.0, level))
    frames = _apply_op(RAND_OPS[op], frames, level, rng, resample)
  return frames


# ----------------------------------------------------------------------------- crops

def random_resized_crop_params(height, width, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                               tries=10):
  """(top, left, h, w) as VideoMAE's `_get_param_spatial_crop` (log-uniform ratio)."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(tries):
    target_area = rng.uniform(*scale) * area
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


def train_frames(frames, rng: np.random.Generator, *, crop_size=224, scale=(0.08, 1.0),
                 ratio=(3 / 4, 4 / 3), flip=True, randaugment='rand-m7-n4-mstd0.5-inc1',
                 interpolation='bicubic', randaugment_after_crop=False) -> np.ndarray:
  """list of PIL RGB frames -> uint8 [F, crop, crop, 3] with the train augmentation.

  The reference order is RandAugment on the decoded frames, then the crop.
  `randaugment_after_crop` runs it on the crop_size crops instead (same ops and magnitudes;
  translate/rotate then refer to the crop): fewer pixels, faster, not the reference order.
  """
  ra = parse_randaugment(randaugment)
  if ra is not None and not randaugment_after_crop:
    frames = rand_augment(frames, rng, *ra, interpolation=interpolation)
  width, height = frames[0].size
  top, left, h, w = random_resized_crop_params(height, width, rng, scale, ratio)
  if USE_CV2:  # bilinear without antialiasing, like the reference's F.interpolate
    out = np.stack([cv2.resize(np.asarray(f)[top:top + h, left:left + w],
                               (crop_size, crop_size), interpolation=cv2.INTER_LINEAR)
                    for f in frames])
  else:
    box = (left, top, left + w, top + h)
    out = np.stack([np.asarray(f.resize((crop_size, crop_size), Image.BILINEAR, box=box))
                    for f in frames])
  if ra is not None and randaugment_after_crop:
    out = np.stack([np.asarray(f) for f in rand_augment(
        [Image.fromarray(f) for f in out], rng, *ra, interpolation=interpolation)])
  if flip and rng.random() < 0.5:
    out = out[:, :, ::-1]
  return np.ascontiguousarray(out)


def resize_short_side(frames, short_side, source_size=None):
  """The reference's `Resize(short_side)` (util_tools/functional.py `get_resize_sizes`): long
  side `int(short * long / short_in)`, bilinear (cv2.INTER_LINEAR as the reference when OpenCV
  is installed, else PIL's bilinear).

  `source_size` (width, height) is the source video's frame size: the authors resize the decoded
  source, we the frames the build stored at its own (even) short side, whose aspect differs by a
  rounding (a 640x480 source is stored at 342x256: 299 px long at 224 instead of the authors'
  298). The output size is computed from the source's, so sizes and crops are the authors'.
  Without it (data built before the `source_size` feature), the stored frames' own aspect."""
  width, height = source_size if source_size is not None else frames[0].size
  if width < height:
    size = (short_side, int(short_side * height / width))
  else:
    size = (int(short_side * width / height), short_side)
  if tuple(frames[0].size) == size:
    return frames
  if USE_CV2:
    return [Image.fromarray(cv2.resize(np.asarray(f), size, interpolation=cv2.INTER_LINEAR))
            for f in frames]
  return [f.resize(size, Image.BILINEAR) for f in frames]


def eval_frames(frames, *, short_side=224, crop_index=0, num_crops=1,
                source_size=None) -> np.ndarray:
  """list of PIL frames -> uint8 [F, short, short, 3]: resize short side (with the aspect of
  `source_size`, see resize_short_side), crop view `crop_index`."""
  frames = resize_short_side(frames, short_side, source_size)
  width, height = frames[0].size
  long_side = max(width, height)
  if num_crops > 1:
    start = int(crop_index * (long_side - short_side) / (num_crops - 1))
  else:
    start = int(round((long_side - short_side) / 2.0))
  if height >= width:
    box = (0, start, short_side, start + short_side)
  else:
    box = (start, 0, start + short_side, short_side)
  return np.stack([np.asarray(f.crop(box)) for f in frames])
