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

import collections
import importlib.metadata
import json
import math
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from flax import nnx

from ca2st_jax import models
from ca2st_jax.tools import summary

# Dense bf16 peak TFLOP/s per chip, matched against jax's device_kind / torch's device name.
PEAK_BF16_TFLOPS = (
    ('H100', 989.0), ('H200', 989.0), ('A100', 312.0),
    ('TPU v4', 275.0), ('TPU v5 lite', 197.0), ('TPU v5e', 197.0), ('TPU v5p', 459.0),
    ('TPU v5', 459.0), ('TPU v6 lite', 918.0), ('TPU v6e', 918.0),
)
AUDIO_MODELS = ('cava', 'ca2st')


def peak_tflops(device_kind: str):
  """The chip's dense bf16 peak, or None (CPU, unknown chips: no MFU)."""
  for name, peak in PEAK_BF16_TFLOPS:
    if name.lower() in device_kind.lower():
      return peak
  return None


def synthetic_batch(model_cfg, batch: int, seed: int = 0) -> dict:
  """A host batch of the shapes and dtypes the input pipeline yields (ca2st_jax.data.pipeline, "Batch layout")."""
  rng = np.random.default_rng(seed)
  size, frames = model_cfg.image_size, model_cfg.num_frames
  out = {'video': rng.integers(0, 256, (batch, frames, size, size, 3), dtype=np.uint8)}
  if models.family(model_cfg.name) in AUDIO_MODELS:
    out['audio'] = rng.standard_normal(
        (batch, model_cfg.spectrogram_length, model_cfg.num_mel_bins)).astype(np.float32)
    # Row 0: the audio crop [start, end] in seconds; rows 1..: the video's time slots inside it.
    slots = frames // model_cfg.tubelet_size
    edges = np.linspace(0.0, 10.0, slots + 1, dtype=np.float32)
    times = np.concatenate([[[0.0, 10.0]], np.stack([edges[:-1], edges[1:]], -1)]).astype(np.float32)
    out['audio_times'] = np.broadcast_to(times, (batch, slots + 1, 2)).copy()
  if models.is_compositional(model_cfg.name):
    out['verb'] = rng.integers(0, model_cfg.num_verbs, batch, dtype=np.int32)
    out['noun'] = rng.integers(0, model_cfg.num_nouns, batch, dtype=np.int32)
  else:
    out['label'] = rng.integers(0, model_cfg.num_classes, batch, dtype=np.int32)
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


_DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2, 's32': 4,
                'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8, 'c64': 8, 'c128': 16,
                'f8e4m3fn': 1, 'f8e5m2': 1, 's4': 1, 'u4': 1}
_SHAPE = re.compile(r'\b(' + '|'.join(_DTYPE_BYTES) + r')\[([0-9,]*)\]')
_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([\w\-]+)\((.*)$')
_NOT_ACCESSES = ('parameter', 'tuple', 'get-tuple-element', 'bitcast', 'constant',
                 'after-all', 'partition-id', 'replica-id', 'opt-barrier')


def _shape_bytes(text: str) -> int:
  total = 0
  for dtype, dims in _SHAPE.findall(text):
    total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(',') if d)
  return total


def _computations(hlo: str) -> tuple[dict, str]:
  """{computation name: [instruction lines]} and the entry computation's name."""
  comps, entry, current = {}, None, None
  for line in hlo.splitlines():
    header = re.match(r'^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$', line)
    if header and not line.startswith(' '):
      current = header.group(2)
      comps[current] = []
      if header.group(1):
        entry = current
    elif line.startswith('}'):
      current = None
    elif current is not None and '=' in line:
      comps[current].append(line)
  return comps, entry


def _elements(type_text: str) -> int:
  """Elements of the largest array in a type string."""
  return max((math.prod(int(d) for d in dims.split(',') if d) for _, dims in _SHAPE.findall(type_text)),
             default=0)


