"""Training and evaluation speed of a config on the local device(s), JAX and PyTorch side by side.

  python -m ca2st_jax.tools.benchmark --config=configs/cast_k400.py --batch=8 [--backend=both]
      [--torch_attention=eager|sdpa] [--dtype=bfloat16|float32] [--steps=10] [--bytes_by_op] [--json]

JAX: the trainer's own jitted train step (`trainer.build_setup`: AdamW with layer decay, mixup,
label smoothing, dropout and drop-path, sharded over the local devices) and eval step, on a
synthetic batch of the config's shapes (uint8 video, log-mel audio and its times, labels).
Reports ms/step, clips/s, the compile time (lower and compile timed apart), XLA's compiled memory
analysis (argument / output / temporary bytes) and the device's peak memory where the backend
exposes it, XLA's cost analysis (FLOPs and bytes accessed per clip), and the model's own FLOPs
(`tools.summary`: forward = 2 x matmul/conv MACs; a train step = the forward plus its backward
through the trainable set and the activations that lead to it, no weight gradients for the
frozen experts), the achieved TFLOP/s and the MFU against the device's bf16 peak.

PyTorch (`--backend=torch` or `both`): the same config through
`ca2st_jax.interop.torch_model` (the reference's ops; `--torch_attention=sdpa` swaps its
eager attention for PyTorch's fused scaled_dot_product_attention), trained as the authors train:
AdamW over the same trainable set, fp16 autocast with a GradScaler on CUDA for --dtype=bfloat16
(bf16 autocast on CPU), fp32 for --dtype=float32, the same mixup and label-smoothed loss.
Its dropout and drop-path are identities (the module is inference-only), which flatters it
slightly.

Warm-up steps are not timed; every timed run ends with block_until_ready / cuda.synchronize.
Nothing here imports the data stack (Grain, TFDS, PyAV, ...): it runs where only JAX/PyTorch are.
"""
from __future__ import annotations

import importlib.metadata
import json
import sys
import time

import jax
import numpy as np
from absl import app
from absl import flags
from flax import nnx

from ca2st_jax import config_lib
from ca2st_jax import models
from ca2st_jax.tools import roofline
from ca2st_jax.tools import summary

# Dense bf16 peak TFLOP/s per chip, matched against jax's device_kind / torch's device name.
PEAK_BF16_TFLOPS = (
    ('H100', 989.0), ('H200', 989.0), ('A100', 312.0),
    ('TPU v4', 275.0), ('TPU v5 lite', 197.0), ('TPU v5e', 197.0), ('TPU v5p', 459.0),
    ('TPU v5', 459.0), ('TPU v6 lite', 918.0), ('TPU v6e', 918.0),
)


def peak_tflops(device_kind: str):
  """The chip's dense bf16 peak, or None (CPU, unknown chips: no MFU)."""
  for name, peak in PEAK_BF16_TFLOPS:
    if name.lower() in device_kind.lower():
      return peak
  return None


def synthetic_batch(model_cfg, batch: int, seed: int = 0) -> dict:
  """A host batch of models.batch_spec's layout: random pixels, log-mels and labels; audio_times
  as a 10-second crop split evenly into the video's slots."""
  rng = np.random.default_rng(seed)
  out = {}
  for name, spec in models.batch_spec(model_cfg, batch, labels=True).items():
    if name == 'video':
      out[name] = rng.integers(0, 256, spec.shape, dtype=np.uint8)
    elif name == 'audio':
      out[name] = rng.standard_normal(spec.shape).astype(np.float32)
    elif name == 'audio_times':
      slots = spec.shape[1] - 1
      edges = np.linspace(0.0, 10.0, slots + 1, dtype=np.float32)
      times = np.concatenate([[[0.0, 10.0]], np.stack([edges[:-1], edges[1:]], -1)])
      out[name] = np.broadcast_to(times.astype(np.float32), spec.shape).copy()
    else:
      classes = {'verb': model_cfg.get('num_verbs'), 'noun': model_cfg.get('num_nouns'),
                 'label': model_cfg.get('num_classes')}[name]
      out[name] = rng.integers(0, classes, spec.shape, dtype=np.int32)
  return out


