"""A tiny stand-in with the models API (build, TRAINABLE, layer_id) for the trainer tests.

Same shape of parameter tree as the real models: a frozen expert `spatial` (embed, blocks, trainable
ln_post), per-block trainable adapters in `layers[i]`, a head and dropout. Small enough that the
mesh-equivalence and resume tests compile in about a second each.
"""
import types

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx


class Expert(nnx.Module):
  def __init__(self, in_dim, width, depth, rngs):
    self.embed = nnx.Linear(in_dim, width, rngs=rngs)
    self.pos_embed = nnx.Param(jnp.zeros((1, 4, width)))
    self.blocks = nnx.List([nnx.Linear(width, width, rngs=rngs) for _ in range(depth)])
    self.ln_post = nnx.LayerNorm(width, rngs=rngs)


class Adapter(nnx.Module):
  def __init__(self, width, rngs):
    self.fc1 = nnx.Linear(width, 8, rngs=rngs)
    self.fc2 = nnx.Linear(8, width, rngs=rngs)

  def __call__(self, x):
    return self.fc2(jnp.tanh(self.fc1(x)))


class Toy(nnx.Module):
  def __init__(self, cfg, rngs):
    in_dim = cfg.image_size * cfg.image_size * 3
    self.spatial = Expert(in_dim, cfg.width, cfg.depth, rngs)
    self.layers = nnx.List([Adapter(cfg.width, rngs) for _ in range(cfg.depth)])
    self.head_dropout = nnx.Dropout(0.2, rngs=rngs)
    if cfg.get("compositional", False):
      self.verb_head = nnx.Linear(cfg.width, cfg.num_verbs, rngs=rngs)
      self.noun_head = nnx.Linear(cfg.width, cfg.num_nouns, rngs=rngs)
    else:
      self.head = nnx.Linear(cfg.width, cfg.num_classes, rngs=rngs)
    self.audio_proj = nnx.Linear(1, cfg.width, rngs=rngs)

  def __call__(self, video, audio=None, audio_times=None, *, deterministic=True):
    b, f = video.shape[:2]
    x = self.spatial.embed(video.reshape(b, f, -1)) + self.spatial.pos_embed[...][:, :f]
    if audio is not None:
      x = x + self.audio_proj(audio.mean(axis=(1, 2))[:, None])[:, None]
    for block, layer in zip(self.spatial.blocks, self.layers):
      x = x + jnp.tanh(block(x)) + layer(x)
    feat = self.spatial.ln_post(x.mean(1))
    feat = self.head_dropout(feat, deterministic=deterministic)
    if hasattr(self, "verb_head"):
      return {"verb": self.verb_head(feat), "noun": self.noun_head(feat)}
    return {"label": self.head(feat)}


def _trainable(path, _):
  path = tuple(str(p) for p in path)
  return path[0] != "spatial" or path[:2] == ("spatial", "ln_post")


def layer_id(path, depth):
  path = tuple(str(p) for p in path)
  for c in ("layers", "blocks"):
    if c in path:
      return int(path[path.index(c) + 1]) + 1
  if path[0] == "spatial" and path[1] in ("embed", "pos_embed"):
    return 0
  return depth + 1


LIB = types.SimpleNamespace(
    build=lambda cfg, rngs: Toy(cfg, rngs),
    TRAINABLE=nnx.All(nnx.Param, _trainable),
    layer_id=layer_id,
)


def config(**train):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(name="toy", width=16, depth=2, image_size=4, num_frames=4, num_classes=5,
                 num_verbs=3, num_nouns=4, compositional=False)
  c.data = dict(name="in_memory", eval_batch_size=8)
  c.mesh = dict(data=-1, fsdp=1, fsdp_min_size=0)
  c.train = dict(batch_size=16, total_steps=3, warmup_steps=1, accum_steps=1, mixup_alpha=0.8,
                 mixup_prob=1.0, label_smoothing=0.1, log_every=1, ckpt_every=100, eval_every=0)
  c.train.update(train)
  c.optim = dict(lr=0.05, min_lr=1e-4, warmup_lr=0.0, weight_decay=0.05, layer_decay=0.75,
                 clip_grad_norm=1.0)
  c.eval = dict(best_metric="top1")
  c.ckpt = dict(keep=2)
  return c


def data(n_train=32, n_eval=10, classes=5, seed=0, audio=False, compositional=False):
  r = np.random.RandomState(seed)
  def make(n):
    y = r.randint(0, classes, n).astype(np.int32)
    video = r.randint(0, 255, (n, 4, 4, 4, 3)).astype(np.uint8)
    video[..., 0] = (y * 50)[:, None, None, None]  # learnable signal in the red channel
    d = {"video": video}
    if compositional:
      d["verb"], d["noun"] = y % 3, y % 4
    else:
      d["label"] = y
    if audio:
      d["audio"] = r.randn(n, 8, 4).astype(np.float32)
    return d
  train = make(n_train)
  ev = make(n_eval)
  # two views per eval video
  ev = {k: np.concatenate([v, v]) for k, v in ev.items()}
  ev["video_index"] = np.concatenate([np.arange(n_eval), np.arange(n_eval)]).astype(np.int32)
  return train, ev