def _parse(hlo: str):
  """Per computation: [(name, result type, op, rest of line)], {name: result type} and the root's
  name."""
  comps, entry = _computations(hlo)
  parsed, types, roots = {}, {}, {}
  for comp, lines in comps.items():
    parsed[comp], types[comp] = [], {}
    for line in lines:
      m = _INSTRUCTION.match(line)
      if m:
        parsed[comp].append(m.groups())
        types[comp][m.group(1)] = m.group(2)
        if line.lstrip().startswith('ROOT '):
          roots[comp] = m.group(1)
  return parsed, types, roots, entry


def _operand_types(rest: str, types: dict) -> list[str]:
  operands = _operand_text(rest)
  names = re.findall(r'%([\w.\-]+)', operands)
  if not names:  # operands printed with their types
    return [operands]
  return [types.get(n, '') for n in names]


def _is_batched_dot(op: str, rest: str) -> bool:
  """A dot with batch dimensions: an HLO dot, or a GPU gemm custom-call (cuBLAS / cuBLASLt)."""
  if op == 'dot':
    return bool(re.search(r'lhs_batch_dims=\{[0-9,]+\}', rest))
  return op == 'custom-call' and bool(re.search(r'"lhs_batch_dimensions":\["\d', rest))


def _score_sizes(parsed, types) -> set:
  """Element counts of attention's N x N tensors: the largest array of each batched dot (q.k^T
  makes one, p.v reads one, and their gradients do the same), as long as tokens > head size."""
  sizes = set()
  for comp, instructions in parsed.items():
    for _, result_type, op, rest in instructions:
      if _is_batched_dot(op, rest):
        sizes.add(max(_elements(t) for t in [result_type, *_operand_types(rest, types[comp])]))
  return sizes


def _op_kind(op, result_type, rest, operand_types, parsed, score_sizes) -> str:
  """The kind of work an instruction of the optimised program does (for --bytes_by_op)."""
  called = re.findall(r'(?:calls|to_apply)=%?([\w.\-]+)', rest)
  body_ops = {i[2] for name in called for i in parsed.get(name, [])}
  ops = body_ops | {op}
  if op == 'custom-call':
    target = re.search(r'custom_call_target="([^"]+)"', rest)
    target = (target.group(1) if target else '').lower()
    if any(k in target for k in ('fmha', 'flash', 'attention', 'mha')):
      return 'fused attention kernel'
    if not any(k in target for k in ('gemm', 'matmul', 'dot', 'conv', 'cublas')):
      return f'custom-call {target}'
    ops.add('dot')
  largest = max((_elements(t) for t in [result_type, *operand_types]), default=0)
  on_scores = largest in score_sizes
  if ops & {'dot', 'convolution'}:
    return 'attention matmul (q.k, p.v)' if on_scores else 'matmul / conv'
  if on_scores:
    return 'attention scores (softmax etc.)'
  if 'rsqrt' in ops:
    return 'layernorm'
  if ops & {'all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all', 'collective-permute',
            'all-reduce-start', 'all-gather-start'}:
    return 'collective'
  if 'reduce' in ops:
    return 'other reduction'
  if ops <= {'copy', 'transpose', 'parameter', 'bitcast', 'reshape', 'fusion'}:
    return 'copy / transpose'
  if ops & {'dynamic-slice', 'dynamic-update-slice', 'slice', 'concatenate', 'pad', 'gather',
            'scatter'} and not ops & {'add', 'multiply', 'subtract', 'divide', 'exponential'}:
    return 'slice / concat / gather'
  return 'elementwise'


def _operand_text(rest: str) -> str:
  """The operand list of an instruction: `rest` up to the parenthesis closing `op(`."""
  depth = 1
  for i, ch in enumerate(rest):
    depth += {'(': 1, ')': -1}.get(ch, 0)
    if depth == 0:
      return rest[:i]
  return rest


def _operand_names(rest: str) -> list[str]:
  return re.findall(r'%([\w.\-]+)', _operand_text(rest))


