"""Model structure tests: zero-init, B-CA windows, the trainable set, jit, dtypes, drop path."""
import functools
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ca2st_jax import config_lib, models
from ca2st_jax.interop import torch_mapping
from ca2st_jax.models import bca
from ca2st_jax.models import layers

REFERENCE = pathlib.Path(__file__).resolve().parent / 'fixtures' / 'reference'
BATCH = 2


from tests_helpers import run_compiled
from tests_helpers import tiny_model_config as tiny


def inputs(cfg, seed=0):
  keys = jax.random.split(jax.random.key(seed), 2)
  video = jax.random.normal(keys[0], (BATCH, cfg.num_frames, cfg.image_size, cfg.image_size, 3))
  audio = jax.random.normal(keys[1], (BATCH, cfg.spectrogram_length, cfg.num_mel_bins))
  slots = cfg.num_frames // cfg.tubelet_size
  starts = jnp.arange(slots + 1, dtype=jnp.float32) * 0.5
  audio_times = jnp.broadcast_to(jnp.stack([starts, starts + 0.5], -1), (BATCH, slots + 1, 2))
  return dict(video=video, audio=audio, audio_times=audio_times)


def randomize(module, seed=1, scale=0.2):
  """Gives every trainable parameter (zero-initialised ones included) a random value."""
  state = nnx.state(module, models.TRAINABLE)
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  new = [scale * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
  nnx.update(module, jax.tree.unflatten(treedef, new))


def count(state):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))


@pytest.mark.parametrize('name', [pytest.param('cast', marks=pytest.mark.slow),
                                  pytest.param('cast_compositional', marks=pytest.mark.slow),
                                  pytest.param('cava', marks=pytest.mark.slow), 'ca2st'])
def test_zero_init_experts_unchanged(name):
  """At init, each expert's pooled feature inside the model equals the expert run alone."""
  cfg = tiny(name, audio_exchange_start=0)
  model = models.build(cfg, rngs=nnx.Rngs(0))
  batch = inputs(cfg)
  video_only = name.startswith('cast')
  # Compiled once each, not run op by op.
  features = nnx.jit(lambda m, b: m.features(b['video']) if video_only else m.features(**b))
  fused = features(model, batch)
  if video_only:
    experts = ((model.spatial, 'video'), (model.temporal, 'video'))
  elif name == 'cava':
    experts = ((model.audio, 'audio'), (model.spatial, 'video'))
  else:
    experts = ((model.spatial, 'video'), (model.temporal, 'video'), (model.audio, 'audio'))
  alone = [run_compiled(expert, batch[key]) for expert, key in experts]
  for inside, outside in zip(fused, alone):
    np.testing.assert_allclose(inside, outside, atol=1e-5, rtol=1e-5)
  # Non-trivial only if the exchanges would change the features once trained.
  randomize(model)
  changed = features(model, batch)
  assert not np.allclose(changed[0], fused[0], atol=1e-3)


