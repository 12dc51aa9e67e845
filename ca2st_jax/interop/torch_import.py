"""Import PyTorch checkpoints into the JAX models.

Every source is first converted to the REFERENCE layout (numpy arrays keyed by the names of
the reference state_dict, `tests/fixtures/reference/*.tsv`), then mapped onto JAX parameters by
the model family's table in `torch_mapping`. Sources:

  CLIP      OpenAI TorchScript `ViT-B-16.pt` (read without executing it), open_clip state dicts
            (`visual.*`, optionally under 'state_dict' / 'module.'), Hugging Face CLIPVisionModel /
            CLIPModel (`vision_model.*`, safetensors or .bin).
  VideoMAE  MCG-NJU `.pth` ('model' / 'module' containers, `backbone.` / `encoder.` prefixes; a
            fine-tuned classifier initialises `head` when the class counts match, as the reference
            does) and Hugging Face VideoMAEModel / VideoMAEForVideoClassification.
  AST       official `.pth` (`module.v.*`) and Hugging Face ASTModel /
            ASTForAudioClassification; the positional grid is adapted to the configured
            spectrogram length as the authors' loader does (see `adapt_ast_positions`).
  Models    official CAST checkpoints (DeepSpeed `mp_rank_00_model_states.pt` {'module': fp16
            state_dict}, or {'model': ...}) and the authors' CAVA / CA²ST state_dicts.

Nothing is written into the model before the whole import has been validated: missing keys,
unexpected keys and shape mismatches raise `CheckpointError` naming them.

Source keys that the reference also drops are ignored on purpose (listed per source below);
any other key the converter does not know is an error.
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from typing import Any, Mapping

import numpy as np

from ca2st_jax.interop import torch_mapping
from ca2st_jax.interop.torch_io import CheckpointError, read_tensors, strip_prefixes, to_numpy

EXPERT_GROUPS = {'clip': 'clip', 'videomae': 'vmae', 'ast': 'ast'}
EXPERT_MODULES = {'clip': 'spatial', 'videomae': 'temporal', 'ast': 'audio'}


def _strip(sd, prefixes):
  out = OrderedDict()
  for k, v in sd.items():
    for p in prefixes:
      if k.startswith(p):
        k = k[len(p):]
        break
    out[k] = v
  return out


def _fail(source, unknown):
  raise CheckpointError(f'{source}: unexpected keys for this source ({len(unknown)}): {unknown[:10]}')


# --------------------------------------------------------------------------------------- CLIP

_CLIP_IGNORED = re.compile(r'^(proj|attnpool\..*)$')
_HF_CLIP_BLOCK = {
    'layer_norm1': 'ln_1', 'layer_norm2': 'ln_2', 'mlp.fc1': 'mlp.c_fc', 'mlp.fc2': 'mlp.c_proj',
    'self_attn.out_proj': 'attn.out_proj',
}


def clip_to_reference(sd: Mapping[str, Any], source: str = 'CLIP') -> 'OrderedDict[str, np.ndarray]':
  """OpenAI / open_clip / Hugging Face CLIP image tower -> reference `clip_*` names.

  Ignored: the text tower, `proj` / `visual_projection` (unused by the reference), logit_scale.
  """
  sd = strip_prefixes(sd, ('module.',))
  if any(k.startswith('vision_model.') for k in sd):  # CLIPModel, or CLIPVisionModel of transformers 4
    return _hf_clip_to_reference(
        OrderedDict((k[len('vision_model.'):], v) for k, v in sd.items() if k.startswith('vision_model.')),
        source)
  if 'embeddings.patch_embedding.weight' in sd:  # CLIPVisionModel of transformers 5
    return _hf_clip_to_reference(sd, source)
  if any(k.startswith('visual.') for k in sd):
    sd = OrderedDict((k[len('visual.'):], v) for k, v in sd.items() if k.startswith('visual.'))
  out, unknown = OrderedDict(), []
  for k, v in sd.items():
    m = re.match(r'^transformer\.resblocks\.(\d+)\.(.+)$', k)
    if m:
      out[f'blocks.{m.group(1)}.clip_{m.group(2)}'] = v
    elif k in ('conv1.weight', 'class_embedding', 'positional_embedding') or re.match(
        r'^ln_(pre|post)\.(weight|bias)$', k):
      out[f'clip_{k}'] = v
    elif _CLIP_IGNORED.match(k):
      continue
    else:
      unknown.append(k)
  if unknown:
    _fail(source, unknown)
  return out


def _hf_clip_to_reference(sd, source):
  """Hugging Face CLIP vision tower (keys without the `vision_model.` prefix)."""
  out, unknown = OrderedDict(), []
  qkv: dict[str, dict[str, Any]] = {}
  simple = {
      'embeddings.class_embedding': 'clip_class_embedding',
      'embeddings.patch_embedding.weight': 'clip_conv1.weight',
      'embeddings.position_embedding.weight': 'clip_positional_embedding',
      'pre_layrnorm.weight': 'clip_ln_pre.weight', 'pre_layrnorm.bias': 'clip_ln_pre.bias',
      'post_layernorm.weight': 'clip_ln_post.weight', 'post_layernorm.bias': 'clip_ln_post.bias',
  }
  for k, v in sd.items():
    m = re.match(r'^encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$', k)
    if m:
      i, name, kind = m.groups()
      if name in ('self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj'):
        qkv.setdefault(f'{i}.{kind}', {})[name[10]] = v
      elif name in _HF_CLIP_BLOCK:
        out[f'blocks.{i}.clip_{_HF_CLIP_BLOCK[name]}.{kind}'] = v
      else:
        unknown.append(k)
    elif k in simple:
      out[simple[k]] = v
    elif k not in ('embeddings.position_ids', 'visual_projection.weight'):
      unknown.append(k)
  for key, parts in qkv.items():
    i, kind = key.split('.')
    if set(parts) != {'q', 'k', 'v'}:
      raise CheckpointError(f'{source}: layer {i} lacks some of q/k/v_proj.{kind}')
    out[f'blocks.{i}.clip_attn.in_proj_{kind}'] = np.concatenate([np.asarray(parts[c]) for c in 'qkv'], axis=0)
  if unknown:
    _fail(source, unknown)
  return out


# ----------------------------------------------------------------------------------- VideoMAE

_VMAE_IGNORED = re.compile(
    r'^(fc_norm\..*|decoder\..*|encoder_to_decoder\..*|mask_token|pos_embed|decoder_pos_embed)$')
_HF_VMAE_BLOCK = {
    'attention.attention.q_bias': 'attn.q_bias', 'attention.attention.v_bias': 'attn.v_bias',  # transformers 4
    'attention.attention.query.bias': 'attn.q_bias', 'attention.attention.value.bias': 'attn.v_bias',  # 5
    'attention.output.dense.weight': 'attn.proj.weight', 'attention.output.dense.bias': 'attn.proj.bias',
    'layernorm_before.weight': 'norm1.weight', 'layernorm_before.bias': 'norm1.bias',
    'layernorm_after.weight': 'norm2.weight', 'layernorm_after.bias': 'norm2.bias',
    'intermediate.dense.weight': 'mlp.fc1.weight', 'intermediate.dense.bias': 'mlp.fc1.bias',
    'output.dense.weight': 'mlp.fc2.weight', 'output.dense.bias': 'mlp.fc2.bias',
}
_HF_VMAE_QKV = ('attention.attention.query.weight', 'attention.attention.key.weight',
                'attention.attention.value.weight')


def videomae_to_reference(sd: Mapping[str, Any], source: str = 'VideoMAE', *,
                          encoder_norm_to_fc_norm: bool = False) -> 'OrderedDict[str, np.ndarray]':
  """MCG-NJU or Hugging Face VideoMAE -> reference names (`patch_embed.*`, `blocks.N.*`, `head.*`).

  Ignored (as the reference does): `fc_norm` (the fine-tuned pooling norm; the reference trains a
  fresh `vmae_fc_norm`), the pre-training decoder, mask token and position buffers. The
  pre-trained encoder's final `norm` becomes `vmae_fc_norm` only with
  `encoder_norm_to_fc_norm` (the CA²ST authors' loader), else it is ignored.
  """
  sd = strip_prefixes(sd, ('module.',))
  if any(k.startswith('videomae.') or k.startswith('embeddings.patch_embeddings.') for k in sd):
    return _hf_videomae_to_reference(sd, source, encoder_norm_to_fc_norm)
  sd = _strip(sd, ('backbone.', 'encoder.'))
  out, unknown = OrderedDict(), []
  for k, v in sd.items():
    if re.match(r'^(patch_embed\.proj\.(weight|bias)|head\.(weight|bias))$', k):
      out[k] = v
    elif re.match(r'^blocks\.\d+\.(norm1|norm2|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)$', k) or \
        re.match(r'^blocks\.\d+\.attn\.(qkv\.weight|q_bias|v_bias)$', k):
      out[k] = v
    elif re.match(r'^norm\.(weight|bias)$', k):
      if encoder_norm_to_fc_norm:
        out['vmae_fc_' + k] = v
    elif _VMAE_IGNORED.match(k):
      continue
    else:
      unknown.append(k)
  if unknown:
    _fail(source, unknown)
  return out


def _hf_videomae_to_reference(sd, source, encoder_norm_to_fc_norm):
  """Hugging Face VideoMAEModel / VideoMAEForVideoClassification (transformers 4 or 5)."""
  out, unknown, qkv = OrderedDict(), [], {}
  for k, v in sd.items():
    k2 = k[len('videomae.'):] if k.startswith('videomae.') else k
    m = re.match(r'^encoder\.layer\.(\d+)\.(.+)$', k2)
    if m:
      i, name = m.groups()
      if name in _HF_VMAE_QKV:
        qkv.setdefault(i, {})[name.split('.')[2]] = v
      elif name in _HF_VMAE_BLOCK:
        out[f'blocks.{i}.{_HF_VMAE_BLOCK[name]}'] = v
      else:
        unknown.append(k)
    elif k2.startswith('embeddings.patch_embeddings.projection.'):
      out['patch_embed.proj.' + k2.rsplit('.', 1)[1]] = v
    elif k2 in ('layernorm.weight', 'layernorm.bias'):
      if encoder_norm_to_fc_norm:
        out['vmae_fc_norm.' + k2.rsplit('.', 1)[1]] = v
    elif k.startswith('classifier.'):
      out['head.' + k.rsplit('.', 1)[1]] = v
    elif k2 == 'embeddings.position_embeddings' or k.startswith(
        ('fc_norm.', 'decoder.', 'encoder_to_decoder.')) or k == 'mask_token':
      continue
    else:
      unknown.append(k)
  for i, parts in qkv.items():
    if set(parts) != {'query', 'key', 'value'}:
      raise CheckpointError(f'{source}: layer {i} lacks some of query/key/value')
    out[f'blocks.{i}.attn.qkv.weight'] = np.concatenate(
        [np.asarray(parts[c]) for c in ('query', 'key', 'value')], axis=0)
  if unknown:
    _fail(source, unknown)
  return out


# ---------------------------------------------------------------------------------------- AST

_AST_IGNORED = re.compile(r'^(head|head_dist)\.(weight|bias)$')
_HF_AST_BLOCK = {  # transformers 4 (encoder.layer.N.*) and 5 (layers.N.*)
    'attention.output.dense': 'attn.proj', 'attention.o_proj': 'attn.proj',
    'layernorm_before': 'norm1', 'layernorm_after': 'norm2',
    'intermediate.dense': 'mlp.fc1', 'output.dense': 'mlp.fc2', 'mlp.fc1': 'mlp.fc1', 'mlp.fc2': 'mlp.fc2',
}
_HF_AST_QKV = {
    'attention.attention.query': 'q', 'attention.attention.key': 'k', 'attention.attention.value': 'v',
    'attention.q_proj': 'q', 'attention.k_proj': 'k', 'attention.v_proj': 'v',
}


def ast_grid(num_mel_bins, length, patch=16, stride=10):
  return (num_mel_bins - patch) // stride + 1, (length - patch) // stride + 1


def adapt_ast_positions(pos_embed, source_grid, target_grid, mode='reference'):
  """Adapts AST's [1, 2 + F*T, D] positional embedding to another patch grid.

  mode='reference' reproduces the CA²ST authors' loader exactly, quirks included: if the
  target has fewer time patches the grid is centre-cropped in time, otherwise it is
  bilinearly resized to (8, T) [sic]; then, if the target has fewer frequency patches, rows
  [F0//2 - F//2, F0//2 - F//2 + T) are kept [sic], otherwise it is bilinearly resized to (F, T).
  With the AudioSet 12x101 grid and 128 mel bins this is: T=400 (39 patches) a time crop;
  T=1024 (101 patches) a 12->8->12 frequency resampling.
  mode='ast' is the original AST recipe (crop, or resize to (F0, T); then crop or resize to F).
  """
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  pos = torch.as_tensor(np.asarray(pos_embed, dtype=np.float32))
  (f0, t0), (f, t) = source_grid, target_grid
  d = pos.shape[-1]
  grid = pos[:, 2:].reshape(1, f0 * t0, d).transpose(1, 2).reshape(1, d, f0, t0)
  if mode == 'reference':
    if t < t0:
      start = int(t0 / 2) - int(t / 2)
      grid = grid[:, :, :, start:start + t]
    else:
      grid = F.interpolate(grid, size=(8, t), mode='bilinear')
    if f < f0:
      start = int(f0 / 2) - int(f / 2)
      grid = grid[:, :, start:start + t, :]
    else:
      grid = F.interpolate(grid, size=(f, t), mode='bilinear')
  elif mode == 'ast':
    if t < t0:
      start = int(t0 / 2) - int(t / 2)
      grid = grid[:, :, :, start:start + t]
    elif t > t0:
      grid = F.interpolate(grid, size=(f0, t), mode='bilinear')
    if f < f0:
      start = int(f0 / 2) - int(f / 2)
      grid = grid[:, :, start:start + f, :]
    elif f > f0:
      grid = F.interpolate(grid, size=(f, t), mode='bilinear')
  else:
    raise ValueError(f"mode must be 'reference' or 'ast', got {mode!r}")
  if tuple(grid.shape[2:]) != (f, t):
    raise CheckpointError(f'AST positions: cannot adapt grid {source_grid} to {target_grid} '
                          f'in mode {mode!r} (got {tuple(grid.shape[2:])})')
  grid = grid.reshape(1, d, f * t).transpose(1, 2)
  return torch.cat([pos[:, :2], grid], dim=1).numpy()


def ast_to_reference(sd: Mapping[str, Any], source: str = 'AST', *, target_grid=None,
                     source_grid=None, pos_mode='reference') -> 'OrderedDict[str, np.ndarray]':
  """Official AST (`module.v.*`) or Hugging Face ASTModel -> reference `ast_*` names.

  target_grid: (frequency, time) patches of the model; the positions are adapted to it.
  source_grid: the checkpoint's grid; by default the target's frequency patch count and
  whatever time count the checkpoint's positions imply (AudioSet AST: 12 x 101).
  Ignored: the classification heads (`head`, `head_dist`, `mlp_head`, `classifier`).
  """
  sd = strip_prefixes(sd, ('module.',))
  if any(k.startswith(('audio_spectrogram_transformer.', 'embeddings.')) for k in sd):
    out = _hf_ast_to_reference(sd, source)
  else:
    out, unknown = OrderedDict(), []
    for k, v in sd.items():
      if k.startswith('mlp_head.'):
        continue
      if not k.startswith('v.'):
        unknown.append(k)
        continue
      k = k[2:]
      m = re.match(r'^blocks\.(\d+)\.(.+)$', k)
      if m:
        out[f'blocks.{m.group(1)}.ast_{m.group(2)}'] = v
      elif _AST_IGNORED.match(k):
        continue
      elif k in ('cls_token', 'dist_token', 'pos_embed') or re.match(
          r'^(patch_embed\.proj|norm)\.(weight|bias)$', k):
        out['ast_' + k] = v
      else:
        unknown.append('v.' + k)
    if unknown:
      _fail(source, unknown)
  if target_grid is not None and 'ast_pos_embed' in out:
    pos = np.asarray(out['ast_pos_embed'])
    n = pos.shape[1] - 2
    if source_grid is None:
      if n % target_grid[0]:
        raise CheckpointError(f'{source}: {n} positions do not split into {target_grid[0]} frequency '
                              'rows; pass source_grid')
      source_grid = (target_grid[0], n // target_grid[0])
    if source_grid[0] * source_grid[1] != n:
      raise CheckpointError(f'{source}: source_grid {source_grid} does not match {n} positions')
    out['ast_pos_embed'] = adapt_ast_positions(pos, source_grid, target_grid, pos_mode)
  return out


def _hf_ast_to_reference(sd, source):
  """Hugging Face ASTModel / ASTForAudioClassification (transformers 4 or 5)."""
  out, unknown, qkv = OrderedDict(), [], {}
  p = 'audio_spectrogram_transformer.'
  simple = {
      'embeddings.cls_token': 'ast_cls_token', 'embeddings.distillation_token': 'ast_dist_token',
      'embeddings.position_embeddings': 'ast_pos_embed',
      'embeddings.patch_embeddings.projection.weight': 'ast_patch_embed.proj.weight',
      'embeddings.patch_embeddings.projection.bias': 'ast_patch_embed.proj.bias',
      'layernorm.weight': 'ast_norm.weight', 'layernorm.bias': 'ast_norm.bias',
  }
  for k, v in sd.items():
    if k.startswith('classifier.'):
      continue
    k2 = k[len(p):] if k.startswith(p) else k
    m = re.match(r'^(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)$', k2)
    if m:
      i, name, kind = m.groups()
      if name in _HF_AST_QKV:
        qkv.setdefault(f'{i}.{kind}', {})[_HF_AST_QKV[name]] = v
      elif name in _HF_AST_BLOCK:
        out[f'blocks.{i}.ast_{_HF_AST_BLOCK[name]}.{kind}'] = v
      else:
        unknown.append(k)
    elif k2 in simple:
      out[simple[k2]] = v
    else:
      unknown.append(k)
  for key, parts in qkv.items():
    i, kind = key.split('.')
    if set(parts) != {'q', 'k', 'v'}:
      raise CheckpointError(f'{source}: layer {i} lacks some of the query/key/value {kind}')
    out[f'blocks.{i}.ast_attn.qkv.{kind}'] = np.concatenate([np.asarray(parts[c]) for c in 'qkv'], axis=0)
  if unknown:
    _fail(source, unknown)
  return out


# ------------------------------------------------------------------------------ into a model


def _as_numpy(sd):
  return OrderedDict((k, to_numpy(v)) for k, v in sd.items())


def import_expert(model, cfg, kind: str, path_or_state, *, ast_pos_mode: str = 'reference') -> list[str]:
  """Loads one expert ('clip' | 'videomae' | 'ast') of `model` from a file or a state_dict.

  Every parameter of that expert must be found (the VideoMAE classifier too initialises
  `head` when the model has one of the same shape, as the reference does). Returns the
  reference names loaded.
  """
  if kind not in EXPERT_GROUPS:
    raise ValueError(f'unknown expert {kind!r}; expected one of {sorted(EXPERT_GROUPS)}')
  is_path = isinstance(path_or_state, (str, os.PathLike))
  source = os.fspath(path_or_state) if is_path else f'{kind} state_dict'
  sd = read_tensors(path_or_state) if is_path else _as_numpy(path_or_state)
  entries = torch_mapping.model_table(model, cfg)
  group = EXPERT_GROUPS[kind]
  required = [e.ref for e in entries if e.group == group]
  if not required:
    raise CheckpointError(f'{source}: model {cfg.name!r} has no {EXPERT_MODULES[kind]} ({kind}) expert')
  if kind == 'clip':
    ref = clip_to_reference(sd, source)
    if any(e.ref == 'audio_ln_post.weight' for e in entries) and 'clip_ln_post.weight' in ref:
      # The CAVA/CA²ST authors' loader also copies CLIP's ln_post into the (unused) audio_ln_post.
      ref['audio_ln_post.weight'] = ref['clip_ln_post.weight']
      ref['audio_ln_post.bias'] = ref['clip_ln_post.bias']
  elif kind == 'videomae':
    ref = videomae_to_reference(sd, source,
                                encoder_norm_to_fc_norm=cfg.name.startswith('ca2st'))
    shapes = torch_mapping.reference_shapes(entries, torch_mapping.jax_shapes(model))
    for k in ('head.weight', 'head.bias'):  # the reference drops a classifier of another size
      if k in ref and (k not in shapes or tuple(np.shape(ref[k])) != shapes[k]):
        del ref[k]
    if 'vmae_fc_norm.weight' in ref and 'vmae_fc_norm.weight' not in shapes:
      ref.pop('vmae_fc_norm.weight'), ref.pop('vmae_fc_norm.bias', None)
  else:
    ref = ast_to_reference(sd, source, target_grid=ast_grid(
        cfg.num_mel_bins, cfg.spectrogram_length, cfg.audio_patch_size, cfg.audio_patch_stride),
        pos_mode=ast_pos_mode)
  arrays = torch_mapping.to_jax(entries, _as_numpy(ref), torch_mapping.jax_shapes(model),
                                require=required, source=source)
  torch_mapping.assign(model, arrays)
  return list(ref)


def import_checkpoint(model, cfg, path_or_state, container: str | None = None) -> list[str]:
  """Loads a whole model from a reference-layout checkpoint (official CAST DeepSpeed / 'model'
  checkpoints, the authors' CAVA / CA²ST state_dicts, or our own export), strictly."""
  is_path = isinstance(path_or_state, (str, os.PathLike))
  source = os.fspath(path_or_state) if is_path else 'state_dict'
  sd = read_tensors(path_or_state, container) if is_path else path_or_state
  sd = strip_prefixes(sd, ('module.',))
  entries = torch_mapping.model_table(model, cfg)
  arrays = torch_mapping.to_jax(entries, _as_numpy(sd), torch_mapping.jax_shapes(model), source=source)
  torch_mapping.assign(model, arrays)
  return list(sd)


def infer_model_config(model):
  """What the mapping tables need, read off a built model (when config.model is not at hand).

  Not recoverable from the model: the audio grid (for the AST position adaptation); expert
  imports of AST need the real config.model.
  """
  import ml_collections  # pylint: disable=import-outside-toplevel
  from ca2st_jax.models import fused  # pylint: disable=import-outside-toplevel
  cfg = dict(depth=len(model.spatial.blocks), learned_positions=False)
  if isinstance(model, fused.CAST):
    cfg['name'] = 'cast_compositional' if model.compositional else 'cast'
  else:
    family = 'cava' if isinstance(model, fused.CAVA) else 'ca2st'
    cfg['name'] = family + '_compositional' if model.compositional else family
    te = model.time_encoding
    cfg.update(time_encoding=te is not None, split_time_mlp=te is not None and te.audio_mlp is not None)
    if family == 'ca2st':
      cfg['audio_exchange_start'] = model.audio_exchange_start
  return ml_collections.ConfigDict(cfg)


def load_into(model, init, model_config=None) -> dict[str, str]:
  """Applies `config.init` to a built model: `checkpoint` (a whole reference-layout model)
  first, then the experts `clip`, `videomae`, `ast` (each a path; empty = skip).
  Returns {field: path} of what was loaded."""
  if not init:
    return {}
  get = init.get if hasattr(init, 'get') else lambda k, d=None: getattr(init, k, d)
  cfg = model_config if model_config is not None else infer_model_config(model)
  done = {}
  if get('checkpoint', None):
    import_checkpoint(model, cfg, get('checkpoint'))
    done['checkpoint'] = get('checkpoint')
  for kind in ('clip', 'videomae', 'ast'):
    path = get(kind, None)
    if not path:
      continue
    if kind == 'ast' and model_config is None:
      raise ValueError('importing AST needs config.model (the audio patch grid): call '
                       'load_into(model, config.init, config.model)')
    import_expert(model, cfg, kind, path, ast_pos_mode=get('ast_pos_mode', None) or 'reference')
    done[kind] = path
  return done


def apply_init(model, config) -> dict[str, str]:
  """`load_into(model, config.init, config.model)` when the config has an init section."""
  init = config.get('init', None) if hasattr(config, 'get') else getattr(config, 'init', None)
  return load_into(model, init, config.model)