def benchmark_config(config, batch: int, dtype: str):
  """The config with the benchmark's batch (one micro-batch per step) and dtype; durations fixed
  so no dataset size is needed."""
  config = config.copy_and_resolve_references()
  config.model.dtype = dtype
  config.train.batch_size = batch
  config.train.accum_steps = 1
  config.train.total_steps = 10_000
  config.train.warmup_steps = 100
  return config


def model_tflops(model_cfg) -> dict:
  """Model TFLOP per clip, forward and train step (tools.summary's counting)."""
  abstract = nnx.eval_shape(lambda: models.build(summary.counting_config(model_cfg),
                                                 rngs=nnx.Rngs(0)))
  forward = 2 * summary.forward_macs(model_cfg, abstract) / 1e12
  train = 2 * summary.train_macs(model_cfg, abstract) / 1e12
  return {'forward': forward, 'train': train}


# ---------------------------------------------------------------------------------------- XLA


def _memory(compiled) -> dict:
  memory = compiled.memory_analysis()
  if memory is None:
    return {}
  return {f'{name}_bytes': int(getattr(memory, f'{name}_size_in_bytes'))
          for name in ('argument', 'output', 'temp', 'generated_code')}


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else None
  if not cost:
    return {}
  return {'flops': float(cost.get('flops', 0.0)), 'bytes_accessed': float(cost.get('bytes accessed', 0.0))}


def _time_compiled(run, steps: int, warmup: int) -> float:
  """Seconds per call of run(), after `warmup` untimed calls; run() returns what to block on."""
  for _ in range(warmup):
    jax.block_until_ready(run())
  start = time.perf_counter()
  out = None
  for _ in range(steps):
    out = run()
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps


def run_jax(config, batch: int, steps: int, warmup: int = 2, devices=None,
            with_bytes_by_op: bool = False) -> dict:
  """The trainer's train and eval steps on a synthetic batch: times, memory, XLA's cost analysis."""
  from ca2st_jax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from ca2st_jax.train import trainer  # pylint: disable=g-import-not-at-top
  devices = list(devices or jax.local_devices())
  setup = trainer.build_setup(config, devices=devices)
  host_batch = synthetic_batch(config.model, batch)
  state, frozen, rest = setup.init_fn()
  frozen = setup.frozen_for_steps(frozen)
  device_batch = mesh_lib.global_batch(host_batch, setup.mesh)
  eval_batch = {k: v for k, v in device_batch.items() if k in ('video', 'audio', 'audio_times')}
  results = {}
  for name, fn, args in (('train_step', setup.train_step, (state, frozen, rest, device_batch)),
                         ('eval_step', setup.eval_step, (state, frozen, rest, eval_batch))):
    start = time.perf_counter()
    lowered = fn.lower(*args)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    if name == 'train_step':
      carry = {'state': state}

      def run(compiled=compiled):
        carry['state'], out = compiled(carry['state'], frozen, rest, device_batch)
        return out
    else:
      run = lambda compiled=compiled: compiled(carry['state'], frozen, rest, eval_batch)
    step_s = _time_compiled(run, steps, warmup)
    # The compiled program is one device's share: scale its counts to the whole batch.
    cost = {k: v * len(devices) / batch for k, v in _cost(compiled).items()}
    results[name] = {
        'lower_s': lower_s, 'compile_s': compile_s, 'step_ms': step_s * 1e3,
        'clips_per_s': batch / step_s, 'memory': _memory(compiled),
        'xla_flops_per_clip': cost.get('flops'), 'xla_bytes_per_clip': cost.get('bytes_accessed')}
    if with_bytes_by_op:
      by_op = roofline.bytes_by_group(compiled.as_text(), train=name == 'train_step')
      results[name]['bytes_by_op_per_clip'] = {k: v * len(devices) / batch for k, v in by_op.items()}
  stats = devices[0].memory_stats() or {}
  results['peak_bytes'] = stats.get('peak_bytes_in_use')
  results['device'] = f'{len(devices)} x {devices[0].device_kind}'
  results['device_kind'] = devices[0].device_kind
  results['num_devices'] = len(devices)
  return results


