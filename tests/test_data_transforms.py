"""Video transforms: RandAugment consistent over frames, RRC, flip (off for SSv2), eval views."""
import ml_collections
import numpy as np
import pytest
import tests_helpers
from PIL import Image

from ca2st_jax import config_lib
from ca2st_jax.data import pipeline, transforms


def _frames(n=6, h=40, w=56, seed=0):
  rng = np.random.default_rng(seed)
  base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  out = []
  for t in range(n):   # different frames: a moving bright bar on a fixed random background
    f = base.copy()
    f[:, (5 * t) % w:(5 * t) % w + 4] = 255
    out.append(Image.fromarray(f))
  return out


def test_randaugment_is_one_transform_for_all_frames():
  frames = _frames()
  changed = 0
  for seed in range(60):
    clip = transforms.rand_augment(frames, np.random.default_rng(seed), 7, 4, 0.5)
    for i, f in enumerate(frames):   # the same draw applied to each frame alone
      alone = transforms.rand_augment([f], np.random.default_rng(seed), 7, 4, 0.5)[0]
      np.testing.assert_array_equal(np.asarray(clip[i]), np.asarray(alone))
    changed += not np.array_equal(np.asarray(clip[0]), np.asarray(frames[0]))
  assert changed > 30   # it does augment


def test_train_frames_identical_frames_stay_identical():
  frame = _frames(1)[0]
  for seed in range(30):
    out = transforms.train_frames([frame] * 4, np.random.default_rng(seed), crop_size=24)
    assert out.shape == (4, 24, 24, 3) and out.dtype == np.uint8
    assert all(np.array_equal(out[0], out[i]) for i in range(4))


def test_random_resized_crop_params_in_range():
  rng = np.random.default_rng(0)
  for _ in range(200):
    top, left, h, w = transforms.random_resized_crop_params(40, 56, rng)
    assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 56 and h > 0 and w > 0
  # impossible scale -> centre fallback clamped to the ratio range
  assert transforms.random_resized_crop_params(10, 100, rng, scale=(5.0, 5.0)) == (0, 43, 10, 13)


def _flipped_count(flip, seeds=40):
  frames = _frames(2)
  n = 0
  for seed in range(seeds):
    kw = dict(crop_size=40, scale=(1.0, 1.0), ratio=(56 / 40, 56 / 40), randaugment='')
    a = transforms.train_frames(frames, np.random.default_rng(seed), flip=flip, **kw)
    plain = transforms.train_frames(frames, np.random.default_rng(seed), flip=False, **kw)
    if not np.array_equal(a, plain):
      np.testing.assert_array_equal(a, plain[:, :, ::-1])
      n += 1
  return n


def test_flip_happens_and_is_off_for_ssv2():
  assert 5 < _flipped_count(True) < 35
  assert _flipped_count(False) == 0
  mk = lambda name: ml_collections.ConfigDict(dict(
      data=config_lib.data_config(name=name), model=config_lib.model_config('cast')))
  assert pipeline.clip_options(mk('ssv2')).flip is False
  assert pipeline.clip_options(mk('kinetics400')).flip is True


@pytest.mark.parametrize('size', [(40, 56), (56, 40)])
def test_eval_views_deterministic_three_crops_along_long_side(size):
  h, w = size
  frames = [Image.fromarray(np.tile(np.arange(w, dtype=np.uint8)[None, :, None] * 4
                                    + np.arange(h, dtype=np.uint8)[:, None, None],
                                    (1, 1, 3)))] * 2
  crops = [transforms.eval_frames(frames, short_side=20, crop_index=k, num_crops=3)
           for k in range(3)]
  again = [transforms.eval_frames(frames, short_side=20, crop_index=k, num_crops=3)
           for k in range(3)]
  for a, b in zip(crops, again):
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 20, 20, 3)
  assert not np.array_equal(crops[0], crops[2])
  resized = np.asarray(transforms.resize_short_side(frames, 20)[0])
  long_side = max(resized.shape[:2])
  for k, c in enumerate(crops):
    start = int(k * (long_side - 20) / 2)
    ref = resized[start:start + 20] if h > w else resized[:, start:start + 20]
    np.testing.assert_array_equal(c[0], ref)