def _space_time_exchange(seed=0):
  cfg = tiny('cast')
  exchange = bca.SpaceTimeExchange(cfg, dtype=jnp.float32, rngs=nnx.Rngs(seed))
  randomize(exchange)
  slots = cfg.num_frames // cfg.tubelet_size
  patches = (cfg.image_size // cfg.patch_size) ** 2
  keys = jax.random.split(jax.random.key(seed), 2)
  spatial = jax.random.normal(keys[0], (BATCH * slots, 1 + patches, cfg.width))
  temporal = jax.random.normal(keys[1], (BATCH, slots * patches, cfg.width))
  return exchange, spatial, temporal, slots, patches


def _changed(a, b):
  return np.abs(np.asarray(a) - np.asarray(b)).max(axis=-1) > 1e-6


def test_windows_temporal_perturbation():
  exchange, spatial, temporal, slots, patches = _space_time_exchange()
  base_s, base_t = run_compiled(exchange, spatial, temporal)
  k, p = 2, 1  # temporal token of slot k at patch position p, batch 0
  perturbed = temporal.at[0, k * patches + p].add(3.0)
  new_s, new_t = run_compiled(exchange, spatial, perturbed)

  # T2S: spatial tokens at position p change in every frame of sample 0, nothing else.
  changed_s = _changed(new_s, base_s).reshape(BATCH, slots, 1 + patches)
  expected_s = np.zeros_like(changed_s)
  expected_s[0, :, 1 + p] = True
  np.testing.assert_array_equal(changed_s, expected_s)
  # S2T: only the perturbed token itself (as a query) changes among temporal updates.
  changed_t = _changed(new_t, base_t)
  expected_t = np.zeros_like(changed_t)
  expected_t[0, k * patches + p] = True
  np.testing.assert_array_equal(changed_t, expected_t)


def test_windows_spatial_perturbation():
  exchange, spatial, temporal, slots, patches = _space_time_exchange()
  base_s, base_t = run_compiled(exchange, spatial, temporal)
  f, p = 1, 2  # spatial patch p of frame f, sample 1
  perturbed = spatial.at[1 * slots + f, 1 + p].add(3.0)
  new_s, new_t = run_compiled(exchange, perturbed, temporal)
  # T2S: only that spatial token (as a query) changes.
  changed_s = _changed(new_s, base_s)
  expected_s = np.zeros_like(changed_s)
  expected_s[1 * slots + f, 1 + p] = True
  np.testing.assert_array_equal(changed_s, expected_s)
  # S2T: every temporal token of slot f of sample 1 changes, no other slot.
  changed_t = _changed(new_t, base_t).reshape(BATCH, slots, patches)
  expected_t = np.zeros_like(changed_t)
  expected_t[1, f, :] = True
  np.testing.assert_array_equal(changed_t, expected_t)


def test_class_token_outside_attention():
  exchange, spatial, temporal, slots, _ = _space_time_exchange()
  base_s, base_t = run_compiled(exchange, spatial, temporal)
  # The class token takes no part in T2S or S2T: perturbing temporal tokens leaves its update alone...
  new_s, _ = run_compiled(exchange, spatial, temporal + 1.0)
  np.testing.assert_array_equal(new_s[:, 0], base_s[:, 0])
  # ...its update is up(GELU(LN(down(cls)))) ...
  low = exchange.spatial_norm(exchange.spatial_down(spatial[:, :1]))
  np.testing.assert_allclose(base_s[:, :1], exchange.spatial_up(jax.nn.gelu(low, approximate=False)),
                             atol=1e-6)
  # ...and it is no key for S2T.
  _, new_t = run_compiled(exchange, spatial.at[:, 0].add(5.0), temporal)
  np.testing.assert_array_equal(new_t, base_t)


def _reference_counts(tsv):
  """(trained count per block, trained count outside blocks, frozen total) of a reference key list."""
  blocks, top, frozen = {}, 0, 0
  for line in open(f'{REFERENCE}/{tsv}'):
    if line.startswith('#'):
      continue
    key, shape, flag = line.rstrip('\n').split('\t')
    n = math.prod(eval(shape))  # shapes are written as Python tuples
    if flag == 'F':
      frozen += n
    elif key.startswith('blocks.'):
      i = int(key.split('.')[1])
      blocks[i] = blocks.get(i, 0) + n
    else:
      top += n
  return blocks, top, frozen


def _shared_per_layer(cfg, name, layer):
  """Parameters the reference lists twice in a CA²ST layer with shared projections: the
  visual down/up of both audio pairs and the audio down/up of the second pair."""
  if (models.family(name) != 'ca2st' or not cfg.share_exchange_projections
      or layer < cfg.audio_exchange_start):
    return 0
  width, dim = cfg.width, cfg.bottleneck_dim
  return 3 * (width * dim + dim) + 3 * (dim * width + width)


def _per_layer_counts(trainable):
  """{model layer i: its parameter count} from the stacked layer groups: slice k of `layers` is
  layer k; CA²ST's `audio_exchange_layers` holds the layers after those."""
  counts = {}
  for group in ('layers', 'audio_exchange_layers'):
    if group not in trainable:
      continue
    leaves = jax.tree.leaves(trainable[group])
    for _ in range(leaves[0].shape[0]):
      counts[len(counts)] = sum(math.prod(x.shape[1:]) for x in leaves)
  return counts


@pytest.mark.slow
@pytest.mark.parametrize('tsv,name,overrides', [
    ('official_keys_cast_k400.tsv', 'cast', dict(num_classes=400)),
    ('official_keys_cast_ek100.tsv', 'cast_compositional', {}),
    ('authors_keys_cava_vggsound_t1024.tsv', 'cava', dict(num_classes=309)),
    ('authors_keys_cava_epicsounds_t400.tsv', 'cava', dict(num_classes=44, spectrogram_length=400)),
    ('authors_keys_ca2st_ca9_shared_vggsound_t1024.tsv', 'ca2st', dict(num_classes=309)),
    ('authors_keys_cava_compo_ek100_t400.tsv', 'cava_compositional', dict(spectrogram_length=400)),
    ('authors_keys_ca2st_compo_ca9_shared_ek100_t400.tsv', 'ca2st_compositional',
     dict(spectrogram_length=400)),
])
def test_trainable_set_matches_reference(tsv, name, overrides, abstract_model):
  """Per block and outside the blocks, the trainable filter selects exactly as many parameters
  as the reference marks trained; everything else is frozen."""
  cfg = config_lib.model_config(name, **overrides)
  model = abstract_model(cfg)
  trainable = nnx.state(model, models.TRAINABLE)
  ref_blocks, ref_top, ref_frozen = _reference_counts(tsv)
  per_layer = _per_layer_counts(trainable)
  assert per_layer == {i: ref_blocks[i] - _shared_per_layer(cfg, name, i) for i in range(cfg.depth)}
  assert count(trainable) - sum(per_layer.values()) == ref_top
  assert count(nnx.state(model, models.FROZEN)) == ref_frozen


def test_jit_traces_once_and_dtypes():
  for dtype in ('float32', 'bfloat16'):
    cfg = tiny('ca2st', dtype=dtype)
    model = models.build(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    traces = []

    @jax.jit
    def forward(state, batch):
      traces.append(1)
      return nnx.merge(graphdef, state)(**batch)['label']

    for seed in range(3):
      logits = forward(state, inputs(cfg, seed))
    assert len(traces) == 1
    assert logits.dtype == jnp.dtype(dtype)
    assert np.isfinite(np.asarray(logits, np.float32)).all()
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)


@pytest.mark.slow
def test_drop_path_only_in_training():
  cfg = tiny('cast', drop_path=0.5, head_dropout=0.5)
  model = models.build(cfg, rngs=nnx.Rngs(0))
  randomize(model)
  video = inputs(cfg)['video']
  run = nnx.jit(lambda m, v, deterministic: m(v, deterministic=deterministic)['label'],
                static_argnames='deterministic')
  eval_1 = run(model, video, deterministic=True)
  eval_2 = run(model, video, deterministic=True)
  np.testing.assert_array_equal(eval_1, eval_2)
  # Same weights without drop path give the same eval output...
  plain = models.build(tiny('cast'), rngs=nnx.Rngs(0))
  nnx.update(plain, nnx.state(model, nnx.Param))
  np.testing.assert_allclose(run(plain, video, deterministic=True), eval_1, atol=1e-6)
  # ...and training mode is stochastic.
  train_1 = run(model, video, deterministic=False)
  train_2 = run(model, video, deterministic=False)
  assert not np.allclose(train_1, train_2)
  assert not np.allclose(train_1, eval_1)


def test_drop_path_draws_a_fresh_mask_per_call_from_one_split():
  """A layer's DropPath draws each call's per-sample mask from its own key of one split of the
  layer key; more draws than DropPath.MAX_DRAWS are refused, not silently repeated."""
  key = jax.random.key(0)
  drop = layers.DropPath(0.5, key)
  x = jnp.ones((64, 3, 4))
  masks = [np.asarray(drop(x, sample_axis=0))[:, 0, 0] for _ in range(drop.MAX_DRAWS)]
  assert all(set(np.unique(m)) <= {0.0, 2.0} for m in masks)  # 0 or 1 / keep_prob, per sample
  assert len({m.tobytes() for m in masks}) == drop.MAX_DRAWS
  keys = jax.random.split(key, drop.MAX_DRAWS)
  np.testing.assert_array_equal(masks[3], 2.0 * jax.random.bernoulli(keys[3], 0.5, (64,)))
  with pytest.raises(ValueError, match='MAX_DRAWS'):
    drop(x, sample_axis=0)
  np.testing.assert_array_equal(layers.NO_DROP_PATH(x, sample_axis=0), x)


@pytest.mark.parametrize('field,value,message', [
    ('name', 'vivit', 'config.model.name'),
    ('image_size', 40, 'config.model.image_size'),
    ('num_frames', 7, 'config.model.num_frames'),
    ('num_heads', 5, 'config.model.num_heads'),
    ('dtype', 'float16', 'config.model.dtype'),
])
def test_bad_config_names_field(field, value, message):
  cfg = tiny('cast')
  cfg[field] = value
  with pytest.raises(ValueError, match=message.replace('.', r'\.')):
    models.build(cfg, rngs=nnx.Rngs(0))


def test_unknown_variant():
  with pytest.raises(ValueError, match='variant'):
    config_lib.parse_variant('huge')


@pytest.mark.slow
@pytest.mark.parametrize('name,policy,closed_over', [('cast', 'dots', True),
                                                     ('ca2st', 'full', False)])
def test_remat_same_values_and_gradients(name, policy, closed_over):
  """Remat changes neither the loss nor the gradients over the trainable set, in training mode
  (drop path on) and (closed_over) in an eval forward that closes over the frozen parameters."""
  batch = inputs(tiny(name))
  results, checkpoints = [], []
  for remat in ('none', policy):
    model = models.build(tiny(name, remat=remat, audio_exchange_start=1), rngs=nnx.Rngs(0))
    randomize(model)
    graphdef, trainable, rest = nnx.split(model, models.TRAINABLE, ...)

    def loss(trainable, rest, deterministic):
      if not deterministic:  # dropout counters mutate: rebuild the variables at this trace level
        rest = jax.tree.map(lambda x: x, rest)
      logits = nnx.merge(graphdef, trainable, rest)(**batch, deterministic=deterministic)['label']
      return jnp.sum(logits ** 2)

    train = jax.jit(jax.value_and_grad(functools.partial(loss, deterministic=False)))
    frozen_closed_over = jax.jit(
        lambda trainable, rest: jax.value_and_grad(lambda t: loss(t, rest, True))(trainable))
    results.append((train(trainable, rest),) + (
        (frozen_closed_over(trainable, rest),) if closed_over else ()))
    primitives = str(jax.make_jaxpr(train)(trainable, rest))
    checkpoints.append(primitives.count('checkpoint') + primitives.count('remat'))
  # XLA's attention is rematerialised whatever the policy; the layer remat adds its own.
  assert checkpoints[1] > checkpoints[0]
  for result in results[1:]:
    for (value, grads), (value_0, grads_0) in zip(result, results[0]):
      np.testing.assert_allclose(value, value_0, rtol=1e-5)
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                   grads, grads_0)