# -------------------------------------------------------------------------------------- PyTorch


def _torch_trainable(model, cfg) -> list:
  """Freezes what the reference freezes; the trainable parameters, counted against the JAX
  model's trainable set."""
  from ca2st_jax.interop import torch_mapping  # pylint: disable=g-import-not-at-top
  trainable_names = {e.ref for e in torch_mapping.table(cfg)
                     if models.is_trainable(e.jax.split('/'))}
  params = dict(model.named_parameters())  # shared tensors appear once, under their first name
  for name, p in params.items():
    p.requires_grad_(name in trainable_names)
  trainable = [p for p in params.values() if p.requires_grad]
  expected = summary.parameter_counts(nnx.eval_shape(
      lambda: models.build(cfg, rngs=nnx.Rngs(0))))['trainable']
  got = sum(p.numel() for p in trainable)
  if got != expected:
    raise ValueError(f'PyTorch trainable set has {got} parameters, the JAX model {expected} '
                     f'(config.model.name={cfg.name!r}); torch_mapping.table and models.TRAINABLE '
                     'disagree')
  return trainable


def _torch_timed(fn, steps: int, warmup: int, cuda: bool) -> float:
  """Seconds per call of fn(), after `warmup` untimed calls."""
  import torch  # pylint: disable=g-import-not-at-top
  for _ in range(warmup):
    fn()
  if cuda:
    torch.cuda.synchronize()
  start = time.perf_counter()
  for _ in range(steps):
    fn()
  if cuda:
    torch.cuda.synchronize()
  return (time.perf_counter() - start) / steps


