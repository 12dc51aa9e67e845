"""config.model.layer_loop: the layers traced one by one compute what the scanned layer does; 'auto'
unrolls them on the accelerators only; unrolled train steps take the frozen layers as arrays."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ca2st_jax import models
from ca2st_jax.models import layers
from ca2st_jax.tools import benchmark
from ca2st_jax.train import mesh as mesh_lib
from ca2st_jax.train import trainer
from sources import one_step_source
from tests_helpers import load_config


def _batch(cfg, seed=0):
  rng = np.random.default_rng(seed)
  spec = models.batch_spec(cfg, 2)
  out = {'video': jnp.asarray(rng.normal(size=spec['video'].shape), jnp.float32)}
  if 'audio' in spec:
    out['audio'] = jnp.asarray(rng.normal(size=spec['audio'].shape), jnp.float32)
    slots = spec['audio_times'].shape[1] - 1
    starts = np.arange(slots + 1, dtype=np.float32) * 0.5
    out['audio_times'] = jnp.broadcast_to(jnp.stack([starts, starts + 0.5], -1), (2, slots + 1, 2))
  return out


def test_unrolled_layers_match_the_scan():
  """CA²ST traced layer by layer against its two scans, loss and gradients: its layers run
  CAST's spatial-temporal exchange and the audio ones (CAST's unrolled train step meets its
  scanned one in test_unrolled_train_step_takes_the_frozen_layers_as_arrays)."""
  cfg = load_config('ca2st_vggsound', 'tiny').model
  cfg.layer_loop = 'scan'
  model = models.build(cfg, rngs=nnx.Rngs(0))
  graphdef, trainable, rest = nnx.split(model, models.TRAINABLE, ...)
  trainable = jax.tree.map(lambda x: x + 0.05 * jnp.sin(jnp.arange(x.size).reshape(x.shape)),
                           trainable)  # zero-initialised adapters would hide the layers' work
  cfg.layer_loop = 'unroll'
  unrolled = nnx.split(models.build(cfg, rngs=nnx.Rngs(0)), models.TRAINABLE, ...)[0]
  batch = _batch(cfg)

  def loss(graphdef, trainable, rest):
    logits = nnx.merge(graphdef, trainable, rest)(**batch, deterministic=True)
    return sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(logits))

  loss_and_grads = jax.jit(jax.value_and_grad(loss, argnums=1), static_argnums=0)
  want, want_grads = loss_and_grads(graphdef, trainable, rest)
  got, got_grads = loss_and_grads(unrolled, trainable, rest)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('platform,loop', [('gpu', 'unroll'), ('tpu', 'unroll'), ('cpu', 'scan')])
def test_auto_unrolls_on_the_accelerators(platform, loop):
  assert layers.resolve_layer_loop('auto', platform) == loop
  assert layers.resolve_layer_loop('scan', platform) == 'scan'


@pytest.mark.parametrize('platform,split', [('gpu', True), ('cpu', True), ('tpu', False)])
def test_unrolled_steps_take_frozen_layers_apart_except_on_a_tpu(platform, split, abstract_model):
  """Which stacks the unrolled steps take layer by layer: all of them, except on a TPU, whose
  compiled steps read a layer's slice of a stacked weight in place; none with a scan."""
  cfg = load_config('cast_k400', 'tiny')
  model = abstract_model(cfg.model)
  cfg.model.layer_loop = 'unroll'
  stacks = trainer.frozen_stacks(cfg, model, platform)
  assert bool(stacks) == split
  if split:
    assert stacks == layers.stack_paths(model)
  cfg.model.layer_loop = 'scan'
  assert trainer.frozen_stacks(cfg, model, platform) == ()


def test_the_model_runs_the_resolved_loop():
  """On this CPU 'auto' runs the layers in scans; 'unroll' leaves no scan."""
  cfg = load_config('cast_k400', 'tiny').model
  loops = {}
  for loop in ('auto', 'unroll'):
    cfg.layer_loop = loop
    model = nnx.eval_shape(lambda: models.build(cfg, rngs=nnx.Rngs(0)))
    video = jax.ShapeDtypeStruct(models.batch_spec(cfg, 1)['video'].shape, jnp.float32)
    jaxpr = jax.make_jaxpr(lambda m, v: m(video=v, deterministic=True))(model, video)
    loops[loop] = str(jaxpr).count('scan[')
  assert loops['auto'] > 0 and loops['unroll'] == 0


