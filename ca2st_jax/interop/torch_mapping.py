"""One declarative table per model family: reference state_dict names <-> JAX parameter paths.

A table is a list of `Entry(ref, jax, transform, group)`, built from short rules:

    b.add('blocks.{i}.clip_mlp.c_fc', 'spatial/blocks/{i}/mlp/fc1', 'linear', 'clip', layers=...)

expands, for every block i, to `<ref>.weight <-> <jax>/kernel` (transposed) and
`<ref>.bias <-> <jax>/bias`. Rule kinds:

    linear  Linear weight (out, in) <-> kernel (in, out) and bias <-> bias
    kernel  a bias-free Linear: weight <-> kernel only
    norm    LayerNorm weight <-> scale, bias <-> bias
    conv2d  Conv2d weight (O, I, H, W) <-> kernel (H, W, I, O) [+ bias]
    conv3d  Conv3d weight (O, I, T, H, W) <-> kernel (T, H, W, I, O) [+ bias]
    param   a bare tensor, same layout both ways

Fused q|k|v projections stay fused on both sides (rows q|k|v <-> columns q|k|v), as do the B-CA
k|v projections, so a transpose is the whole conversion. The same table converts both ways
(`to_jax` / `to_reference`); several reference names may point at one JAX parameter (CA²ST's
shared B-CA projections): export writes the tensor under every name, import requires the
copies to agree.

Groups say which source provides an entry: 'clip', 'vmae', 'ast' (the experts), 'vmae_head'
(the fine-tuned VideoMAE classifier), 'fusion' (adapters, B-CA, heads, time MLPs).

Stacked layers: the models keep per-layer parameters stacked on a leading layer axis
(`layers.Stack`: `spatial/blocks/attn/qkv/kernel` is [depth, ...]). The tables and everything
below speak of one layer at a time: `spatial/blocks/{i}/attn/qkv/kernel` is slice i of it
(`jax_shapes`, `model_arrays` and `assign` list, read and write such per-layer paths). CA²ST's
layers from `audio_exchange_start` on are `audio_exchange_layers/{i - start}`.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Callable, Iterable, Mapping

import numpy as np

from ca2st_jax.interop.torch_io import CheckpointError

_TRANSFORMS: dict[str, tuple[Callable, Callable, Callable]] = {
    # name: (reference -> jax array, jax -> reference array, jax shape -> reference shape)
    'id': (lambda a: a, lambda a: a, lambda s: tuple(s)),
    'T': (lambda a: np.swapaxes(a, 0, 1), lambda a: np.swapaxes(a, 0, 1), lambda s: tuple(s)[::-1]),
    'conv2d': (lambda a: np.transpose(a, (2, 3, 1, 0)), lambda a: np.transpose(a, (3, 2, 0, 1)),
               lambda s: (s[3], s[2], s[0], s[1])),
    'conv3d': (lambda a: np.transpose(a, (2, 3, 4, 1, 0)), lambda a: np.transpose(a, (4, 3, 0, 1, 2)),
               lambda s: (s[4], s[3], s[0], s[1], s[2])),
}


@dataclasses.dataclass(frozen=True)
class Entry:
  ref: str        # reference state_dict name
  jax: str        # '/'-joined JAX parameter path
  transform: str  # key of _TRANSFORMS
  group: str


def _expand(ref, jax, kind, group, bias=True):
  if kind == 'linear':
    return [Entry(ref + '.weight', jax + '/kernel', 'T', group),
            Entry(ref + '.bias', jax + '/bias', 'id', group)]
  if kind == 'kernel':
    return [Entry(ref + '.weight', jax + '/kernel', 'T', group)]
  if kind == 'norm':
    return [Entry(ref + '.weight', jax + '/scale', 'id', group),
            Entry(ref + '.bias', jax + '/bias', 'id', group)]
  if kind in ('conv2d', 'conv3d'):
    out = [Entry(ref + '.weight', jax + '/kernel', kind, group)]
    if bias:
      out.append(Entry(ref + '.bias', jax + '/bias', 'id', group))
    return out
  if kind == 'param':
    return [Entry(ref, jax, 'id', group)]
  raise ValueError(kind)


class _Builder:

  def __init__(self):
    self.entries: list[Entry] = []

  def add(self, ref, jax, kind, group, bias=True, layers: Iterable[int] = ()):
    if '{i}' in ref:
      for i in layers:
        self.entries += _expand(ref.replace('{i}', str(i)), jax.replace('{i}', str(i)), kind, group, bias)
    else:
      self.entries += _expand(ref, jax, kind, group, bias)


def _clip_rules(b: _Builder, layers):
  g = 'clip'
  b.add('clip_class_embedding', 'spatial/class_embedding', 'param', g)
  b.add('clip_positional_embedding', 'spatial/positional_embedding', 'param', g)
  b.add('clip_conv1', 'spatial/patch_embed', 'conv2d', g, bias=False)
  b.add('clip_ln_pre', 'spatial/ln_pre', 'norm', g)
  for ref, jax, kind in (('clip_ln_1', 'norm1', 'norm'), ('clip_attn.out_proj', 'attn/out', 'linear'),
                         ('clip_ln_2', 'norm2', 'norm'), ('clip_mlp.c_fc', 'mlp/fc1', 'linear'),
                         ('clip_mlp.c_proj', 'mlp/fc2', 'linear')):
    b.add(f'blocks.{{i}}.{ref}', f'spatial/blocks/{{i}}/{jax}', kind, g, layers=layers)
  for i in layers:  # nn.MultiheadAttention's fused in-projection has bare tensor names
    b.entries += [Entry(f'blocks.{i}.clip_attn.in_proj_weight', f'spatial/blocks/{i}/attn/qkv/kernel', 'T', g),
                  Entry(f'blocks.{i}.clip_attn.in_proj_bias', f'spatial/blocks/{i}/attn/qkv/bias', 'id', g)]
  b.add('clip_ln_post', 'spatial/ln_post', 'norm', g)


def _vmae_rules(b: _Builder, layers):
  g = 'vmae'
  b.add('patch_embed.proj', 'temporal/patch_embed', 'conv3d', g)
  for ref, jax, kind in (('norm1', 'norm1', 'norm'), ('attn.qkv', 'attn/qkv', 'kernel'),
                         ('attn.q_bias', 'attn/q_bias', 'param'), ('attn.v_bias', 'attn/v_bias', 'param'),
                         ('attn.proj', 'attn/out', 'linear'), ('norm2', 'norm2', 'norm'),
                         ('mlp.fc1', 'mlp/fc1', 'linear'), ('mlp.fc2', 'mlp/fc2', 'linear')):
    b.add(f'blocks.{{i}}.{ref}', f'temporal/blocks/{{i}}/{jax}', kind, g, layers=layers)


def _ast_rules(b: _Builder, layers):
  g = 'ast'
  b.add('ast_cls_token', 'audio/cls_token', 'param', g)
  b.add('ast_dist_token', 'audio/dist_token', 'param', g)
  b.add('ast_pos_embed', 'audio/pos_embed', 'param', g)
  b.add('ast_patch_embed.proj', 'audio/patch_embed', 'conv2d', g)
  b.add('ast_norm', 'audio/norm', 'norm', g)
  for ref, jax, kind in (('ast_norm1', 'norm1', 'norm'), ('ast_attn.qkv', 'attn/qkv', 'linear'),
                         ('ast_attn.proj', 'attn/out', 'linear'), ('ast_norm2', 'norm2', 'norm'),
                         ('ast_mlp.fc1', 'mlp/fc1', 'linear'), ('ast_mlp.fc2', 'mlp/fc2', 'linear')):
    b.add(f'blocks.{{i}}.{ref}', f'audio/blocks/{{i}}/{jax}', kind, g, layers=layers)


def _adapter(b: _Builder, ref, jax, layers=None):
  for fc in ('fc1', 'fc2'):
    if layers is None:
      b.add(f'{ref}.D_{fc}', f'{jax}/{fc}', 'linear', 'fusion')
    else:
      b.add(f'blocks.{{i}}.{ref}.D_{fc}', f'layers/{{i}}/{jax}/{fc}', 'linear', 'fusion', layers=layers)


def _xattn(b: _Builder, ref, jax, names, layers, pos=()):
  """B-CA attention core; names = reference (q, kv, proj) names; pos = ((ref, jax), ...)."""
  q, kv, proj = names
  f = 'fusion'
  for pref, pjax in pos:
    b.add(f'{ref}.{pref}', f'{jax}/{pjax}', 'param', f, layers=layers)
  b.add(f'{ref}.{q}_bias', f'{jax}/q_bias', 'param', f, layers=layers)
  b.add(f'{ref}.{kv}_bias', f'{jax}/kv_bias', 'param', f, layers=layers)
  b.add(f'{ref}.{q}', f'{jax}/q', 'kernel', f, layers=layers)
  b.add(f'{ref}.{kv}', f'{jax}/kv', 'kernel', f, layers=layers)
  b.add(f'{ref}.{proj}', f'{jax}/out', 'linear', f, layers=layers)


def _compositional_heads(b: _Builder):
  b.add('head_verb', 'verb_head', 'linear', 'fusion')
  b.add('head_noun', 'noun_head', 'linear', 'fusion')


def _time_mlp(b: _Builder, ref, jax, nested):
  names = ('0', '2.0', '3.0', '4') if nested else ('0', '2', '4', '6')
  for r, j in zip(names[:3], ('fc1', 'fc2', 'fc3')):
    b.add(f'{ref}.{r}', f'{jax}/{j}', 'linear', 'fusion')
  b.add(f'{ref}.{names[3]}', f'{jax}/norm', 'norm', 'fusion')


def _cast_table(cfg) -> list[Entry]:
  b, layers = _Builder(), range(cfg.depth)
  _clip_rules(b, layers)
  _vmae_rules(b, layers)
  b.add('vmae_fc_norm', 'temporal/fc_norm', 'norm', 'fusion')
  _adapter(b, 'S_Adapter', 'spatial_adapter', layers)
  _adapter(b, 'T_Adapter', 'temporal_adapter', layers)
  _adapter(b, 'S_MLP_Adapter', 'spatial_mlp_adapter', layers)
  _adapter(b, 'T_MLP_Adapter', 'temporal_mlp_adapter', layers)
  st = 'layers/{i}/space_time'
  for ref, jax, kind in (('cross_s_down', 'spatial_down', 'linear'), ('cross_t_down', 'temporal_down', 'linear'),
                         ('ln_s_cross', 'spatial_norm', 'norm'), ('ln_t_cross', 'temporal_norm', 'norm'),
                         ('cross_s_up', 'spatial_up', 'linear'), ('cross_t_up', 'temporal_up', 'linear')):
    b.add(f'blocks.{{i}}.{ref}', f'{st}/{jax}', kind, 'fusion', layers=layers)
  _xattn(b, 'blocks.{i}.t2s_cross', f'{st}/spatial_from_temporal', ('t2s_q', 't2s_kv', 't2s_proj'), layers,
         pos=(('clip_time_pos', 'query_pos'), ('vmae_time_pos', 'key_pos')))
  _xattn(b, 'blocks.{i}.s2t_cross', f'{st}/temporal_from_spatial', ('s2t_q', 's2t_kv', 't2s_proj'), layers,
         pos=(('vmae_space_pos', 'query_pos'), ('clip_space_pos', 'key_pos')))
  if cfg.name == 'cast_compositional':
    _compositional_heads(b)
  else:
    _adapter(b, 'noun_last_Adapter', 'spatial_last_adapter')
    _adapter(b, 'verb_last_Adapter', 'temporal_last_adapter')
    b.entries += [Entry('head.weight', 'head/kernel', 'T', 'vmae_head'),
                  Entry('head.bias', 'head/bias', 'id', 'vmae_head')]
  return b.entries


def _time_encoding_rules(b: _Builder, cfg, nested):
  if cfg.time_encoding:
    _time_mlp(b, 'time_mlp', 'time_encoding/video_mlp', nested)
    if cfg.split_time_mlp:
      _time_mlp(b, 'audio_time_mlp', 'time_encoding/audio_mlp', nested)


def _global_exchange(b: _Builder, ref, jax, layers, *, audio_side, visual_side, audio_queries,
                     visual_queries, names, positions=None):
  """A global audio<->visual B-CA. `*_side` = (down, norm, up) reference names of each side;
  `*_queries` = reference names of the attention whose queries are audio / visual tokens;
  positions: with learned_positions (use_stpos), the reference names of (audio space, audio time,
  visual space, visual time) in both attentions."""
  for side, jside in ((audio_side, 'audio'), (visual_side, 'visual')):
    down, norm, up = side
    b.add(f'{ref}.{down}', f'{jax}/{jside}_down', 'linear', 'fusion', layers=layers)
    b.add(f'{ref}.{norm}', f'{jax}/{jside}_norm', 'norm', 'fusion', layers=layers)
    b.add(f'{ref}.{up}', f'{jax}/{jside}_up', 'linear', 'fusion', layers=layers)
  _xattn(b, f'{ref}.{audio_queries}', f'{jax}/audio_from_visual', names[0], layers)
  _xattn(b, f'{ref}.{visual_queries}', f'{jax}/visual_from_audio', names[1], layers)
  if positions:
    for attn, jattn in ((audio_queries, 'audio_from_visual'), (visual_queries, 'visual_from_audio')):
      for name, jpos in zip(positions, ('0/space', '0/time', '1/space', '1/time')):
        b.add(f'{ref}.{attn}.{name}', f'{jax}/{jattn}_positions/{jpos}', 'param', 'fusion', layers=layers)


def _cava_table(cfg) -> list[Entry]:
  """CAVA. Reference naming quirk: `S_*`, `*_s_*`, `noun_*` are AUDIO; `T_*`, `*_t_*`, `verb_*` CLIP
  (and with use_stpos `clip_*_pos` are the audio tokens' positions, `vmae_*_pos` CLIP's)."""
  b, layers = _Builder(), range(cfg.depth)
  _ast_rules(b, layers)
  _clip_rules(b, layers)
  _time_encoding_rules(b, cfg, nested=True)
  _adapter(b, 'S_Adapter', 'audio_adapter', layers)
  _adapter(b, 'T_Adapter', 'spatial_adapter', layers)
  _adapter(b, 'S_MLP_Adapter', 'audio_mlp_adapter', layers)
  _adapter(b, 'T_MLP_Adapter', 'spatial_mlp_adapter', layers)
  _global_exchange(b, 'blocks.{i}', 'layers/{i}/audio_spatial', layers,
                   audio_side=('cross_s_down', 'ln_s_cross', 'cross_s_up'),
                   visual_side=('cross_t_down', 'ln_t_cross', 'cross_t_up'),
                   audio_queries='t2s_cross', visual_queries='s2t_cross',
                   names=(('t2s_q', 't2s_kv', 't2s_proj'), ('s2t_q', 's2t_kv', 't2s_proj')),
                   positions=('clip_space_pos', 'clip_temporal_pos', 'vmae_space_pos', 'vmae_temporal_pos')
                   if cfg.get('learned_positions', False) else None)
  b.add('audio_ln_post', 'audio_ln_post', 'norm', 'fusion')
  _adapter(b, 'noun_last_Adapter', 'audio_last_adapter')
  _adapter(b, 'verb_last_Adapter', 'spatial_last_adapter')
  if cfg.name == 'cava_compositional':  # both heads read the fused feature
    _compositional_heads(b)
  else:
    b.add('head', 'head', 'linear', 'fusion')
  return b.entries


def _ca2st_table(cfg) -> list[Entry]:
  """CA²ST. B_CAST modules name their sides l/r: s_t (l CLIP, r VideoMAE), s_audio (l CLIP,
  r audio), t_audio (l VideoMAE, r audio); l2r_cross has the r side's queries."""
  b, layers = _Builder(), range(cfg.depth)
  audio_layers = range(cfg.audio_exchange_start, cfg.depth)
  _ast_rules(b, layers)
  _clip_rules(b, layers)
  _vmae_rules(b, layers)
  b.add('vmae_fc_norm', 'temporal/fc_norm', 'norm', 'fusion')
  _time_encoding_rules(b, cfg, nested=False)
  for ref, jax in (('S_Adapter', 'spatial_adapter'), ('T_Adapter', 'temporal_adapter'),
                   ('Audio_Adapter', 'audio_adapter'), ('S_MLP_Adapter', 'spatial_mlp_adapter'),
                   ('T_MLP_Adapter', 'temporal_mlp_adapter'), ('Audio_MLP_Adapter', 'audio_mlp_adapter')):
    _adapter(b, ref, jax, layers)
  st, ref = 'layers/{i}/space_time', 'blocks.{i}.s_t_b_cast'
  for r, j, kind in (('cross_l_down', 'spatial_down', 'linear'), ('ln_l_cross', 'spatial_norm', 'norm'),
                     ('cross_r_down', 'temporal_down', 'linear'), ('ln_r_cross', 'temporal_norm', 'norm'),
                     ('cross_r_up', 'temporal_up', 'linear'), ('cross_l_up', 'spatial_up', 'linear')):
    b.add(f'{ref}.{r}', f'{st}/{j}', kind, 'fusion', layers=layers)
  _xattn(b, f'{ref}.l2r_cross', f'{st}/temporal_from_spatial', ('s2t_q', 's2t_kv', 't2s_proj'), layers,
         pos=(('clip_space_pos', 'key_pos'), ('vmae_space_pos', 'query_pos')))
  _xattn(b, f'{ref}.r2l_cross', f'{st}/spatial_from_temporal', ('t2s_q', 't2s_kv', 't2s_proj'), layers,
         pos=(('clip_time_pos', 'query_pos'), ('vmae_time_pos', 'key_pos')))
  for pair, jax, vis in (('s_audio_b_cast', 'audio_spatial', 'clip'),
                         ('t_audio_b_cast', 'audio_temporal', 'vmae')):
    _global_exchange(b, f'blocks.{{i}}.{pair}', f'layers/{{i}}/{jax}', audio_layers,
                     audio_side=('cross_r_down', 'ln_r_cross', 'cross_r_up'),
                     visual_side=('cross_l_down', 'ln_l_cross', 'cross_l_up'),
                     audio_queries='l2r_cross', visual_queries='r2l_cross',
                     names=(('q', 'kv', 'proj'), ('q', 'kv', 'proj')),
                     positions=('audio_space_pos', 'audio_temporal_pos', f'{vis}_space_pos', f'{vis}_temporal_pos')
                     if cfg.get('learned_positions', False) else None)
  b.add('audio_ln_post', 'audio_ln_post', 'norm', 'fusion')
  _adapter(b, 'noun_last_Adapter', 'spatial_last_adapter')
  _adapter(b, 'verb_last_Adapter', 'temporal_last_adapter')
  if cfg.name == 'ca2st_compositional':  # an audio last adapter per head
    for head in ('verb', 'noun'):
      for ref, jax in (('c_fc', 'fc1'), ('c_proj', 'fc2')):
        b.add(f'audio_{head}_last_Adapter.{ref}', f'audio_{head}_last_adapter/{jax}', 'linear',
              'fusion')
    _compositional_heads(b)
  else:
    b.add('audio_verb_last_Adapter.c_fc', 'audio_last_adapter/fc1', 'linear', 'fusion')
    b.add('audio_verb_last_Adapter.c_proj', 'audio_last_adapter/fc2', 'linear', 'fusion')
    b.add('head', 'head', 'linear', 'fusion')
  # Model layers i >= audio_exchange_start are slice i - start of the second layer group.
  start = min(cfg.audio_exchange_start, cfg.depth)

  def group_path(path):
    parts = path.split('/')
    if parts[0] == 'layers' and int(parts[1]) >= start:
      return '/'.join(['audio_exchange_layers', str(int(parts[1]) - start), *parts[2:]])
    return path

  return [dataclasses.replace(e, jax=group_path(e.jax)) for e in b.entries]