def _pre_head(model, name, batch):
  """The fused feature that enters the head (CAST / CA²ST)."""
  if name == 'cast':
    spatial, temporal = model.features(batch['video'])
    return model.spatial_last_adapter(spatial) + model.temporal_last_adapter(temporal)
  spatial, temporal, audio = model.features(**batch)
  return (model.spatial_last_adapter(spatial) + model.temporal_last_adapter(temporal)
          + model.audio_last_adapter(audio))


@pytest.mark.parametrize('name', ['cast', pytest.param('ca2st', marks=pytest.mark.slow)])
def test_bfloat16_frozen_storage_matches_float32(name):
  """Shared weights: float32 throughout vs bf16 compute with the frozen experts stored in bf16
  (cast on import). The head is set to prototypes of the batch's own float32 features, so class
  i is the top-1 of sample i by a margin set by the input, not by a bias; bf16 must keep every
  top-1 and stay within a few percent of the logit scale."""
  num = 8
  keys = jax.random.split(jax.random.key(3), 2)
  slots = 4
  starts = jnp.arange(slots + 1, dtype=jnp.float32) * 0.5
  batch = dict(video=jax.random.normal(keys[0], (num, 8, 32, 32, 3)),
               audio=jax.random.normal(keys[1], (num, 64, 32)),
               audio_times=jnp.broadcast_to(jnp.stack([starts, starts + 0.5], -1), (num, slots + 1, 2)))
  inputs_of = (lambda b: dict(video=b['video'])) if name == 'cast' else (lambda b: b)
  reference = models.build(tiny(name, num_classes=num, audio_exchange_start=1), rngs=nnx.Rngs(0))
  params = nnx.state(reference, nnx.Param)  # all random, so that the features vary with the input
  leaves, treedef = jax.tree.flatten(params)
  new = [0.2 * jax.random.normal(k, x.shape) for k, x in
         zip(jax.random.split(jax.random.key(1), len(leaves)), leaves)]
  nnx.update(reference, jax.tree.unflatten(treedef, new))
  features = np.asarray(nnx.jit(_pre_head, static_argnums=1)(reference, name, batch))
  centred = features - features.mean(0)
  prototypes = centred / np.linalg.norm(centred, axis=1, keepdims=True)
  reference.head.kernel[...] = jnp.asarray(10 * prototypes.T)
  reference.head.bias[...] = jnp.asarray(-10 * prototypes @ features.mean(0))

  bf16 = models.build(tiny(name, num_classes=num, audio_exchange_start=1, dtype='bfloat16',
                           store_frozen_in_compute_dtype=True), rngs=nnx.Rngs(1))
  torch_mapping.assign(bf16, torch_mapping.model_arrays(reference))
  assert {x.dtype for x in jax.tree.leaves(nnx.state(bf16, models.FROZEN))} == {jnp.dtype(jnp.bfloat16)}
  assert {x.dtype for x in jax.tree.leaves(nnx.state(bf16, models.TRAINABLE))} == {jnp.dtype(jnp.float32)}

  logits = nnx.jit(lambda model, inputs: model(**inputs)['label'])  # one compile, not op by op
  logits_32 = np.asarray(logits(reference, inputs_of(batch)))
  logits_16 = np.asarray(logits(bf16, inputs_of(batch)), np.float32)
  np.testing.assert_array_equal(logits_32.argmax(-1), np.arange(num))  # input-dependent top-1
  top2 = np.sort(logits_32, -1)[:, -2:]
  difference = np.abs(logits_16 - logits_32).max()
  assert difference < 0.05 * np.abs(logits_32).max()
  assert difference < 0.5 * (top2[:, 1] - top2[:, 0]).min()  # well separated: a real check
  np.testing.assert_array_equal(logits_16.argmax(-1), np.arange(num))
  # Export widens the bf16 weights back to float32: exactly the bf16 rounding of the originals.
  exported, original = torch_mapping.model_arrays(bf16), torch_mapping.model_arrays(reference)
  key = 'spatial/blocks/1/attn/qkv/kernel'
  assert exported[key].dtype == np.float32
  np.testing.assert_array_equal(exported[key], original[key].astype(jnp.bfloat16).astype(np.float32))
  np.testing.assert_array_equal(exported['head/kernel'], original['head/kernel'])