def _accessed_bytes(op, result_type, rest, operand_types, parsed, types, roots) -> int:
  """Bytes an instruction reads and writes: its operands and result, except where XLA updates a
  buffer in place or reads a slice of it (a scan's per-layer weights and saved activations): a
  dynamic-slice reads its result's size, a dynamic-update-slice writes its update's size and does
  not read the buffer it updates, inside a fusion too. (XLA's cost analysis counts the same.)"""
  if op == 'dynamic-slice':
    return 2 * _shape_bytes(result_type)
  if op == 'dynamic-update-slice' and len(operand_types) > 1:
    return 2 * _shape_bytes(operand_types[1])
  fused = re.search(r'calls=%?([\w.\-]+)', rest) if op == 'fusion' else None
  if not fused or fused.group(1) not in parsed:
    return _shape_bytes(result_type) + sum(_shape_bytes(t) for t in operand_types)
  body = parsed[fused.group(1)]
  body_types = types[fused.group(1)]
  uses = collections.defaultdict(list)  # name -> [(user's op, operand position, user's type)]
  params = {}
  for name, type_text, body_op, body_rest in body:
    if body_op == 'parameter':
      params[int(re.match(r'\s*(\d+)', body_rest).group(1))] = name
    for position, operand in enumerate(_operand_names(body_rest)):
      uses[operand].append((body_op, position, type_text))

  def written(name) -> int:
    """Bytes the fusion writes for its output `name`: an in-place dynamic-update-slice writes its
    update."""
    instruction = next((i for i in body if i[0] == name), None)
    if instruction is None:
      return 0
    _, type_text, body_op, body_rest = instruction
    operands = _operand_names(body_rest)
    if body_op in ('tuple', 'bitcast'):
      return sum(written(o) for o in operands)
    if (body_op == 'dynamic-update-slice' and len(operands) > 1 and
        operands[0] in params.values()):  # updates the buffer it was given, in place
      return _shape_bytes(body_types.get(operands[1], ''))
    return _shape_bytes(type_text)

  read = 0
  for position, type_text in enumerate(operand_types):
    users = uses.get(params.get(position), [])
    if users and all(u[0] == 'dynamic-slice' and u[1] == 0 for u in users):
      read += sum(_shape_bytes(u[2]) for u in users)
    elif not (users and all(u[0] == 'dynamic-update-slice' and u[1] == 0 for u in users)):
      read += _shape_bytes(type_text)
  return read + written(roots.get(fused.group(1)))


def bytes_by_op(hlo: str) -> dict:
  """Bytes each kind of top-level instruction reads and writes in one run of the optimised program
  (operand + result sizes, as XLA's cost analysis counts them; loop bodies x their trip count)."""
  parsed, types, roots, entry = _parse(hlo)
  score_sizes = _score_sizes(parsed, types)
  totals = collections.Counter()

  def walk(comp, times, depth=0):
    if depth > 20:
      return
    for _, result_type, op, rest in parsed.get(comp, []):
      if op == 'while':
        body = re.search(r'body=%?([\w.\-]+)', rest)
        trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', rest)
        if body:
          walk(body.group(1), times * (int(trips.group(1)) if trips else 1), depth + 1)
        continue
      if op in ('call', 'conditional', 'async-start'):
        for callee in re.findall(r'(?:to_apply|calls|branch_computations=\{)%?([\w.\-]+)', rest):
          walk(callee, times, depth + 1)
        continue
      if op in _NOT_ACCESSES:
        continue
      operand_types = _operand_types(rest, types[comp])
      accessed = _accessed_bytes(op, result_type, rest, operand_types, parsed, types, roots)
      kind = _op_kind(op, result_type, rest, operand_types, parsed, score_sizes)
      totals[kind] += times * accessed

  walk(entry, 1)
  return dict(totals.most_common())


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
      by_op = bytes_by_op(compiled.as_text())
      results[name]['bytes_by_op_per_clip'] = {k: v * len(devices) / batch for k, v in by_op.items()}
  stats = devices[0].memory_stats() or {}
  results['peak_bytes'] = stats.get('peak_bytes_in_use')
  results['device'] = f'{len(devices)} x {devices[0].device_kind}'
  results['device_kind'] = devices[0].device_kind
  results['num_devices'] = len(devices)
  return results


# -------------------------------------------------------------------------------------- PyTorch