def test_normalize_video_imagenet():
  v = np.full((1, 2, 2, 2, 3), 255, np.uint8)
  out = np.asarray(transforms.normalize_video(v))
  np.testing.assert_allclose(out[0, 0, 0, 0], (1 - np.array(transforms.IMAGENET_MEAN))
                             / np.array(transforms.IMAGENET_STD), rtol=1e-6)


@pytest.mark.parametrize('op', ['Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel'])
def test_opencv_warps_match_pil(op, monkeypatch):
  pytest.importorskip('cv2')
  yy, xx = np.mgrid[:48, :64]
  img = (128 + 60 * np.sin(xx / 5.0)[..., None] * np.cos(yy / 7.0)[..., None]
         * np.ones(3)).astype(np.uint8)
  res = {}
  for use in (False, True):
    monkeypatch.setattr(transforms, 'USE_CV2', use)
    res[use] = np.asarray(transforms._apply_op(op, [Image.fromarray(img)], 7.0,
                                               np.random.default_rng(0), Image.BICUBIC)[0])
  diff = np.abs(res[True].astype(float) - res[False])[8:-8, 8:-8]
  assert diff.mean() < 1.5          # a half-pixel misalignment gives > 3 here


def test_randaugment_consistent_on_pil_path_too(monkeypatch):
  monkeypatch.setattr(transforms, 'USE_CV2', False)
  test_randaugment_is_one_transform_for_all_frames()


def test_eval_views_keep_the_authors_arithmetic_for_a_4_3_source(tmp_path):
  """A 640x480 source: the authors resize it to int(224 * 640 / 480) = 298 x 224 and crop at
  int(k * (298 - 224) / 2) = 0, 37, 74. The build stores it at 342x256 (256 * 4 / 3 = 341.3,
  rounded up to even), whose own aspect would give int(224 * 342 / 256) = 299 and a last crop
  at 75. With the source size the stored frames give the authors' sizes and crops."""
  from ca2st_jax.data import decode  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  source = rng.integers(0, 256, (2, 480, 640, 3), np.uint8)
  path = str(tmp_path / 'src.mp4')
  decode.write_video(path, source, 4)
  stored = decode.read_video(path, short_side=256)
  assert (stored.width, stored.height) == (342, 256)
  assert (stored.source_width, stored.source_height) == (640, 480)
  frames = decode.decode_jpegs(stored.jpegs)
  resized = transforms.resize_short_side(frames, 224, (640, 480))
  assert resized[0].size == (298, 224)
  assert transforms.resize_short_side(frames, 224)[0].size == (299, 224)  # the stored aspect's
  resized = np.stack([np.asarray(f) for f in resized])
  record = dict(frames=stored.jpegs, fps=np.float32(stored.fps), source_size=np.int32([640, 480]),
                audio=np.zeros(0, np.int16), audio_rate=0, has_audio=False, label=0)
  opts = tests_helpers.clip_options(num_frames=2, frame_stride=1, eval_short_side=224, crop_size=224,
                                    sampling='dense', with_audio=False)
  for crop, start in enumerate([0, 37, 74]):
    view = pipeline.eval_clip(record, 0, crop, opts, 1, 3)['video']
    np.testing.assert_array_equal(view, resized[:, :, start:start + 224])
  # a portrait source (480x640) crops along the height the same way
  upright = [Image.fromarray(np.asarray(f).transpose(1, 0, 2)) for f in frames]
  resized = transforms.resize_short_side(upright, 224, (480, 640))
  assert resized[0].size == (224, 298)
  view = transforms.eval_frames(upright, short_side=224, crop_index=2, num_crops=3,
                                source_size=(480, 640))
  np.testing.assert_array_equal(view, np.stack([np.asarray(f) for f in resized])[:, 74:298])