def _separable_clips(cfg, n, seed):
  """n clips of `cfg`'s shapes whose class (8 classes) shows in both the frames and the audio: a
  fixed pattern per class under noise, so that a briefly trained model separates them."""
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (8, cfg.num_frames, cfg.image_size, cfg.image_size, 3))
  sound = rng.standard_normal((8, cfg.spectrogram_length, cfg.num_mel_bins))
  labels = np.random.default_rng(seed).integers(0, 8, n).astype(np.int32)
  noise = np.random.default_rng(seed + 1)
  video = np.clip(frames[labels] + noise.normal(0, 20, (n, *frames.shape[1:])), 0, 255)
  slots = 1 + cfg.num_frames // cfg.tubelet_size
  starts = np.arange(slots, dtype=np.float32) * 0.25
  audio = sound[labels] + noise.normal(0, 0.3, (n, *sound.shape[1:]))
  times = np.broadcast_to(np.stack([starts, starts + 0.25], -1), (n, slots, 2))
  return dict(video=video.astype(np.uint8), label=labels, audio=audio.astype(np.float32),
              audio_times=times.copy(), has_audio=np.ones(n, bool))


@pytest.mark.slow
def test_bfloat16_keeps_the_top1_of_a_briefly_trained_demo_model(tmp_path):
  """The demo's recipe trained for 80 steps in float32 through the trainer (on one device, as the
  demo runs on a laptop: 8 simulated devices would only slow the tiny model), then run in float32
  and with bf16 compute on one batch: the same top-1 for every clip, logits within a few percent
  of their scale."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ca2st_jax.train import trainer  # pylint: disable=import-outside-toplevel
  from sources import InMemorySource  # pylint: disable=import-outside-toplevel
  from tests_helpers import load_config  # pylint: disable=import-outside-toplevel
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  config = load_config('demo')
  config.train.update(total_steps=80, warmup_steps=4, log_every=20, eval_every=0, ckpt_every=80)
  config.post.update(report=False, export_torch=False, predict_command=False)
  config.ckpt['async'] = False
  train = _separable_clips(config.model, 256, seed=1)
  test = _separable_clips(config.model, 16, seed=2)
  source = InMemorySource(train, test, global_batch=16, eval_batch_size=16)
  result = trainer.train_and_evaluate(config, str(tmp_path), 'train_and_eval', source=source,
                                      devices=jax.devices()[:1])
  assert result['top1'] >= 0.75, result  # it learnt the classes (chance: 1 in 8)

  arrays = torch_mapping.model_arrays(trainer.restore_model(config, str(tmp_path))[0])
  fp32 = models.build(config.model, rngs=nnx.Rngs(0))
  config.model.dtype = 'bfloat16'
  bf16 = models.build(config.model, rngs=nnx.Rngs(0))
  for model in (fp32, bf16):
    torch_mapping.assign(model, arrays)
  batch = dict(video=trainer.normalized_video(jnp.asarray(test['video'])),
               audio=jnp.asarray(test['audio']), audio_times=jnp.asarray(test['audio_times']))
  logits = nnx.jit(lambda model, inputs: model(**inputs)['label'])
  logits_32 = np.asarray(logits(fp32, batch))
  logits_16 = np.asarray(logits(bf16, batch), np.float32)
  # The float32 model here is the one the trainer evaluated.
  assert (logits_32.argmax(-1) == test['label']).mean() == pytest.approx(result['top1'])
  assert logits(bf16, batch).dtype == jnp.bfloat16
  np.testing.assert_array_equal(logits_16.argmax(-1), logits_32.argmax(-1))
  assert np.abs(logits_16 - logits_32).max() < 0.05 * np.abs(logits_32).max()


def test_stacked_layers_index_like_lists():
  """`blocks[i]` / iteration give layer i as a standalone module: slice i of every stacked
  parameter; running them one by one equals the scanned expert."""
  cfg = tiny('cast', depth=3)
  model = models.build(cfg, rngs=nnx.Rngs(0))
  assert len(model.spatial.blocks) == len(model.layers) == 3
  stacked = model.temporal.blocks.attn.qkv.kernel[...]
  assert stacked.shape == (3, cfg.width, 3 * cfg.width)
  for i, block in enumerate(model.temporal.blocks):
    np.testing.assert_array_equal(block.attn.qkv.kernel[...], stacked[i])
  video = inputs(cfg)['video']
  x = run_compiled(model.temporal, video, method='embed')
  for block in model.temporal.blocks:
    x = run_compiled(block, x)
  np.testing.assert_allclose(run_compiled(model.temporal, x, method='pool'),
                             run_compiled(model.temporal, video), atol=1e-6, rtol=1e-6)
  with pytest.raises(IndexError):
    model.layers[3]


def test_layer_decay_per_layer_slice():
  """Layer decay on the real parameter paths: each slice of a stacked parameter gets its own
  layer's scale (CA²ST's second group continues after the first), stems and heads theirs; a
  stacked LayerNorm scale [L, D] is not weight-decayed, a stacked kernel is."""
  from ca2st_jax.train import optim  # pylint: disable=import-outside-toplevel
  depth, decay = 4, 0.5
  cfg = tiny('ca2st', depth=depth, audio_exchange_start=1)
  model = nnx.eval_shape(lambda: models.build(cfg, rngs=nnx.Rngs(0)))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  scales = optim.layer_scales(params, models.layer_id, depth, decay)
  per_layer = lambda first, n: decay ** (depth + 1 - (first + np.arange(n)))
  check = lambda got, want: np.testing.assert_allclose(np.ravel(got), want, rtol=1e-6)
  check(scales['spatial']['blocks']['attn']['qkv']['kernel'], per_layer(1, depth))
  check(scales['audio']['blocks']['norm1']['scale'], per_layer(1, depth))
  check(scales['layers']['spatial_adapter']['fc1']['kernel'], per_layer(1, 1))
  check(scales['audio_exchange_layers']['audio_spatial']['audio_down']['kernel'],
        per_layer(2, depth - 1))
  query_pos = scales['audio_exchange_layers']['space_time']['spatial_from_temporal']['query_pos']
  check(query_pos, per_layer(2, depth - 1))
  assert np.shape(query_pos) == (depth - 1, 1, 1)  # broadcasts over [layers, slots, dim]
  assert scales['spatial']['patch_embed']['kernel'] == decay ** (depth + 1)
  assert scales['head']['kernel'] == 1.0
  mask = optim.decay_mask(params, models.layer_id, depth)
  assert mask['layers']['space_time']['spatial_norm']['scale'] is False
  assert mask['audio_exchange_layers']['spatial_adapter']['fc1']['kernel'] is True
  assert mask['spatial']['blocks']['norm1']['scale'] is False