def run_torch(config, batch: int, steps: int, attention: str, warmup: int = 2) -> dict:
  """The PyTorch model trained as the authors train it (AdamW, mixup with a fixed lambda, soft
  targets from ca2st_jax.train.losses, autocast), on the same synthetic batch."""
  import torch  # pylint: disable=g-import-not-at-top
  from ca2st_jax.interop import torch_model  # pylint: disable=g-import-not-at-top
  from ca2st_jax.train import losses  # pylint: disable=g-import-not-at-top
  cfg, tcfg = config.model, config.train
  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  torch.manual_seed(0)
  model = torch_model.build(cfg, attention).to(device)
  with torch.no_grad():  # torch_model.build leaves zeros; any weights time the same but zeros
    for p in model.parameters():
      p.normal_(0.0, 0.02)
  optimizer = torch.optim.AdamW(_torch_trainable(model, cfg), lr=1e-4, weight_decay=0.05)
  if cfg.dtype == 'float32':
    autocast_dtype = None
  else:  # the authors: fp16 + loss scaling on GPU; bf16 on CPU (no fp16 matmuls there)
    autocast_dtype = torch.float16 if device.type == 'cuda' else torch.bfloat16
  scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
  autocast = lambda: torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                    enabled=autocast_dtype is not None)

  host = synthetic_batch(cfg, batch)
  inputs = {k: torch.from_numpy(v).to(device) for k, v in host.items()}
  lam = 0.8  # each row mixed with the reversed batch's, as the reference's batch-mode mixup
  targets = {key: torch.from_numpy(np.asarray(losses.soft_targets(
      host[key], host[key][::-1], lam, cfg[config_lib.HEAD_CLASSES[key]],
      float(tcfg.get('label_smoothing', 0.0))))).to(device)
             for key in config_lib.LABEL_KEYS if key in host}
  mixed_keys = ('video', 'audio') if tcfg.get('mixup_audio', False) else ('video',)
  mean = torch.tensor([0.485, 0.456, 0.406], device=device)
  std = torch.tensor([0.229, 0.224, 0.225], device=device)

  def model_inputs(mix):
    video = ((inputs['video'].float() / 255.0 - mean) / std).permute(0, 4, 1, 2, 3)
    out = {'video': video, **{k: inputs[k] for k in ('audio', 'audio_times') if k in inputs}}
    for key in mixed_keys if mix else ():
      if key in out:
        out[key] = lam * out[key] + (1.0 - lam) * out[key].flip(0)
    return out

  def train_step():
    with autocast():
      logits = model(**model_inputs(mix=True))
    loss = sum(torch.sum(-targets[k] * torch.log_softmax(v.float(), -1), -1).mean()
               for k, v in logits.items())
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss

  def eval_step():
    with torch.no_grad(), autocast():
      return {k: torch.softmax(v.float(), -1) for k, v in model(**model_inputs(mix=False)).items()}

  model.train()  # no dropout or drop-path in the module: train/eval only differ in name here
  cuda = device.type == 'cuda'
  if cuda:
    torch.cuda.reset_peak_memory_stats()
  results = {}
  for name, fn in (('train_step', train_step), ('eval_step', eval_step)):
    step_s = _torch_timed(fn, steps, warmup, cuda)
    results[name] = {'step_ms': step_s * 1e3, 'clips_per_s': batch / step_s}
  results['peak_bytes'] = torch.cuda.max_memory_allocated() if cuda else None
  results['device'] = (f'1 x {torch.cuda.get_device_name()}' if cuda
                       else f'1 x cpu ({torch.get_num_threads()} threads)')
  results['device_kind'] = torch.cuda.get_device_name() if cuda else 'cpu'
  results['num_devices'] = 1
  results['autocast'] = str(autocast_dtype).replace('torch.', '') if autocast_dtype else 'none'
  results['versions'] = {'torch': torch.__version__}
  return results


# ---------------------------------------------------------------------------------------- report


def add_rates(results: dict, tflops: dict) -> None:
  """Achieved TFLOP/s (model FLOPs) and MFU for each step of a backend's results."""
  peak = peak_tflops(results['device_kind'])
  for step, per_clip in (('train_step', tflops['train']), ('eval_step', tflops['forward'])):
    r = results[step]
    r['model_tflops_per_clip'] = per_clip
    r['tflops_per_s'] = per_clip * r['clips_per_s']
    r['mfu'] = r['tflops_per_s'] / (peak * results['num_devices']) if peak else None


def benchmark(config, *, batch: int, steps: int, backend: str, torch_attention=('eager',),
              warmup: int = 2, with_bytes_by_op: bool = False) -> list[dict]:
  """One row per run: JAX, then PyTorch with each of `torch_attention`. A run that fails (out of
  memory, ...) gives a row with its 'error' and the others still run.

  PyTorch runs first so that its cached GPU memory is handed back before JAX allocates."""
  tflops = model_tflops(config.model)
  common = {'config': config.model.name, 'dtype': config.model.dtype, 'batch': batch,
            'remat': config.model.remat, 'attention': config.model.get('attention', 'xla'),
            'steps': steps, 'warmup': warmup}
  torch_rows, jax_rows = [], []
  if backend in ('torch', 'both'):
    for attention in torch_attention:
      row = {'backend': f'torch-{attention}', **common, 'attention': attention}
      try:
        row.update(run_torch(config, batch, steps, attention, warmup))
        add_rates(row, tflops)
      except Exception as e:  # pylint: disable=broad-except
        row['error'] = f'{type(e).__name__}: {e}'[:2000]
      torch_rows.append(row)
    _release_torch_memory()
  if backend in ('jax', 'both'):
    row = {'backend': 'jax', **common}
    try:
      row.update(run_jax(config, batch, steps, warmup, with_bytes_by_op=with_bytes_by_op))
      add_rates(row, tflops)
    except Exception as e:  # pylint: disable=broad-except
      row['error'] = f'{type(e).__name__}: {e}'[:2000]
    row['versions'] = {name: importlib.metadata.version(name) for name in ('jax', 'jaxlib', 'flax')}
    jax_rows.append(row)
  return jax_rows + torch_rows