def test_every_layer_leaves_its_token_streams_row_major():
  """run_stacks pins each layer's token streams, and so their gradients, to row-major layouts:
  CAST's two streams, after each of its layers, forward and backward."""
  cfg = load_config('cast_k400', 'tiny').model
  cfg.layer_loop = 'unroll'
  model = nnx.eval_shape(lambda: models.build(cfg, rngs=nnx.Rngs(0)))
  graphdef, trainable, rest = nnx.split(model, models.TRAINABLE, ...)
  video = jax.ShapeDtypeStruct(models.batch_spec(cfg, 1)['video'].shape, jnp.float32)

  def loss(trainable, rest, video):
    logits = nnx.merge(graphdef, trainable, rest)(video=video, deterministic=True)
    return sum(jnp.sum(x) for x in jax.tree.leaves(logits))

  jaxpr = str(jax.make_jaxpr(jax.grad(loss))(trainable, rest, video))
  assert jaxpr.count('layout_constraint[') == 2 * 2 * cfg.depth


def _step_setup(loop):
  cfg = load_config('cast_k400', 'tiny')
  cfg.model.layer_loop = loop
  cfg.train.update(batch_size=2, total_steps=2, warmup_steps=0)
  return trainer.build_setup(cfg, devices=jax.devices()[:1])


def _frozen_layer_copies(hlo):
  """The instructions of a compiled program that read a layer out of a frozen experts' blocks
  argument: slices, copies, concatenations and the fusions that slice."""
  blocks = set(re.findall(r'%(frozen\w*blocks\w*(?:\.\d+)?) = \S+ parameter', hlo))
  assert blocks, 'no frozen blocks among the arguments'
  found = []
  for line in hlo.splitlines():
    m = re.match(r'\s*(?:ROOT )?%\S+ = \S+ (slice|dynamic-slice|copy|concatenate|fusion)\((.*?)\)',
                 line)
    if not m or not {o.strip().lstrip('%') for o in m.group(2).split(',')} & blocks:
      continue
    if m.group(1) != 'fusion' or '/slice"' in line or 'slice' in line.split(' = ')[0]:
      found.append(line[:160])
  return found


def test_unrolled_train_step_takes_the_frozen_layers_as_arrays():
  """Unrolled, the train step takes each frozen layer as its own array: the compiled step copies
  no layer out of a stacked weight, and computes the scanned step's loss and parameters; the
  frozen experts go back to their stacked (checkpoint) layout unchanged."""
  scan, unroll = _step_setup('scan'), _step_setup('unroll')
  assert jax.tree.structure(scan.abstract_step_frozen) == jax.tree.structure(scan.abstract_frozen)
  state, frozen, rest = scan.init_fn()
  split = unroll.frozen_for_steps(frozen)
  depth = scan.config.model.depth
  by_path = dict(jax.tree_util.tree_flatten_with_path(
      split, is_leaf=lambda x: isinstance(x, list))[0])
  for path, stacked in jax.tree_util.tree_flatten_with_path(frozen)[0]:
    if 'blocks' in jax.tree_util.keystr(path):
      assert isinstance(by_path[path], list) and len(by_path[path]) == depth, path
      for i in range(depth):
        np.testing.assert_array_equal(by_path[path][i], stacked[i])
    else:
      assert by_path[path] is not None and not isinstance(by_path[path], list), path
  back = unroll.frozen_for_checkpoint(split)
  assert jax.tree.structure(back) == jax.tree.structure(frozen)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(frozen)):
    np.testing.assert_array_equal(a, b)

  batch = mesh_lib.global_batch(benchmark.synthetic_batch(scan.config.model, 2), scan.mesh)
  compiled = unroll.train_step.lower(state, split, rest, batch).compile()
  assert _frozen_layer_copies(compiled.as_text()) == []
  got_state, got = compiled(state, split, rest, batch)
  want_state, want = scan.train_step(scan.init_fn()[0], frozen, rest, batch)
  np.testing.assert_allclose(got['loss'], want['loss'], rtol=1e-5)
  for g, w in zip(jax.tree.leaves(got_state['params']), jax.tree.leaves(want_state['params'])):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_an_unrolled_run_evaluates_scanned(tmp_path):
  """An unrolled run checkpoints its frozen experts stacked: its workdir evaluates with the layers
  scanned (on the 8 simulated devices), to the unrolled run's own evaluation."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  cfg = load_config('cast_k400', 'tiny')
  cfg.model.update(layer_loop='unroll', num_classes=5)
  source, _ = one_step_source(cfg)
  workdir = str(tmp_path / 'wd')
  unrolled = trainer.train_and_evaluate(cfg, workdir, 'train_and_eval', source=source)
  cfg.model.layer_loop = 'scan'
  scanned = trainer.train_and_evaluate(cfg, workdir, 'eval', source=source)
  assert scanned.keys() == unrolled.keys()
  for key, value in unrolled.items():
    assert scanned[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
