"""Roofline of a compiled step: what each kernel of the optimised HLO computes, reads and writes,
and how long a target chip needs for it.

  python -m ca2st_jax.tools.aot --config=configs/cast_k400.py --topology=h100-1 \\
      --per_device_batch=8 --roofline

Every top-level instruction of the optimised program that is not bookkeeping (parameter, tuple,
get-tuple-element, bitcast, constant, ...) is one kernel; the bodies of loops run once per trip
(XLA's `known_trip_count`, or where a program has none, as the TPU compiler's do, the bound that
its condition compares a counter with, less the counter's start; a loop whose condition is no
such comparison, such as a rejection sampler, counts once), called
computations (command buffers, conditionals) once per call. Per kernel:

- FLOPs: 2 x the multiply-accumulates of its dots and convolutions (cuBLAS / cuDNN custom calls
  included; of a convolution, only the window taps that meet an input value, not padding or the
  holes of a dilated input), nothing for elementwise work;
- bytes: its operands and results, except where XLA reads a slice of a buffer or updates one in
  place (a scan's per-layer weights and saved activations, an unrolled layer's weights): a slice
  or dynamic-slice reads its slice, a dynamic-update-slice writes its update and does not read
  the buffer, inside a fusion too and through the bitcasts XLA puts between the buffer and the
  slice;
- time: max(FLOPs / (peak x matmul efficiency), bytes / (bandwidth x bandwidth efficiency)) plus
  the target's per-kernel overhead.

Attention the target runs as a fused kernel is costed as one flash kernel per attention and
direction, whatever the compiled program does: forward 4 B H Tq Tk D FLOPs reading q, k, v and
writing o and the softmax statistics; backward 10 B H Tq Tk D FLOPs (the scores recomputed, then
dP, dV, dQ, dK) reading q, k, v, o, dO and the statistics and writing dq, dk, dv; at the flash
efficiency. On a GPU target that is cuDNN's kernel, on lengths padded to even as the model pads
them (models.layers.attention); the program compiled without a GPU holds XLA's attention there
(cuDNN cannot be traced without one) behind cuDNN's operand boundary (the 'cudnn_stand_in'
attention of tools.aot), so the kernels of each attention are found by the named scope
models.layers.attention puts around it (or, for a product that lost its metadata, by the sizes of
its arrays) and replaced.
On TPU the Pallas flash kernel is already in the program (custom calls), costed by the products
it computes on its padded blocks: forward 2, backward 4 (dK, dV) + 3 (dQ), the scores recomputed
in both backward kernels.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import re

DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2, 's32': 4,
               'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8, 'c64': 8, 'c128': 16,
               'f8e4m3fn': 1, 'f8e5m2': 1, 's4': 1, 'u4': 1}
_ARRAY = re.compile(r'\b(' + '|'.join(DTYPE_BYTES) + r')\[([0-9,]*)\]')
_INSTRUCTION = re.compile(r'^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([\w\-]+)\((.*)$')
_HEADER = re.compile(r'^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$')
# Instructions that launch no kernel and move no data.
NOT_KERNELS = frozenset((
    'parameter', 'tuple', 'get-tuple-element', 'bitcast', 'constant', 'after-all', 'partition-id',
    'replica-id', 'opt-barrier', 'add-dependency', 'domain'))
# Index arithmetic around a slice or an update: no data of its own.
_INDEX_OPS = frozenset(('parameter', 'constant', 'bitcast', 'add', 'subtract', 'multiply',
                        'compare', 'select', 'clamp', 'and', 'or', 'minimum', 'maximum', 'convert',
                        'broadcast', 'iota'))
_MOVE_OPS = frozenset(('parameter', 'constant', 'bitcast', 'copy', 'transpose', 'reshape', 'pad',
                       'slice', 'concatenate', 'broadcast', 'iota', 'reverse'))
_COLLECTIVES = frozenset(('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all',
                          'collective-permute', 'all-reduce-start', 'all-gather-start',
                          'collective-permute-start'))
_RANDOM = ('threefry', '_beta', '_gamma', '_uniform', '_normal', 'bernoulli', 'random_bits')

GROUPS = (
    'attention (fused kernel)', 'attention (XLA)', 'matmul', 'layernorm',
    'reductions (LN backward, bias grads)', 'activation', 'scan-stack writes', 'scan-stack reads',
    'fills', 'copies / transposes', 'converts', 'optimiser', 'random numbers', 'collectives',
    'other elementwise')


# ------------------------------------------------------------------------------------------ parsing
@dataclasses.dataclass
class Instruction:
  name: str
  type: str           # the result type text: 'bf16[8,197,768]{2,1,0}' or a tuple
  op: str
  operands: list      # operand names
  operand_text: str   # the operand list as printed (types inline in some dumps)
  attrs: str          # everything after the operand list
  root: bool

  @property
  def op_name(self) -> str:
    found = re.search(r'op_name="([^"]*)"', self.attrs)
    return found.group(1) if found else ''

  def attr(self, key: str) -> str | None:
    found = re.search(key + r'=%?([\w.\-]+)', self.attrs)
    return found.group(1) if found else None


@dataclasses.dataclass
class Module:
  computations: dict   # name -> [Instruction]
  entry: str
  header: str = ''     # the HloModule line

  def __post_init__(self):
    self.types = {c: {i.name: i.type for i in body} for c, body in self.computations.items()}
    self.by_name = {c: {i.name: i for i in body} for c, body in self.computations.items()}
    self.roots = {c: next((i.name for i in body if i.root), body[-1].name if body else None)
                  for c, body in self.computations.items()}


def _split_operands(rest: str) -> tuple[str, str]:
  """`rest` after 'op(' → (operand list, attributes after it)."""
  depth = 1
  for i, ch in enumerate(rest):
    depth += {'(': 1, ')': -1}.get(ch, 0)
    if depth == 0:
      return rest[:i], rest[i + 1:]
  return rest, ''


def parse(hlo: str) -> Module:
  """The computations of an HLO module's text (`compiled.as_text()`)."""
  computations, entry, current = {}, None, None
  for line in hlo.splitlines():
    header = _HEADER.match(line)
    if header and not line.startswith(' '):
      current = header.group(2)
      computations[current] = []
      if header.group(1):
        entry = current
      continue
    if line.startswith('}'):
      current = None
      continue
    if current is None:
      continue
    m = _INSTRUCTION.match(line)
    if m:
      operand_text, attrs = _split_operands(m.group(5))
      computations[current].append(Instruction(
          name=m.group(2), type=m.group(3), op=m.group(4),
          operands=re.findall(r'%([\w.\-]+)', operand_text), operand_text=operand_text,
          attrs=attrs, root=bool(m.group(1))))
  if entry is None:
    raise ValueError('no ENTRY computation in the HLO text')
  header = next((line for line in hlo.splitlines() if line.startswith('HloModule')), '')
  return Module(computations, entry, header)