def _release_torch_memory():
  if 'torch' in sys.modules and sys.modules['torch'].cuda.is_available():
    sys.modules['torch'].cuda.empty_cache()


def _gib(x):
  return f'{x / 2**30:.2f}' if x is not None else '-'


def format_table(rows: list[dict]) -> str:
  """A markdown table of benchmark rows. 'JAX x' is the JAX row's clips/s over this row's (same
  config, batch, dtype and step): the JAX speed-up over that backend."""
  head = ('| config | backend | dtype | batch | step | ms/step | clips/s | JAX x | compile s '
          '| TFLOP/clip | TFLOP/s | MFU % | temp GiB | peak GiB | XLA GB/clip (loop body once) |')
  lines = [head, '|' + '---|' * (head.count('|') - 1)]
  fmt = lambda x, spec: format(x, spec) if x is not None else '-'
  key = lambda row, step: (row['config'], row['batch'], row['dtype'], step)
  jax_rate = {key(row, step): row[step]['clips_per_s'] for row in rows if row['backend'] == 'jax'
              for step in ('train_step', 'eval_step') if step in row}
  errors = []
  for row in rows:
    if 'error' in row:
      errors.append(f"- {row['config']} {row['backend']} batch {row['batch']}: {row['error']}")
    for step in ('train_step', 'eval_step'):
      r = row.get(step)
      if not r:
        continue
      ratio = jax_rate.get(key(row, step))
      mfu = 100 * r['mfu'] if r.get('mfu') is not None else None
      temp = (r.get('memory') or {}).get('temp_bytes')
      xla_gb = r['xla_bytes_per_clip'] / 1e9 if r.get('xla_bytes_per_clip') else None
      cells = (row['config'], row['backend'], row['dtype'], row['batch'], step,
               fmt(r['step_ms'], '.1f'), fmt(r['clips_per_s'], '.2f'),
               fmt(ratio / r['clips_per_s'] if ratio else None, '.2f'),
               fmt(r.get('compile_s'), '.1f'), fmt(r['model_tflops_per_clip'], '.4g'),
               fmt(r['tflops_per_s'], '.4g'), fmt(mfu, '.1f'), _gib(temp),
               _gib(row.get('peak_bytes')), fmt(xla_gb, '.2f'))
      lines.append('| ' + ' | '.join(str(c) for c in cells) + ' |')
  if errors:
    lines += ['', 'Failed runs:', *errors]
  return '\n'.join(lines)


def format_bytes_by_op(row: dict) -> str:
  lines = []
  for step in ('train_step', 'eval_step'):
    by_op = row.get(step, {}).get('bytes_by_op_per_clip')
    if not by_op:
      continue
    total = sum(by_op.values())
    lines.append(f"{row['config']} {row['backend']} {step}: bytes accessed per clip by op kind "
                 f"(tools.roofline, loop bodies x trips: {total / 1e9:.2f} GB; XLA cost analysis: "
                 f"{(row[step].get('xla_bytes_per_clip') or 0) / 1e9:.2f} GB)")
    for kind, n in by_op.items():
      lines.append(f'  {kind:<34}{n / 1e9:10.4g} GB  {100 * n / total:5.1f}%')
  return '\n'.join(lines)


