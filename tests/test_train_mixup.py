"""Mixup in the real jitted train step of a tiny CA²ST: the video and the targets are mixed with one
λ per batch shard, the spectrogram only with config.train.mixup_audio (the reference's
--mixup_spec, off by default); an odd per-device micro-batch is refused at setup."""
import jax
import numpy as np
import pytest

import toy
from ca2st_jax.data.transforms import normalize_video_np
from ca2st_jax.models import fused
from ca2st_jax.train import mesh as mesh_lib
from ca2st_jax.train import trainer
from sources import InMemorySource
from tests_helpers import load_config

SHARDS, BATCH, CLASSES, SMOOTHING = 4, 8, 5, 0.1  # 2 clips per shard: each paired with the other


def _config(mixup_audio):
  cfg = load_config("ca2st_vggsound", "tiny")
  cfg.model.num_classes = CLASSES
  cfg.mesh.update(data=SHARDS, fsdp=1)
  cfg.train.update(batch_size=BATCH, total_steps=10, warmup_steps=1, accum_steps=1,
                   mixup_alpha=0.8, mixup_prob=1.0, label_smoothing=SMOOTHING)
  cfg.train.mixup_audio = mixup_audio
  return cfg


def _batch(model_cfg):
  r = np.random.RandomState(0)
  n, frames = BATCH, model_cfg.num_frames
  times = np.sort(r.uniform(0, 2, (n, 1 + frames // model_cfg.tubelet_size, 2)), -1)
  return {
      "video": r.randint(0, 256, (n, frames, model_cfg.image_size, model_cfg.image_size, 3)
                         ).astype(np.uint8),
      "audio": r.randn(n, model_cfg.spectrogram_length, model_cfg.num_mel_bins).astype(np.float32),
      "audio_times": times.astype(np.float32),
      # every clip's partner (its neighbour in the shard) has another class
      "label": np.array([0, 1, 2, 3, 4, 0, 1, 2], np.int32),
  }


def _one_step(mixup_audio, monkeypatch):
  """One train step; what reached the model (inputs and logits, seen from inside the jitted step)
  and the step's outputs."""
  seen = {}
  call = fused.CA2ST.__call__

  def spy(self, video, audio=None, audio_times=None, *, deterministic=True):
    out = call(self, video, audio, audio_times, deterministic=deterministic)
    jax.debug.callback(lambda v, a, o: seen.update(video=np.asarray(v), audio=np.asarray(a),
                                                   logits=np.asarray(o)),
                       video, audio, out["label"])
    return out

  monkeypatch.setattr(fused.CA2ST, "__call__", spy)
  cfg = _config(mixup_audio)
  setup = trainer.build_setup(cfg, devices=jax.devices()[:SHARDS])
  assert mesh_lib.num_batch_shards(setup.mesh) == SHARDS
  state, frozen, rest = setup.init_fn()
  state = dict(state, params=_random_head(state["params"]))
  batch = _batch(cfg.model)
  _, out = setup.train_step(state, frozen, rest, mesh_lib.global_batch(batch, setup.mesh))
  jax.effects_barrier()
  assert set(seen) == {"video", "audio", "logits"}, "the model was not called in the train step"
  return batch, seen, jax.device_get(out)


def _random_head(params):
  """Random last adapters and classifier: the initial ones (zero fc2 in the visual adapters)
  make the logits blind to the video, and a pair's two clips would weigh the mixed targets
  alike."""
  r = np.random.RandomState(1)

  def draw(path, x):
    name = jax.tree_util.keystr(path)
    if "last_adapter" in name or "['head']['kernel']" in name:
      return jax.device_put(r.randn(*x.shape).astype(np.float32), x.sharding)
    return x

  return jax.tree_util.tree_map_with_path(draw, params)


def _mixed(x, lam):
  """Each shard's rows mixed with their mirror in the shard: lam[s] x + (1 - lam[s]) flip(x)."""
  g = x.reshape(SHARDS, BATCH // SHARDS, *x.shape[1:]).astype(np.float64)
  l = lam.reshape(SHARDS, 1, *([1] * (x.ndim - 1)))
  return (l * g + (1 - l) * g[:, ::-1]).reshape(x.shape)


def _lambdas_from_video(video, seen_video):
  """Each shard's λ, read off the mixed video that reached the model (least squares)."""
  g = video.reshape(SHARDS, BATCH // SHARDS, -1).astype(np.float64)
  obs = seen_video.reshape(SHARDS, BATCH // SHARDS, -1).astype(np.float64)
  d = g - g[:, ::-1]
  return np.sum((obs - g[:, ::-1]) * d, axis=(1, 2)) / np.sum(d * d, axis=(1, 2))


def _smoothed_one_hot(y):
  off = SMOOTHING / CLASSES
  return np.where(np.arange(CLASSES) == y[:, None], 1 - SMOOTHING + off, off)


@pytest.mark.slow
@pytest.mark.parametrize("mixup_audio", [False, True])
def test_train_step_mixes_video_and_targets_and_audio_only_when_asked(mixup_audio, monkeypatch):
  batch, seen, out = _one_step(mixup_audio, monkeypatch)
  video = normalize_video_np(batch["video"])
  lam = _lambdas_from_video(video, seen["video"])
  # one λ per shard, drawn (alpha 0.8, prob 1), different in every shard
  assert np.all((lam > 0) & (lam < 1)) and len(np.unique(np.round(lam, 6))) == SHARDS, lam
  np.testing.assert_allclose(seen["video"], _mixed(video, lam), atol=2e-5)
  np.testing.assert_allclose(out["mixup_lambda"], lam.mean(), rtol=1e-5)

  if mixup_audio:  # the spectrogram with its shard's λ, the same as the video's
    np.testing.assert_allclose(seen["audio"], _mixed(batch["audio"], lam), atol=2e-5)
  else:  # the spectrogram as the batch had it
    np.testing.assert_array_equal(seen["audio"], batch["audio"])

  # The loss of the step is the cross-entropy of the model's logits against the smoothed mix of
  # each clip's and its partner's labels, with the shard's λ.
  y = batch["label"]
  partner = y.reshape(SHARDS, -1)[:, ::-1].reshape(-1)
  lam_row = np.repeat(lam, BATCH // SHARDS)[:, None]
  targets = lam_row * _smoothed_one_hot(y) + (1 - lam_row) * _smoothed_one_hot(partner)
  logits = seen["logits"].astype(np.float64)
  log_p = logits - logits.max(-1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
  want = np.mean(np.sum(-targets * log_p, -1))
  np.testing.assert_allclose(out["loss"], want, rtol=1e-5)
  unmixed = np.mean(np.sum(-_smoothed_one_hot(y) * log_p, -1))
  assert abs(want - unmixed) > 1e-2  # the targets' mix matters to this loss


@pytest.mark.parametrize("batch_size,data,accum", [(12, 4, 1), (8, 4, 2), (8, 8, 1)])
def test_odd_micro_batch_refused_with_mixup(batch_size, data, accum):
  cfg = toy.config(batch_size=batch_size, accum_steps=accum)
  mesh = mesh_lib.make_mesh(dict(data=data, fsdp=1), jax.devices()[:data])
  micro = batch_size // (data * accum)
  with pytest.raises(ValueError, match=rf"config.train.batch_size={batch_size} / {data} batch "
                     rf"shards \(config.mesh data x fsdp\) / config.train.accum_steps={accum} "
                     rf"= {micro}"):
    trainer.check_mixup_batch(cfg, mesh)
  cfg.train.mixup_prob = 0.0  # no mixup: any micro-batch
  trainer.check_mixup_batch(cfg, mesh)
  cfg = toy.config(batch_size=2 * batch_size, accum_steps=accum)  # even
  trainer.check_mixup_batch(cfg, mesh)


def test_odd_micro_batch_refused_before_training(tmp_path):
  cfg = toy.config(batch_size=8)  # on the 8 devices: 1 clip per device
  train, ev = toy.data()
  src = InMemorySource(train, ev, global_batch=8, eval_batch_size=8)
  with pytest.raises(ValueError, match="mixup needs an even per-device micro-batch"):
    trainer.train_and_evaluate(cfg, str(tmp_path), "train", source=src, model_lib=toy.LIB)
  assert not (tmp_path / "ckpt").exists() and not (tmp_path / "config.json").exists()