TABLES: dict[str, Callable] = {
    'cast': _cast_table,
    'cast_compositional': _cast_table,
    'cava': _cava_table,
    'cava_compositional': _cava_table,
    'ca2st': _ca2st_table,
    'ca2st_compositional': _ca2st_table,
}


def table(cfg) -> list[Entry]:
  """The mapping table for config.model (its name and depth select the rules)."""
  if cfg.name not in TABLES:
    raise NotImplementedError(f'no PyTorch mapping table for model {cfg.name!r} yet')
  return TABLES[cfg.name](cfg)


# -------------------------------------------------------------------------------- conversion


def _fmt_path(path) -> str:
  return '/'.join(str(p) for p in path)


def _flat_params(model):
  from flax import nnx  # pylint: disable=import-outside-toplevel
  return [(_fmt_path(p), v) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))]


def _stacks(model) -> dict[str, int]:
  """{path of each stacked layer group (layers.Stack) in the model: its number of layers}."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from ca2st_jax.models.layers import Stack  # pylint: disable=import-outside-toplevel
  return {_fmt_path(p): len(node) for p, node in nnx.iter_graph(model) if isinstance(node, Stack)}


def _stack_of(path: str, stacks: Mapping[str, int]) -> str | None:
  return next((s for s in stacks if path.startswith(s + '/')), None)


def _per_layer_params(model):
  """(per-layer path, path in nnx.state, Variable, layer index or None) of every parameter: a
  stacked parameter `<stack>/<rest>` [L, ...] is listed once per layer as `<stack>/<i>/<rest>`."""
  stacks = _stacks(model)
  out = []
  for path, var in _flat_params(model):
    stack = _stack_of(path, stacks)
    if stack is None:
      out.append((path, path, var, None))
    else:
      rest = path[len(stack) + 1:]
      out += [(f'{stack}/{i}/{rest}', path, var, i) for i in range(stacks[stack])]
  return out


def _walk(model, path: str, stacks: Mapping[str, int]):
  """The Variable at a (per-layer) path and the layer index (None outside stacked groups)."""
  stack, index = _stack_of(path, stacks), None
  if stack is not None:
    head, _, rest = path[len(stack) + 1:].partition('/')
    if not head.isdigit():
      raise AttributeError(path)
    path, index = f'{stack}/{rest}', int(head)
  obj = model
  for part in path.split('/'):
    obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
  return obj, index


def canonical_paths(model, entries: list[Entry]) -> list[Entry]:
  """Entries with JAX paths rewritten to where nnx.state lists each parameter.

  A parameter shared by several modules (CA²ST's shared B-CA projections) appears once in
  nnx.state, under one of its paths; the table may name any of them.
  """
  stacks = _stacks(model)
  by_id = {id(var): path for path, var in _flat_params_raw(model)}
  out = []
  for e in entries:
    try:
      var, index = _walk(model, e.jax, stacks)
    except (AttributeError, IndexError, TypeError):
      out.append(e)  # check_table reports it
      continue
    path = by_id.get(id(var))
    if path is None:
      out.append(e)
      continue
    if index is not None:
      stack = _stack_of(path, stacks)
      path = f'{stack}/{index}/{path[len(stack) + 1:]}'
    out.append(dataclasses.replace(e, jax=path))
  return out


def _flat_params_raw(model):
  """(stacked path, the model's own Variable object) pairs."""
  return [(p, _walk(model, p, {})[0]) for p, _ in _flat_params(model)]


def jax_shapes(model) -> 'OrderedDict[str, tuple]':
  """{per-layer path: shape} of a model's parameters (works on nnx.eval_shape models too)."""
  return OrderedDict((p, tuple(v.get_value().shape)[0 if i is None else 1:])
                     for p, _, v, i in _per_layer_params(model))


def check_table(entries: list[Entry], shapes: Mapping[str, tuple]) -> None:
  """The table must cover exactly the model's parameters (a programming error otherwise)."""
  mapped = {e.jax for e in entries}
  missing = [p for p in shapes if p not in mapped]
  extra = sorted(mapped - set(shapes))
  if missing or extra:
    raise AssertionError(f'mapping table out of date: JAX params without entry {missing[:8]}, '
                         f'entries without JAX param {extra[:8]}')


def reference_shapes(entries: list[Entry], shapes: Mapping[str, tuple]) -> 'OrderedDict[str, tuple]':
  return OrderedDict((e.ref, _TRANSFORMS[e.transform][2](shapes[e.jax])) for e in entries)


def to_reference(entries: list[Entry], arrays: Mapping[str, np.ndarray]) -> 'OrderedDict[str, np.ndarray]':
  """JAX {path: array} -> reference {name: array} (every entry, shared tensors under each name)."""
  return OrderedDict((e.ref, np.ascontiguousarray(_TRANSFORMS[e.transform][1](np.asarray(arrays[e.jax]))))
                     for e in entries)


def to_jax(entries: list[Entry], ref: Mapping[str, np.ndarray], shapes: Mapping[str, tuple], *,
           require: Iterable[str] | None = None, source: str = 'checkpoint') -> dict[str, np.ndarray]:
  """Reference {name: array} -> JAX {path: array}, fully validated before anything is returned.

  require: the reference names that must be present (default: every entry). Any name in `ref`
  that no entry knows is an error (unexpected key), as is a shape that differs from the model's.
  """
  by_ref = {e.ref: e for e in entries}
  required = list(by_ref) if require is None else list(require)
  problems = []
  unexpected = [k for k in ref if k not in by_ref]
  if unexpected:
    problems.append(f'unexpected keys ({len(unexpected)}): {unexpected[:10]}')
  missing = [k for k in required if k not in ref]
  if missing:
    problems.append(f'missing keys ({len(missing)}): {missing[:10]}')
  out: dict[str, np.ndarray] = {}
  origin: dict[str, str] = {}
  for name, value in ref.items():
    e = by_ref.get(name)
    if e is None:
      continue
    value = np.asarray(value)
    expected = _TRANSFORMS[e.transform][2](shapes[e.jax])
    if tuple(value.shape) != tuple(expected):
      problems.append(f'shape mismatch for {name}: expected {tuple(expected)}, found {tuple(value.shape)}')
      continue
    converted = _TRANSFORMS[e.transform][0](value)
    if e.jax in out:
      if not np.array_equal(out[e.jax], converted):
        problems.append(f'{name} and {origin[e.jax]} are one shared parameter but hold different values')
      continue
    out[e.jax] = converted
    origin[e.jax] = name
  if problems:
    raise CheckpointError(f'{source}: cannot load into the model:\n  ' + '\n  '.join(problems))
  return out


def assign(model, arrays: Mapping[str, np.ndarray]) -> None:
  """Writes {per-layer path: array} into the model's parameters, cast to each parameter's dtype
  (float32, or the compute dtype of frozen parameters stored in it). Layers of a stacked
  parameter that `arrays` does not name keep their values."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  new_values = {}
  for key, path, var, index in _per_layer_params(model):
    if key not in arrays:
      continue
    value = np.asarray(arrays[key])
    if path not in new_values:
      new_values[path] = np.array(var.get_value(), dtype=np.float32)
    old = new_values[path]
    expected = old.shape if index is None else old.shape[1:]
    if tuple(expected) != tuple(value.shape):
      raise CheckpointError(f'{key}: expected {tuple(expected)}, found {value.shape}')
    if index is None:
      new_values[path] = value.astype(np.float32)
    else:
      old[index] = value
  new = []
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    if _fmt_path(path) in new_values:
      var = var.replace(jnp.asarray(new_values[_fmt_path(path)], dtype=var.get_value().dtype))
    new.append((path, var))
  nnx.update(model, nnx.from_flat_state(new))


def model_arrays(model) -> dict[str, np.ndarray]:
  """{per-layer path: float32 array} (parameters stored in bfloat16 are widened exactly)."""
  import jax  # pylint: disable=import-outside-toplevel
  out = {}
  host = {}
  for key, path, var, index in _per_layer_params(model):
    if path not in host:
      value = np.asarray(jax.device_get(var.get_value()))
      host[path] = value.astype(np.float32) if value.dtype != np.float32 else value
    out[key] = host[path] if index is None else host[path][index]
  return out


def model_table(model, cfg) -> list[Entry]:
  """The table for config.model with JAX paths as `model`'s nnx.state lists them, checked."""
  entries = canonical_paths(model, table(cfg))
  check_table(entries, jax_shapes(model))
  return entries
