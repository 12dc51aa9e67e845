"""Speed and memory of a configured model on the local device(s): eval forward and the
forward + backward over the trainable set, jitted, on random inputs.

  python -m ca2st_jax.tools.bench_model --config=configs/cast_k400.py --batch=8 [--json]
  python -m ca2st_jax.tools.bench_model --config=configs/ca2st_vggsound.py:tiny --batch=4

Prints compile time, median step time over --steps timed calls (after one warm-up), clips/s,
achieved TFLOP/s (2 x the traced matmul/conv MACs; the backward counted as 2 x forward) and
XLA's compiled memory analysis where the backend provides it.
"""
import json
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import config_flags

from ca2st_jax import models
from ca2st_jax.tools import summary


def random_inputs(cfg, batch):
  abstract = summary.abstract_inputs(cfg, batch)
  keys = jax.random.split(jax.random.key(0), len(abstract))
  return {name: jax.random.uniform(key, spec.shape, spec.dtype)
          for key, (name, spec) in zip(keys, sorted(abstract.items()))}


def _time(fn, args, steps):
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  memory = compiled.memory_analysis()
  memory_mib = None
  if memory is not None:
    memory_mib = {name: getattr(memory, f'{name}_size_in_bytes') / 2**20
                  for name in ('argument', 'output', 'temp', 'generated_code')}
  return compile_s, statistics.median(times), memory_mib


def benchmark(cfg, batch: int, steps: int) -> dict:
  model = models.build(cfg, rngs=nnx.Rngs(0))
  graphdef, trainable, rest = nnx.split(model, models.TRAINABLE, ...)
  inputs = random_inputs(cfg, batch)
  macs_per_clip = summary.forward_macs(cfg, nnx.eval_shape(lambda: models.build(cfg, rngs=nnx.Rngs(0))))

  @jax.jit
  def forward(trainable, rest, inputs):
    return nnx.merge(graphdef, trainable, rest)(**inputs, deterministic=True)

  @jax.jit
  def forward_backward(trainable, rest, inputs):
    def loss(trainable):
      logits = nnx.merge(graphdef, trainable, rest)(**inputs, deterministic=True)
      return sum(jnp.mean(x.astype(jnp.float32) ** 2) for x in logits.values())
    return jax.value_and_grad(loss)(trainable)

  results = {'model': cfg.name, 'dtype': cfg.dtype, 'remat': cfg.remat, 'batch': batch,
             'device': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
             'gmacs_per_clip': macs_per_clip / 1e9}
  for name, fn, flop_factor in (('forward', forward, 2), ('train_step', forward_backward, 6)):
    compile_s, step_s, memory = _time(fn, (trainable, rest, inputs), steps)
    results[name] = {
        'compile_s': compile_s, 'step_s': step_s, 'clips_per_s': batch / step_s,
        'tflops': flop_factor * macs_per_clip * batch / step_s / 1e12, 'memory_mib': memory}
  return results


def report(cfg, batch, steps, as_json):
  results = benchmark(cfg, batch, steps)
  if as_json:
    print(json.dumps(results))
    return
  print(f"{results['model']} ({results['dtype']}, remat={results['remat']}) batch {batch} on "
        f"{results['device']}: {results['gmacs_per_clip']:.4g} GMACs per clip")
  for name in ('forward', 'train_step'):
    r = results[name]
    memory = ', '.join(f'{k} {v:.0f} MiB' for k, v in (r['memory_mib'] or {}).items())
    print(f"  {name:<10} {r['step_s'] * 1e3:9.1f} ms/step  {r['clips_per_s']:8.2f} clips/s  "
          f"{r['tflops']:7.3f} TFLOP/s  compile {r['compile_s']:.1f} s  [{memory}]")


if __name__ == '__main__':
  config_flag = config_flags.DEFINE_config_file(
      'config', None, 'Config file (configs/<name>.py[:variant]).', lock_config=False)
  batch_flag = flags.DEFINE_integer('batch', 2, 'Clips per step.')
  steps_flag = flags.DEFINE_integer('steps', 5, 'Timed steps (after one warm-up).')
  json_flag = flags.DEFINE_bool('json', False, 'Print one JSON object.')
  flags.mark_flag_as_required('config')
  app.run(lambda argv: report(config_flag.value.model, batch_flag.value, steps_flag.value,
                              json_flag.value))