def format_details(row: dict) -> str:
  """Per-step compile split, XLA counts and memory of a JAX row; device and versions of any row."""
  lines = []
  for step in ('train_step', 'eval_step'):
    r = row.get(step) or {}
    if 'lower_s' in r:
      memory = ', '.join(f"{k.removesuffix('_bytes')} {_gib(v)} GiB"
                         for k, v in (r.get('memory') or {}).items())
      lines.append(
          f"{row['config']} {row['backend']} {step}: lower {r['lower_s']:.1f} s + compile "
          f"{r['compile_s']:.1f} s; XLA (a loop body counted once) "
          f"{(r['xla_flops_per_clip'] or 0) / 1e12:.3f} TFLOP and "
          f"{(r['xla_bytes_per_clip'] or 0) / 1e9:.2f} GB accessed per clip; {memory}")
  lines.append(f"{row['config']} {row['backend']} on {row.get('device', '?')}: "
               f"{row.get('versions', {})}" + (f", autocast {row['autocast']}" if 'autocast' in row
                                              else ''))
  return '\n'.join(lines)


def format_report(rows: list[dict]) -> str:
  """The table, then each row's details and byte breakdown."""
  parts = [format_table(rows), '']
  for row in rows:
    parts.append(format_details(row))
    if format_bytes_by_op(row):
      parts.append(format_bytes_by_op(row))
  return '\n'.join(parts)


def main(argv):
  del argv
  if _REPORT.value:
    cli.check_file('report', _REPORT.value, 'a --json output of this tool')
    with open(_REPORT.value) as f:
      print(format_report([json.loads(line) for line in f if line.startswith('{')]))
    return
  if _CONFIG.value is None:
    cli.fail('--config=configs/<name>.py[:variant] is required (or --report=FILE.jsonl)')
  bad = set(_TORCH_ATTENTION.value) - {'eager', 'sdpa'}
  if bad:
    cli.fail(f'--torch_attention: {sorted(bad)} not in eager, sdpa')
  cli.quiet_library_logs()
  cli.skip_absent_tpu()
  config = benchmark_config(_CONFIG.value, _BATCH.value, _DTYPE.value)
  rows = benchmark(config, batch=_BATCH.value, steps=_STEPS.value, backend=_BACKEND.value,
                   torch_attention=_TORCH_ATTENTION.value, warmup=_WARMUP.value,
                   with_bytes_by_op=_BYTES_BY_OP.value)
  if _JSON.value:
    for row in rows:
      print(json.dumps(row), flush=True)
  else:
    print(format_report(rows), flush=True)
  if any('error' in row for row in rows):
    sys.exit(1)


if __name__ == '__main__':
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  _CONFIG = config_flags.DEFINE_config_file(
      'config', None, 'Config file (configs/<name>.py[:variant]).', lock_config=False)
  _BATCH = flags.DEFINE_integer('batch', 2, 'Clips per step (over all local devices).')
  _STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps (after the warm-up steps).')
  _WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps before the timed ones.')
  _BACKEND = flags.DEFINE_enum('backend', 'jax', ['jax', 'torch', 'both'], 'What to run.')
  _TORCH_ATTENTION = flags.DEFINE_list(
      'torch_attention', ['eager'],
      "PyTorch attention, one row each: 'eager' (the reference's ops) and/or 'sdpa' (PyTorch's "
      'fused scaled_dot_product_attention), e.g. --torch_attention=eager,sdpa.')
  _DTYPE = flags.DEFINE_enum('dtype', 'bfloat16', ['bfloat16', 'float32'],
                             'config.model.dtype (and the PyTorch autocast).')
  _BYTES_BY_OP = flags.DEFINE_bool(
      'bytes_by_op', False, 'Also group the bytes each compiled JAX step accesses by op kind '
      '(tools.roofline).')
  _JSON = flags.DEFINE_bool('json', False, 'Print one JSON object per run instead of a table.')
  _REPORT = flags.DEFINE_string(
      'report', None, 'Only print the table and details of the JSON lines in this file.')
  from ca2st_jax import cli  # pylint: disable=g-import-not-at-top
  app.run(main, flags_parser=cli.parse_flags)