def array_bytes(type_text: str) -> int:
  return sum(DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(',') if d)
             for dtype, dims in _ARRAY.findall(type_text))


def _dims(type_text: str) -> list[int]:
  """Dimensions of the first array in a type."""
  found = _ARRAY.search(type_text)
  return [int(d) for d in found.group(2).split(',') if d] if found else []


def _elements(type_text: str) -> int:
  return math.prod(_dims(type_text))


def _operand_types(module: Module, comp: str, inst: Instruction) -> list[str]:
  if not inst.operands:  # operands printed with their types
    return [t for t in re.split(r',\s*(?![^\[]*\])', inst.operand_text) if _ARRAY.search(t)]
  return [module.types[comp].get(n, '') for n in inst.operands]


def _kernel_result_type(inst: Instruction) -> str:
  """The result minus a custom call's scratch workspace (cuBLAS: a trailing s8[N])."""
  if inst.op == 'custom-call' and inst.type.startswith('('):
    return re.sub(r',\s*s8\[\d+\]\{0\}\)$', ')', inst.type)
  return inst.type


# -------------------------------------------------------------------------------------------- FLOPs
def _window_field(attrs: str, key: str, i: int, default: int) -> int:
  """Dimension i of a convolution window's `key` (size, stride, pad, lhs_dilate, rhs_dilate);
  of a pad, its low side."""
  found = re.search(r'window=\{[^}]*\b' + key + r'=([0-9x_\-]+)', attrs)
  if not found:
    return default
  return int(found.group(1).split('x')[i].split('_')[0])


