"""Training loss: mixup + label-smoothing soft targets (the reference's util_tools/mixup.py) and
soft-target cross-entropy, summed over the heads (verb + noun for EK100).

Mixup as the reference draws it: one λ (and one coin for whether to mix at all) per GPU
micro-batch, each clip paired with its mirror in that micro-batch (`x.flip(0)`). Here the
micro-batch of one device is one batch shard (mesh data x fsdp) of one accumulation micro-batch,
so `mix_batch` draws λ per (shard, micro-batch) and pairs rows within the shard: no clip leaves
its device. The targets are always mixed; which inputs are is the caller's choice (`mix_keys`):
the reference's audio-visual runner mixes the video, and the spectrogram only with --mixup_spec
(config.train.mixup_audio), off by default and in every published script.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ca2st_jax import config_lib


def smoothed_one_hot(labels, num_classes, smoothing):
  off = smoothing / num_classes
  on = 1.0 - smoothing + off
  return jax.nn.one_hot(labels, num_classes) * (on - off) + off


def soft_targets(labels, partner_labels, lam, num_classes, smoothing):
  """mixup_target of the reference: lam * onehot_s(y) + (1 - lam) * onehot_s(partner's y).

  `lam` is per row ([B]) or a scalar.
  """
  lam = jnp.asarray(lam, jnp.float32)
  lam = lam[:, None] if lam.ndim else lam
  y1 = smoothed_one_hot(labels, num_classes, smoothing)
  y2 = smoothed_one_hot(partner_labels, num_classes, smoothing)
  return lam * y1 + (1.0 - lam) * y2


def soft_cross_entropy(logits, targets):
  return jnp.mean(jnp.sum(-targets * jax.nn.log_softmax(logits.astype(jnp.float32), -1), -1))


def mixup_lambdas(rng, shape, alpha, prob):
  """Batch-mode mixup per group: lam ~ Beta(alpha, alpha) with probability `prob`, else 1."""
  if not alpha or not prob:
    return jnp.ones(shape, jnp.float32)
  k1, k2 = jax.random.split(rng)
  lam = jax.random.beta(k1, alpha, alpha, shape).astype(jnp.float32)
  return jnp.where(jax.random.uniform(k2, shape) < prob, lam, 1.0)


def mix_batch(batch, rng, *, shards, accum, alpha, prob, mix_keys):
  """Mixup of a global batch, drawn per (batch shard, micro-batch) and paired within it.

  `batch` rows are laid out as the mesh shards them: shard s holds rows [s*n, (s+1)*n), and
  micro-batch a of the shard is its rows [a*m, (a+1)*m) with m = n / accum. Returns the batch
  reshaped to [accum, shards * m, ...] (micro-batch major, ready for a scan), with the inputs
  named in `mix_keys` mixed, per-row 'mixup_lambda' and each label's partner as 'partner_<key>'.
  """
  rows = next(iter(batch.values())).shape[0]
  m = rows // (shards * accum)
  lam = mixup_lambdas(rng, (shards, accum), alpha, prob)

  def grouped(x):  # [B, ...] -> [accum, shards, m, ...]
    return jnp.swapaxes(x.reshape(shards, accum, m, *x.shape[1:]), 0, 1)

  def flat(x):  # [accum, shards, m, ...] -> [accum, shards * m, ...]
    return x.reshape(accum, shards * m, *x.shape[3:])

  lam_g = jnp.swapaxes(lam, 0, 1)  # [accum, shards]
  out = {}
  for key, x in batch.items():
    g = grouped(x)
    if key in mix_keys:
      l = lam_g.reshape(accum, shards, 1, *([1] * (g.ndim - 3))).astype(g.dtype)
      g = l * g + (1.0 - l) * jnp.flip(g, axis=2)
    out[key] = flat(g)
    if key in config_lib.LABEL_KEYS:
      out[f"partner_{key}"] = flat(jnp.flip(g, axis=2))
  out["mixup_lambda"] = flat(jnp.broadcast_to(lam_g[:, :, None], (accum, shards, m)))
  return out, lam
