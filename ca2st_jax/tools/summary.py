"""Parameter counts and forward cost of a configured model, without allocating weights.

  python -m ca2st_jax.tools.summary --config=configs/cast_k400.py [--json]

Counts come from the abstract model (`nnx.eval_shape`); arrays shared under two names
(CA²ST's shared projections) count once. GMACs per view are the multiply-accumulates of the
matrix products and convolutions in the traced forward of one view on abstract inputs; TFLOP per
clip are 2 x MACs of the forward and of a train step's forward + backward over the trainable set
(no weight gradients for the frozen experts: about 2.3 x the forward for CAST).
"""
import json
import math
import re

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import config_flags

from ca2st_jax import models

def part_of(path) -> str:
  """Which part of the model a parameter belongs to, for the per-part counts."""
  path = tuple(str(p) for p in path)
  if path[0] in models.EXPERTS:
    return path[0]
  if path[0] in ('layers', 'audio_exchange_layers'):  # stacked: ('layers', module, ...)
    return 'adapters' if path[1].endswith('adapter') else 'exchange'
  if path[0] == 'time_encoding':
    return 'time_encoding'
  return 'heads'


def parameter_counts(model):
  """{'total', 'trainable', 'parts': {part: {'total', 'trainable'}}} of an (abstract) model."""
  parts = {}
  totals = {'total': 0, 'trainable': 0}
  for path, param in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    n = math.prod(param.shape)
    part = parts.setdefault(part_of(path), {'total': 0, 'trainable': 0})
    trainable = models.is_trainable(path)
    for counts in (part, totals):
      counts['total'] += n
      counts['trainable'] += n if trainable else 0
  return {**totals, 'parts': parts}


def abstract_inputs(cfg, batch=1):
  """The model's inputs for one batch (models.batch_spec; video as normalised float32 frames)."""
  spec = models.batch_spec(cfg, batch)
  video = spec.pop('video')
  return dict(spec, video=jax.ShapeDtypeStruct(video.shape, jnp.float32))


def _subjaxprs(eqn):
  for value in eqn.params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(item, jax.extend.core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jax.extend.core.Jaxpr):
        yield item


def count_macs(jaxpr, *, skip_recompute: bool = False) -> int:
  """Multiply-accumulates of every dot_general and convolution in a jaxpr, nested ones included
  (a scan's body counted once per iteration, a cond's costliest branch, a shard_map's body once
  per shard). A fused attention kernel counts as FlashAttention's formula on the attention's
  true lengths (_FLASH_UNITS), not as the products over the padded blocks it computes.

  skip_recompute: in the backward pass of a rematerialised region (XLA's attention recomputes its
  scores there), count only the products that carry the cotangent, not the recomputed forward:
  model FLOPs, as MFU counts them. The region must have one output (then its cotangent is the
  region's last input), which holds for the attention and for nothing else under
  `counting_config`.
  """
  return _count_macs(jaxpr, skip_recompute, cotangent=None, lengths=None)


# The named scope of every attention call (models.layers.attention): its true lengths.
_ATTENTION_SCOPE = re.compile(r'attention\d+_bh\d+_q(\d+)_k(\d+)_d\d+')
# MACs of a fused attention kernel in units of batch x heads x q length x k length x head width:
# the forward's two products (q k^T, p v); the backward's four gradient products and one
# recomputation of q k^T, split as the TPU kernels split them (dk and dv, then dq).
_FLASH_UNITS = (('bwd_dkv', 3), ('bwd_dq', 2), ('', 2))


def _flash_macs(eqn, lengths) -> int:
  """A Pallas flash-attention call's MACs by _FLASH_UNITS; its first operand is q, [B, H, T, D]."""
  stack = str(eqn.source_info.name_stack)
  units = next(u for kernel, u in _FLASH_UNITS if kernel in stack)
  batch, heads, _, head_dim = eqn.invars[0].aval.shape
  return units * batch * heads * lengths[0] * lengths[1] * head_dim


def _scope_lengths(eqn, inherited):
  """The true (q, k) lengths of the attention scope `eqn` is in, else those of its caller."""
  scope = _ATTENTION_SCOPE.search(str(eqn.source_info.name_stack))
  return (int(scope[1]), int(scope[2])) if scope else inherited