def _window_taps(attrs: str, i: int, size: int, window: int, outputs: int) -> int:
  """(output position, window tap) pairs of spatial dimension i of a convolution that meet an
  input value, not padding or the holes of a dilated input. The TPU compiler writes batched
  matmuls and weight gradients as convolutions whose windows are mostly padding."""
  return _taps(_window_field(attrs, 'stride', i, 1), _window_field(attrs, 'lhs_dilate', i, 1),
               _window_field(attrs, 'rhs_dilate', i, 1), _window_field(attrs, 'pad', i, 0),
               size, window, outputs)


@functools.lru_cache(maxsize=None)
def _taps(stride, dilation, rhs_dilation, low, size, window, outputs) -> int:
  dilated = (size - 1) * dilation + 1
  return sum(0 <= p < dilated and p % dilation == 0
             for o in range(outputs) for p in range(o * stride - low,
                                                    o * stride - low + window * rhs_dilation,
                                                    rhs_dilation))


def _dot_flops(module, comp, inst) -> int:
  """2 x MACs of a dot, a cuBLAS gemm custom call or a convolution (0 for anything else)."""
  operand_types = _operand_types(module, comp, inst)
  if inst.op == 'dot' or (inst.op == 'custom-call' and 'gemm_backend_config' in inst.attrs):
    if inst.op == 'dot':
      found = re.search(r'lhs_contracting_dims=\{([0-9,]*)\}', inst.attrs)
      contracting = [int(d) for d in found.group(1).split(',') if d] if found else []
    else:
      found = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', inst.attrs)
      contracting = [int(d) for d in re.findall(r'\d+', found.group(1))] if found else []
    lhs = _dims(operand_types[0]) if operand_types else []
    return 2 * _elements(inst.type) * math.prod(lhs[d] for d in contracting if d < len(lhs))
  if inst.op == 'convolution' or (inst.op == 'custom-call' and '$conv' in inst.attrs):
    labels = re.search(r'dim_labels=(\w+)_(\w+)->(\w+)', inst.attrs)
    if not labels or len(operand_types) < 2:
      return 0
    lhs_labels, kernel_labels, out_labels = labels.groups()
    lhs, kernel, out = _dims(operand_types[0]), _dims(operand_types[1]), _dims(inst.type)
    spatial = [c for c in out_labels if c.isdigit()]
    positions = math.prod(out[out_labels.index(c)] for c in spatial)
    taps = 1
    for i, c in enumerate(spatial):
      taps *= _window_taps(inst.attrs, i, lhs[lhs_labels.index(c)], kernel[kernel_labels.index(c)],
                           out[out_labels.index(c)])
    # Per output position: every input feature of its group at every tap that meets the input.
    return 2 * (_elements(inst.type) // max(positions, 1)) * kernel[kernel_labels.index('i')] * taps
  return 0


def _called(inst: Instruction) -> list[str]:
  return re.findall(r'(?:calls|to_apply|body|condition|branch_computations=\{)=?%?([\w.\-]+)',
                    inst.attrs)


# -------------------------------------------------------------------------------------------- bytes
def _through_bitcasts(body: dict, users: dict, name: str) -> list:
  """The users of `name` seen through bitcasts: [(user instruction, operand position)]."""
  found = []
  for user, position in users.get(name, []):
    if user.op == 'bitcast':
      found += _through_bitcasts(body, users, user.name)
    else:
      found.append((user, position))
  return found


def _resolve_bitcasts(body: dict, name: str) -> str:
  """The instruction a chain of bitcasts starts from."""
  while name in body and body[name].op == 'bitcast' and body[name].operands:
    name = body[name].operands[0]
  return name


def _fusion_bytes(module: Module, fused: str, operand_types: list[str], result_type: str) -> int:
  body = module.by_name[fused]
  users = collections.defaultdict(list)
  params = {}
  for inst in module.computations[fused]:
    if inst.op == 'parameter':
      params[int(re.match(r'\s*(\d+)', inst.operand_text).group(1))] = inst.name
    for position, operand in enumerate(inst.operands):
      users[operand].append((inst, position))
  param_names = set(params.values())

  read = 0
  for position, type_text in enumerate(operand_types):
    seen = _through_bitcasts(body, users, params.get(position))
    if seen and all(u.op in ('slice', 'dynamic-slice') and p == 0 for u, p in seen):
      read += sum(array_bytes(u.type) for u, _ in seen)
    elif not (seen and all(u.op == 'dynamic-update-slice' and p == 0 for u, p in seen)):
      read += array_bytes(type_text)

  def written(name) -> int:
    inst = body.get(name)
    if inst is None:
      return 0
    if inst.op in ('tuple', 'bitcast'):
      return sum(written(o) for o in inst.operands)
    if (inst.op == 'dynamic-update-slice' and len(inst.operands) > 1 and
        _resolve_bitcasts(body, inst.operands[0]) in param_names):  # in place
      return array_bytes(module.types[fused].get(inst.operands[1], ''))
    return array_bytes(inst.type)

  return read + written(module.roots[fused])


def _bytes(module: Module, comp: str, inst: Instruction) -> int:
  operand_types = _operand_types(module, comp, inst)
  result = _kernel_result_type(inst)
  if inst.op in ('slice', 'dynamic-slice'):
    return 2 * array_bytes(result)
  if inst.op == 'dynamic-update-slice' and len(operand_types) > 1:
    return 2 * array_bytes(operand_types[1])
  fused = inst.attr('calls') if inst.op == 'fusion' else None
  if fused in module.computations:
    return _fusion_bytes(module, fused, operand_types, result)
  return array_bytes(result) + sum(array_bytes(t) for t in operand_types)


# -------------------------------------------------------------------------------------- the kernels
@dataclasses.dataclass
class Kernel:
  computation: str
  name: str
  op: str
  op_name: str
  group: str
  runs: int           # times it runs per step (loop trips)
  flops: int          # per run
  bytes: int          # per run
  body_ops: frozenset
  arrays: tuple       # element counts of its result and operands (attention matching)


def _body(module, inst):
  fused = inst.attr('calls') if inst.op == 'fusion' else None
  return module.computations.get(fused, []) if fused else []


def _group(module, comp, inst, body, flops, train: bool) -> str:
  ops = frozenset(i.op for i in body) | {inst.op}
  name = inst.op_name
  if flops:
    return 'matmul'
  if inst.op == 'custom-call':
    return 'other elementwise'
  if ops & _COLLECTIVES:
    return 'collectives'
  if any(k in name for k in _RANDOM):
    return 'random numbers'
  step = re.sub(r'^jit\([^)]*\)/', '', name)
  if train and name and not step.startswith(('jvp(', 'transpose(')):
    return 'optimiser'
  moves = _INDEX_OPS | _MOVE_OPS | {'fusion', 'tuple'}
  if 'dynamic-update-slice' in ops and ops <= moves | {'dynamic-update-slice', 'dynamic-slice'}:
    return 'scan-stack writes'
  if 'convert' in ops and ops <= moves | {'dynamic-slice'}:
    return 'converts'
  if 'dynamic-slice' in ops and ops <= moves | {'dynamic-slice'}:
    return 'scan-stack reads'
  if ops <= {'broadcast', 'constant', 'parameter', 'bitcast', 'fusion', 'iota', 'copy', 'tuple'}:
    return 'fills'
  if 'rsqrt' in ops:
    return 'layernorm'
  if ops & {'erf', 'erfc', 'logistic', 'tanh', 'exponential'}:
    return 'activation'
  if 'reduce' in ops:
    return 'reductions (LN backward, bias grads)'
  if ops <= _MOVE_OPS | {'fusion', 'tuple'}:
    return 'copies / transposes'
  return 'other elementwise'


def _constant(module: Module, comp: str, name: str) -> int | None:
  """The integer value of `name` in `comp`, through copies and bitcasts; None if not a constant."""
  inst = module.by_name[comp].get(name)
  while inst is not None and inst.op in ('copy', 'bitcast') and inst.operands:
    inst = module.by_name[comp].get(inst.operands[0])
  if inst is None or inst.op != 'constant':
    return None
  try:
    return int(inst.operand_text.strip())
  except ValueError:
    return None


def trip_count(module: Module, comp: str, loop: Instruction) -> int:
  """Trips of a while loop: XLA's known_trip_count, else from a condition `counter < bound`
  (or `bound > counter`) with the counter's start a constant of the loop's initial tuple; 1
  when neither says."""
  known = re.search(r'"known_trip_count":\{"n":"(\d+)"', loop.attrs)
  if known:
    return int(known.group(1))
  condition = loop.attr('condition')
  body = module.by_name.get(condition, {})
  compare = body.get(module.roots.get(condition))
  direction = re.search(r'direction=(\w+)', compare.attrs) if compare is not None else None
  if compare is None or compare.op != 'compare' or not direction or len(compare.operands) != 2:
    return 1
  counter, bound = compare.operands
  if direction.group(1) in ('GT', 'GE'):
    counter, bound = bound, counter
  elif direction.group(1) not in ('LT', 'LE'):
    return 1
  counter, limit = body.get(counter), _constant(module, condition, bound)
  if counter is None or counter.op != 'get-tuple-element' or limit is None:
    return 1
  index = int(re.search(r'index=(\d+)', counter.attrs).group(1))
  initial = module.by_name[comp].get(loop.operands[0]) if loop.operands else None
  start = (_constant(module, comp, initial.operands[index])
           if initial is not None and initial.op == 'tuple' and index < len(initial.operands)
           else None)
  trips = limit - (start or 0) + (direction.group(1) in ('LE', 'GE'))
  return max(trips, 1)


def kernels(module: Module, *, train: bool) -> list[Kernel]:
  """Every kernel of one run of the program, with its runs per step, FLOPs and bytes per run."""
  found = []

  def walk(comp, runs, depth=0):
    if depth > 32:
      raise ValueError(f'HLO calls nest deeper than 32 computations at {comp}')
    for inst in module.computations.get(comp, []):
      if inst.op == 'while':
        walk(inst.attr('body'), runs * trip_count(module, comp, inst), depth + 1)
        continue
      if inst.op in ('call', 'conditional'):
        for callee in _called(inst):
          walk(callee, runs, depth + 1)
        continue
      if inst.op in NOT_KERNELS or inst.op.endswith('-done'):
        continue
      body = _body(module, inst)
      flops = _dot_flops(module, comp, inst) + sum(
          _dot_flops(module, inst.attr('calls'), i) for i in body)
      arrays = tuple(_elements(t) for t in [_kernel_result_type(inst),
                                              *_operand_types(module, comp, inst)])
      found.append(Kernel(
          computation=comp, name=inst.name, op=inst.op, op_name=inst.op_name,
          group=_group(module, comp, inst, body, flops, train), runs=runs, flops=flops,
          bytes=_bytes(module, comp, inst), body_ops=frozenset(i.op for i in body) | {inst.op},
          arrays=arrays))

  walk(module.entry, 1)
  return found


# ------------------------------------------------------------------------------------------ targets
@dataclasses.dataclass(frozen=True)
class Chip:
  peak_flops: float        # dense bf16, per chip
  bandwidth: float         # HBM bytes/s
  kernel_overhead_s: float  # launch (GPU) or per-op pipeline fill and drain (TPU)
  fused_attention: str     # 'cudnn': flash kernels for even lengths; 'tpu_flash': in the program


CHIPS = {
    # GPU: ~3 µs per kernel launch and tail (CUDA graphs would save part of it).
    'h100': Chip(989e12, 3.35e12, 3e-6, 'cudnn'),
    'h200': Chip(989e12, 4.8e12, 3e-6, 'cudnn'),
    # TPU: one program, no launches; ~1 µs per fusion of pipeline fill and drain.
    'v5p': Chip(459e12, 2.76e12, 1e-6, 'tpu_flash'),
    'v5e': Chip(197e12, 0.82e12, 1e-6, 'tpu_flash'),
    'v6e': Chip(918e12, 1.64e12, 1e-6, 'tpu_flash'),
    'v4': Chip(275e12, 1.2e12, 1e-6, 'tpu_flash'),
}


@dataclasses.dataclass(frozen=True)
class Efficiency:
  matmul: float = 0.70
  bandwidth: float = 0.85
  flash: float = 0.50


def chip_of(topology: str) -> Chip:
  family = topology.split('-')[0]
  family = {'v5litepod': 'v5e'}.get(family, family)
  if family not in CHIPS:
    raise ValueError(f'--topology={topology!r}: no roofline figures for {family!r}; known: '
                     f'{", ".join(sorted(CHIPS))}')
  return CHIPS[family]


# ---------------------------------------------------------------------------------------- attention
# models.layers.attention runs each call in a named scope: 'attention<call>_bh<B*H>_q<Tq>_k<Tk>_d<D>'.
_SCOPE = re.compile(r'attention(\d+)_bh(\d+)_q(\d+)_k(\d+)_d(\d+)')


@dataclasses.dataclass
class Attention:
  call: int
  heads_batch: int    # B x H on one chip
  q_len: int
  k_len: int
  head_dim: int
  itemsize: int = 2   # q, k, v, o in the compute dtype
  forward: int = 0    # forward passes per step
  backward: int = 0   # backward passes per step
  fused: bool = False

  def macs(self):
    return self.heads_batch * self.q_len * self.k_len * self.head_dim

  def forward_kernel(self):
    """(FLOPs, bytes) of one flash forward: reads q, k, v; writes o and the row statistics."""
    io = self.itemsize * self.heads_batch * self.head_dim * (2 * self.q_len + 2 * self.k_len)
    return 4 * self.macs(), io + 4 * self.heads_batch * self.q_len

  def backward_kernel(self):
    """(FLOPs, bytes) of one flash backward: reads q, k, v, o, dO, statistics; writes dq, dk, dv."""
    io = self.itemsize * self.heads_batch * self.head_dim * (4 * self.q_len + 4 * self.k_len)
    return 10 * self.macs(), io + 4 * self.heads_batch * self.q_len

  def shape(self):
    return (self.heads_batch, self.q_len, self.k_len, self.head_dim)

  def sizes(self) -> set:
    """Element counts of the arrays its kernels touch, with lengths padded to even (the model's
    padding for cuDNN) or to 8 (cuBLAS)."""
    lengths = lambda n: {n, n + n % 2, -(-n // 8) * 8}
    q, k = lengths(self.q_len), lengths(self.k_len)
    return {self.heads_batch * a * b for a in q | {self.head_dim} for b in k | q}


def _is_batched_dot(module, k: Kernel) -> bool:
  inst = module.by_name[k.computation][k.name]
  for i in [inst, *_body(module, inst)]:
    if i.op == 'dot' and re.search(r'lhs_batch_dims=\{[0-9,]+\}', i.attrs):
      return True
    if i.op == 'custom-call' and re.search(r'"lhs_batch_dimensions":\["\d', i.attrs):
      return True
  return False


def _pallas_flash_flops(module, k: Kernel) -> int:
  """FLOPs of a Pallas TPU flash kernel on its (padded) [B, H, T, D] q and k: forward q.k^T and
  p.v; backward dK, dV kernel 4 products (the scores recomputed), dQ kernel 3."""
  inst = module.by_name[k.computation][k.name]
  q, key = (_dims(t) for t in _operand_types(module, k.computation, inst)[:2])
  macs = math.prod(q) * key[-2] if len(q) == 4 and len(key) == 4 else 0
  products = 4 if 'bwd_dkv' in k.op_name else 3 if 'bwd_dq' in k.op_name else 2
  return 2 * products * macs


def attentions_of(module: Module, found: list[Kernel], train: bool) -> tuple[dict, dict]:
  """The attentions of the program ({call: Attention}, with their forward and backward passes per
  step) and the call each kernel works for ({kernel index: call}): by the named scope, or for a
  kernel that lost its metadata (a padded cuBLAS product) by the sizes of its arrays."""
  partitions = re.search(r'num_partitions=(\d+)', module.header)
  partitions = int(partitions.group(1)) if partitions else 1
  attentions, owner = {}, {}
  for index, k in enumerate(found):
    scope = _SCOPE.search(k.op_name)
    if not scope:
      continue
    call, bh, q_len, k_len, head_dim = map(int, scope.groups())
    if call not in attentions:
      per_chip = bh // partitions if bh % partitions == 0 else bh
      attentions[call] = Attention(call, per_chip, q_len, k_len, head_dim)
    a = attentions[call]
    owner[index] = call
    if train and 'transpose(' in k.op_name:
      a.backward = max(a.backward, k.runs)
    else:
      a.forward = max(a.forward, k.runs)
  for index, k in enumerate(found):
    if index in owner or k.op_name or not _is_batched_dot(module, k):
      continue
    arrays = {s for s in k.arrays if s}
    match = [c for c, a in attentions.items() if arrays <= a.sizes()]
    if match:
      owner[index] = match[0]
  return attentions, owner


# ------------------------------------------------------------------------------------------- totals
def roofline(hlo: str, topology: str, *, train: bool, model_flops: float | None = None,
             efficiency: Efficiency = Efficiency()) -> dict:
  """Predicted time of one run of the compiled program on one chip of `topology`.

  train: the program is a train step (its backward ops carry 'transpose(' in their op_name).
  model_flops: the model's FLOPs for this program's work on one chip, for the MFU.
  Returns totals ('flops', 'bytes', 'kernels', 'seconds', 'mfu'), 'groups' {group: totals},
  'fused_attention' and 'xla_attention' (the attentions as costed), 'chip', 'efficiency'.
  """
  chip = chip_of(topology)
  module = parse(hlo)
  found = kernels(module, train=train)
  attentions, owner = attentions_of(module, found, train)
  for a in attentions.values():
    # TPU: the program already holds the Pallas kernel where the model uses it. cuDNN: every
    # attention, odd lengths padded to even (models.layers.attention).
    a.fused = chip.fused_attention == 'cudnn'
    a.q_len += a.q_len % 2 if a.fused else 0
    a.k_len += a.k_len % 2 if a.fused else 0

  def seconds(flops, nbytes, flop_efficiency):
    return max(flops / (chip.peak_flops * flop_efficiency),
               nbytes / (chip.bandwidth * efficiency.bandwidth)) + chip.kernel_overhead_s

  groups = {g: dict(kernels=0, flops=0, bytes=0, seconds=0.0) for g in GROUPS}

  def add(group, runs, flops, nbytes, flop_efficiency):
    g = groups[group]
    g['kernels'] += runs
    g['flops'] += runs * flops
    g['bytes'] += runs * nbytes
    g['seconds'] += runs * seconds(flops, nbytes, flop_efficiency)

  in_program = set()  # attentions whose fused kernel the program holds (TPU Pallas, cuDNN)
  for index, k in enumerate(found):
    call = owner.get(index)
    if call is not None and attentions[call].fused:
      continue  # replaced by its flash kernels below
    if call is not None and k.op == 'custom-call' and not k.flops:
      in_program.add(call)
      add('attention (fused kernel)', k.runs, _pallas_flash_flops(module, k), k.bytes,
          efficiency.flash)
    elif call is not None:
      add('attention (XLA)', k.runs, k.flops, k.bytes, efficiency.matmul)
    else:
      add(k.group, k.runs, k.flops, k.bytes, efficiency.matmul)
  for a in attentions.values():
    if a.fused:
      add('attention (fused kernel)', a.forward, *a.forward_kernel(), efficiency.flash)
      add('attention (fused kernel)', a.backward, *a.backward_kernel(), efficiency.flash)

  def listing(selected):
    shapes = collections.Counter()
    for a in selected:
      shapes[a.shape()] += a.forward
    return [f'{n} x [B*H={bh}, Tq={q}, Tk={k}, D={d}]' for (bh, q, k, d), n in shapes.items()]

  totals = {key: sum(g[key] for g in groups.values())
            for key in ('kernels', 'flops', 'bytes', 'seconds')}
  return {
      **totals, 'groups': {g: v for g, v in groups.items() if v['kernels']},
      'fused_attention': listing(a for a in attentions.values()
                                 if a.fused or a.call in in_program),
      'xla_attention': listing(a for a in attentions.values()
                               if not (a.fused or a.call in in_program)),
      'chip': dataclasses.asdict(chip), 'efficiency': dataclasses.asdict(efficiency),
      'mfu': None if model_flops is None else model_flops / (totals['seconds'] * chip.peak_flops),
  }


def bytes_by_group(hlo: str, *, train: bool = True) -> dict:
  """Bytes each group of kernels reads and writes in one run of the program, as compiled."""
  module = parse(hlo)
  found = kernels(module, train=train)
  _, owner = attentions_of(module, found, train)
  totals = collections.Counter()
  for index, k in enumerate(found):
    group = k.group
    if index in owner:
      group = 'attention (fused kernel)' if k.op == 'custom-call' and not k.flops else 'attention (XLA)'
    totals[group] += k.runs * k.bytes
  return dict(totals.most_common())


def format_table(result: dict, clips: float, title: str = '') -> str:
  """The roofline by group, bytes per clip (clips: the program's clips on this chip)."""
  e = result['efficiency']
  chip = result['chip']
  lines = [f'{title}roofline: {result["seconds"] * 1e3:.1f} ms, {result["kernels"]:,} kernels, '
           f'{result["bytes"] / clips / 1e9:.2f} GB per clip, {result["flops"] / 1e12:.3g} TFLOP'
           + ('' if result['mfu'] is None else f', MFU {100 * result["mfu"]:.1f} %'),
           f'  chip: {chip["peak_flops"] / 1e12:.0f} TFLOP/s, {chip["bandwidth"] / 1e12:.2f} TB/s, '
           f'{chip["kernel_overhead_s"] * 1e6:.0f} us per kernel; efficiencies: matmul '
           f'{e["matmul"]:.0%}, bandwidth {e["bandwidth"]:.0%}, flash {e["flash"]:.0%}',
           f'  {"group":<38}{"kernels":>9}{"GB/clip":>10}{"TFLOP":>9}{"ms":>9}']
  for group, g in sorted(result['groups'].items(), key=lambda kv: -kv[1]['seconds']):
    lines.append(f'  {group:<38}{g["kernels"]:>9,}{g["bytes"] / clips / 1e9:>10.3f}'
                 f'{g["flops"] / 1e12:>9.3f}{g["seconds"] * 1e3:>9.2f}')
  if result['fused_attention']:
    lines.append('  costed as flash kernels: ' + '; '.join(result['fused_attention']))
  if result['xla_attention']:
    lines.append("  on XLA's path: " + '; '.join(result['xla_attention']))
  return '\n'.join(lines)


if __name__ == '__main__':
  import sys
  # python -m ca2st_jax.tools.roofline FILE.hlo TOPOLOGY [train|eval] [clips]
  text = open(sys.argv[1]).read()
  r = roofline(text, sys.argv[2], train=(sys.argv[3:4] or ['train'])[0] == 'train')
  print(format_table(r, float((sys.argv[4:5] or [1])[0])))
  print(json.dumps({k: v for k, v in r.items() if k != 'groups'}))