def run_torch(config, batch: int, steps: int, attention: str, warmup: int = 2) -> dict:
  """The PyTorch model trained as the authors train it, on the same synthetic batch."""
  import torch  # pylint: disable=g-import-not-at-top
  from ca2st_jax.interop import torch_model  # pylint: disable=g-import-not-at-top
  from ca2st_jax.interop import torch_mapping  # pylint: disable=g-import-not-at-top
  cfg = config.model
  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  torch_model.ATTENTION = attention
  torch.manual_seed(0)
  model = torch_model.build(cfg).to(device)
  with torch.no_grad():  # torch_model.build leaves zeros; any weights time the same but zeros
    for p in model.parameters():
      p.normal_(0.0, 0.02)
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
  optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.05)
  if cfg.dtype == 'float32':
    autocast_dtype = None
  else:  # the authors: fp16 + loss scaling on GPU; bf16 on CPU (no fp16 matmuls there)
    autocast_dtype = torch.float16 if device.type == 'cuda' else torch.bfloat16
  scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
  autocast = lambda: torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                    enabled=autocast_dtype is not None)

  host = synthetic_batch(cfg, batch)
  inputs = {k: torch.from_numpy(v).to(device) for k, v in host.items()}
  mean = torch.tensor([0.485, 0.456, 0.406], device=device)
  std = torch.tensor([0.229, 0.224, 0.225], device=device)
  tcfg = config.train
  lam, smoothing = 0.8, float(tcfg.get('label_smoothing', 0.0))

  def model_inputs():
    video = ((inputs['video'].float() / 255.0 - mean) / std).permute(0, 4, 1, 2, 3)
    out = {'video': video}
    if 'audio' in inputs:
      out['audio'], out['audio_times'] = inputs['audio'], inputs['audio_times']
    return out

  def mix(x):
    return lam * x + (1.0 - lam) * x.flip(0)

  def train_step():
    x = model_inputs()
    x['video'] = mix(x['video'])
    if 'audio' in x:
      x['audio'] = mix(x['audio'])
    with autocast():
      logits = model(**x)
    loss = 0.0
    for key, out in logits.items():
      n = out.shape[-1]
      target = torch.nn.functional.one_hot(inputs[key].long(), n).float()
      target = target * (1.0 - smoothing) + smoothing / n
      target = lam * target + (1.0 - lam) * target.flip(0)
      loss = loss + torch.sum(-target * torch.log_softmax(out.float(), -1), -1).mean()
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss

  def eval_step():
    with torch.no_grad(), autocast():
      return {k: torch.softmax(v.float(), -1) for k, v in model(**model_inputs()).items()}

  def timed(fn):
    for _ in range(warmup):
      fn()
    if device.type == 'cuda':
      torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
      fn()
    if device.type == 'cuda':
      torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps

  model.train()  # no dropout or drop-path in the module: train/eval only differ in name here
  results = {}
  if device.type == 'cuda':
    torch.cuda.reset_peak_memory_stats()
  for name, fn in (('train_step', train_step), ('eval_step', eval_step)):
    step_s = timed(fn)
    results[name] = {'step_ms': step_s * 1e3, 'clips_per_s': batch / step_s}
  results['peak_bytes'] = torch.cuda.max_memory_allocated() if device.type == 'cuda' else None
  results['device'] = (f'1 x {torch.cuda.get_device_name()}' if device.type == 'cuda'
                       else f'1 x cpu ({torch.get_num_threads()} threads)')
  results['device_kind'] = torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'
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
                 f"(HLO operands + results: {total / 1e9:.2f} GB; XLA cost analysis: "
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
      'bytes_by_op', False, 'Also group the bytes each compiled JAX step accesses by op kind.')
  _JSON = flags.DEFINE_bool('json', False, 'Print one JSON object per run instead of a table.')
  _REPORT = flags.DEFINE_string(
      'report', None, 'Only print the table and details of the JSON lines in this file.')
  from ca2st_jax import cli  # pylint: disable=g-import-not-at-top
  app.run(main, flags_parser=cli.parse_flags)