def _count_macs(jaxpr, skip_recompute, cotangent, lengths) -> int:
  carries = set() if cotangent is None else {cotangent}
  macs = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if cotangent is not None:
      if not any(v in carries for v in eqn.invars if not isinstance(v, jax.extend.core.Literal)):
        continue  # recomputed forward work
      carries.update(eqn.outvars)
    if name == 'dot_general':
      lhs, rhs = (v.aval.shape for v in eqn.invars)
      (_, rhs_contract), (_, rhs_batch) = eqn.params['dimension_numbers']
      rhs_free = [d for i, d in enumerate(rhs) if i not in rhs_contract and i not in rhs_batch]
      macs += math.prod(lhs) * math.prod(rhs_free)
    elif name == 'conv_general_dilated':
      out = eqn.outvars[0].aval.shape
      kernel = eqn.invars[1].aval.shape
      spec = eqn.params['dimension_numbers'].rhs_spec  # (out feature, in feature, *spatial)
      per_output = math.prod(kernel[d] for d in spec[2:]) * kernel[spec[1]]
      macs += math.prod(out) * per_output
    if skip_recompute and name == 'remat2' and eqn.params.get('differentiated'):
      body = eqn.params['jaxpr']
      body = getattr(body, 'jaxpr', body)
      macs += _count_macs(body, skip_recompute, body.invars[-1], _scope_lengths(eqn, lengths))
      continue
    subjaxprs = list(_subjaxprs(eqn))
    # Only calls with a body can hold an attention kernel: the scope is read there alone.
    inner = _scope_lengths(eqn, lengths) if subjaxprs else lengths
    sub = [_count_macs(j, skip_recompute, None, inner) for j in subjaxprs]
    if name == 'cond':
      macs += max(sub, default=0)
    elif name == 'scan':
      macs += eqn.params['length'] * sum(sub)
    elif name == 'shard_map':
      # The body sees one shard: it runs once per device of its manual axes.
      mesh = eqn.params['mesh']
      macs += math.prod(mesh.shape[a] for a in eqn.params['newly_manual_axes']) * sum(sub)
    elif name == 'pallas_call':
      if inner is not None:  # the TPU flash attention of models.layers.attention
        macs += _flash_macs(eqn, inner)
      else:  # another kernel: its body runs once per grid point
        macs += math.prod(eqn.params['grid_mapping'].grid) * sum(sub)
    else:
      macs += sum(sub)
  return macs


def counting_config(cfg):
  """The model config whose traced jaxpr shows every matmul once: no recomputation (remat), and
  attention as explicit matmuls (a fused kernel is one opaque call with the same FLOPs)."""
  cfg = cfg.copy_and_resolve_references()
  cfg.remat = 'none'
  cfg.attention = 'xla'
  return cfg


def forward_macs(cfg, model) -> int:
  """MACs of one view's eval forward."""
  graphdef, state = nnx.split(model)
  forward = lambda state, inputs: nnx.merge(graphdef, state)(**inputs, deterministic=True)
  return count_macs(jax.make_jaxpr(forward)(state, abstract_inputs(cfg)).jaxpr)


def train_macs(cfg, model) -> int:
  """MACs of one view's forward + backward over the trainable set (models.TRAINABLE).

  Autodiff keeps exactly the backward matmuls a train step needs: weight gradients of the trainable
  parameters only, and activation gradients only where some trainable parameter lies upstream (the
  frozen stems and the patch embedding get none). The loss and optimiser add no matmuls.
  """
  graphdef, trainable, rest = nnx.split(model, models.TRAINABLE, ...)

  def loss(trainable, rest, inputs):
    logits = nnx.merge(graphdef, trainable, rest)(**inputs, deterministic=True)
    return sum(jnp.sum(x.astype(jnp.float32)) for x in logits.values())

  jaxpr = jax.make_jaxpr(jax.grad(loss))(trainable, rest, abstract_inputs(cfg)).jaxpr
  return count_macs(jaxpr, skip_recompute=True)


def summarize(cfg) -> dict:
  cfg = counting_config(cfg)
  model = nnx.eval_shape(lambda: models.build(cfg, rngs=nnx.Rngs(0)))
  counts = parameter_counts(model)
  forward = forward_macs(cfg, model)
  train = train_macs(cfg, model)
  return {
      'model': cfg.name,
      'total_params': counts['total'],
      'trainable_params': counts['trainable'],
      'parts': counts['parts'],
      'gmacs_per_view': forward / 1e9,
      'tflops_per_clip': 2 * forward / 1e12,
      'train_tflops_per_clip': 2 * train / 1e12,
  }


def report(model_config, as_json: bool):
  summary = summarize(model_config)
  if as_json:
    print(json.dumps(summary))
    return
  print(f"{summary['model']}: {summary['total_params']:,} parameters, "
        f"{summary['trainable_params']:,} trainable, {summary['gmacs_per_view']:.4g} GMACs per view")
  print(f"TFLOP per clip: forward {summary['tflops_per_clip']:.4g}, train step (forward + backward "
        f"over the trainable set) {summary['train_tflops_per_clip']:.4g}")
  print(f"{'part':<16}{'total':>16}{'trainable':>16}")
  for part, counts in sorted(summary['parts'].items()):
    print(f"{part:<16}{counts['total']:>16,}{counts['trainable']:>16,}")


if __name__ == '__main__':
  from ca2st_jax import cli  # pylint: disable=g-import-not-at-top
  # Flags are defined here, not at import, so other tools and tests can import this module.
  config_flag = config_flags.DEFINE_config_file(
      'config', None, 'Config file (configs/<name>.py[:variant]).', lock_config=True)
  json_flag = flags.DEFINE_bool('json', False, 'Print one JSON object instead of a table.')
  flags.mark_flag_as_required('config')

  def _run(argv):
    if len(argv) > 1:
      cli.fail(f'unexpected arguments {argv[1:]} (flags are --name=value)')
    cli.quiet_library_logs()
    cli.use_cpu_unless_set()
    report(config_flag.value.model, json_flag.value)

  app.run(_run, flags_parser=cli.parse_flags)
