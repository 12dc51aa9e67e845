"""Importers: Hugging Face models saved as users get them (features must match), tiny
checkpoints in each real layout, and clear errors for bad inputs."""
import argparse
import zipfile
from collections import OrderedDict

import ml_collections
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn

from ca2st_jax import models
from ca2st_jax.interop import torch_import
from ca2st_jax.interop import torch_io
from ca2st_jax.interop import torch_mapping
from ca2st_jax.tools import export_torch
from tests_helpers import run_compiled, tiny_model_config

transformers = pytest.importorskip('transformers')

WIDTH, DEPTH, HEADS, MLP = 32, 2, 2, 64


def tiny(name, **overrides):
  return tiny_model_config(name, **{**dict(num_classes=5, width=WIDTH, depth=DEPTH, num_heads=HEADS,
                                           mlp_dim=MLP, num_frames=4, audio_exchange_start=1),
                                    **overrides})


def build(cfg, seed=0):
  return models.build(cfg, rngs=nnx.Rngs(params=seed, dropout=seed + 1))


def randomise_torch(module, seed=0, scale=0.3):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.copy_(scale * torch.randn(p.shape, generator=g))
  return module.eval()


def video_batch(cfg, batch=2, seed=0):
  rng = np.random.default_rng(seed)
  return rng.standard_normal((batch, cfg.num_frames, cfg.image_size, cfg.image_size, 3)).astype(np.float32)


def reference_of(model, cfg):
  return export_torch.export_arrays(model, cfg)


# ------------------------------------------------------------------- Hugging Face parity


def test_hf_clip_vision_model(tmp_path):
  cfg = tiny('cast')
  hf = randomise_torch(transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
      hidden_size=WIDTH, intermediate_size=MLP, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
      image_size=cfg.image_size, patch_size=cfg.patch_size)))
  hf.save_pretrained(tmp_path)  # model.safetensors, as users get it
  model = build(cfg)
  torch_import.import_expert(model, cfg, 'clip', str(tmp_path / 'model.safetensors'))

  video = video_batch(cfg)
  x = run_compiled(model.spatial, video, method='embed')
  for block in model.spatial.blocks:
    x = run_compiled(block, x)
  ours_pooled = np.asarray(run_compiled(model.spatial, x, method='pool'))
  frames = torch.from_numpy(video[:, 1::2]).flatten(0, 1).permute(0, 3, 1, 2)
  with torch.no_grad():
    out = hf(pixel_values=frames)
    hidden = out.last_hidden_state
    pooled = hf.vision_model.post_layernorm(hidden[:, 0].reshape(2, -1, WIDTH).mean(1)) if hasattr(
        hf, 'vision_model') else hf.post_layernorm(hidden[:, 0].reshape(2, -1, WIDTH).mean(1))
  assert hidden.abs().max() > 0.5
  np.testing.assert_allclose(np.asarray(x), hidden.numpy(), atol=1e-4, rtol=0)
  np.testing.assert_allclose(ours_pooled, pooled.numpy(), atol=1e-4, rtol=0)


def test_hf_videomae_model_and_classifier_head(tmp_path):
  cfg = tiny('cast')
  hf_config = dict(hidden_size=WIDTH, intermediate_size=MLP, num_hidden_layers=DEPTH,
                   num_attention_heads=HEADS, image_size=cfg.image_size, patch_size=cfg.patch_size,
                   num_frames=cfg.num_frames, tubelet_size=2, layer_norm_eps=1e-6)
  # (0.1: with 0.3 the residual stream reaches ~40 and float32 differences ~4e-5.)
  hf = randomise_torch(transformers.VideoMAEModel(transformers.VideoMAEConfig(**hf_config)), scale=0.1)
  hf.save_pretrained(tmp_path / 'base')
  model = build(cfg)
  torch_import.import_expert(model, cfg, 'videomae', str(tmp_path / 'base' / 'model.safetensors'))
  video = video_batch(cfg)
  x = run_compiled(model.temporal, video, method='embed')
  for block in model.temporal.blocks:
    x = run_compiled(block, x)
  with torch.no_grad():
    hidden = hf(pixel_values=torch.from_numpy(video).permute(0, 1, 4, 2, 3)).last_hidden_state
  assert hidden.abs().max() > 0.5
  np.testing.assert_allclose(np.asarray(x), hidden.numpy(), atol=1e-4, rtol=0)

  # The fine-tuned classifier initialises `head` when the class counts match (pytorch_model.bin).
  clf = randomise_torch(transformers.VideoMAEForVideoClassification(
      transformers.VideoMAEConfig(**hf_config, num_labels=5, id2label={i: str(i) for i in range(5)})))
  # transformers 5 always writes safetensors; older releases wrote pytorch_model.bin (a pickle).
  (tmp_path / 'clf').mkdir()
  torch.save(clf.state_dict(), tmp_path / 'clf' / 'pytorch_model.bin')
  path = str(tmp_path / 'clf')  # the directory, as users have it
  torch_import.import_expert(model, cfg, 'videomae', path)
  np.testing.assert_array_equal(np.asarray(model.head.kernel[...]), clf.classifier.weight.detach().numpy().T)
  # ... and is dropped (the head keeps its values) when they do not.
  other = tiny('cast', num_classes=7)
  model7 = build(other)
  head_before = np.asarray(model7.head.kernel[...]).copy()
  torch_import.import_expert(model7, other, 'videomae', path)
  np.testing.assert_array_equal(np.asarray(model7.head.kernel[...]), head_before)


def test_hf_ast_model(tmp_path):
  cfg = tiny('cava')
  hf = randomise_torch(transformers.ASTModel(transformers.ASTConfig(
      hidden_size=WIDTH, intermediate_size=MLP, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
      patch_size=16, frequency_stride=10, time_stride=10, max_length=cfg.spectrogram_length,
      num_mel_bins=cfg.num_mel_bins, layer_norm_eps=1e-6)))
  hf.save_pretrained(tmp_path)
  model = build(cfg)
  # Same grid as the checkpoint: the original AST recipe leaves the positions unchanged.
  # (A save_pretrained directory is accepted as well as the file in it.)
  torch_import.import_expert(model, cfg, 'ast', str(tmp_path), ast_pos_mode='ast')
  spec = np.random.default_rng(0).standard_normal((2, cfg.spectrogram_length, cfg.num_mel_bins)).astype(np.float32)
  x = run_compiled(model.audio, spec, method='embed')
  for block in model.audio.blocks:
    x = run_compiled(block, x)
  with torch.no_grad():
    out = hf(input_values=torch.from_numpy(spec))
  assert out.last_hidden_state.abs().max() > 0.5
  # ASTModel's last_hidden_state is after its final LayerNorm (our `audio.norm`).
  np.testing.assert_allclose(np.asarray(model.audio.norm(x)), out.last_hidden_state.numpy(), atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(run_compiled(model.audio, x, method='pool')),
                             out.pooler_output.numpy(), atol=1e-4, rtol=0)

  # The authors' loader ('reference', the default) resamples even an equal grid: 12->8->12 in
  # frequency at AudioSet size; here (2 x 5) -> (8 x 5) -> (2 x 5).
  torch_import.import_expert(model, cfg, 'ast', str(tmp_path / 'model.safetensors'))
  pos = hf.embeddings.position_embeddings.detach()
  grid = pos[:, 2:].transpose(1, 2).reshape(1, WIDTH, 2, 5)
  grid = nn.functional.interpolate(nn.functional.interpolate(grid, size=(8, 5), mode='bilinear'),
                                   size=(2, 5), mode='bilinear')
  expected = torch.cat([pos[:, :2], grid.reshape(1, WIDTH, 10).transpose(1, 2)], 1).numpy()
  np.testing.assert_allclose(np.asarray(model.audio.pos_embed[...]), expected, atol=1e-6)


# ------------------------------------------------------------------- real layouts, tiny


class _OpenAIVisual(nn.Module):
  """The OpenAI CLIP image tower's attribute layout (what `ViT-B-16.pt` holds under `visual`)."""

  def __init__(self, width, layers, heads, patch, grid):
    super().__init__()
    self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
    self.class_embedding = nn.Parameter(torch.randn(width))
    self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, width))
    self.ln_pre = nn.LayerNorm(width)
    self.transformer = nn.Module()
    self.transformer.resblocks = nn.Sequential(*[self._block(width, heads) for _ in range(layers)])
    self.ln_post = nn.LayerNorm(width)
    self.proj = nn.Parameter(torch.randn(width, 16))

  @staticmethod
  def _block(width, heads):
    block = nn.Module()
    block.ln_1 = nn.LayerNorm(width)
    block.attn = nn.MultiheadAttention(width, heads)
    block.ln_2 = nn.LayerNorm(width)
    block.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, 2 * width), c_proj=nn.Linear(2 * width, width)))
    return block


class _OpenAIClip(nn.Module):

  def __init__(self, cfg):
    super().__init__()
    self.visual = _OpenAIVisual(WIDTH, DEPTH, HEADS, cfg.patch_size, cfg.image_size // cfg.patch_size)
    self.token_embedding = nn.Embedding(10, WIDTH)
    self.logit_scale = nn.Parameter(torch.ones([]))

  def forward(self, x):
    return self.visual.conv1(x) * self.logit_scale


def check_clip_loaded(model, visual_sd):
  got = torch_mapping.model_arrays(model)
  np.testing.assert_array_equal(got['spatial/blocks/1/attn/qkv/kernel'],
                                np.asarray(visual_sd['transformer.resblocks.1.attn.in_proj_weight'], np.float32).T)
  np.testing.assert_array_equal(got['spatial/patch_embed/kernel'],
                                np.transpose(np.asarray(visual_sd['conv1.weight'], np.float32), (2, 3, 1, 0)))
  np.testing.assert_array_equal(got['spatial/ln_post/scale'], np.asarray(visual_sd['ln_post.weight'], np.float32))


@pytest.mark.filterwarnings('ignore::DeprecationWarning')
def test_openai_torchscript_archive_is_read_without_running_it(tmp_path):
  cfg = tiny('cast', mlp_dim=2 * WIDTH)
  clip = randomise_torch(_OpenAIClip(cfg)).half()  # the OpenAI archive is fp16
  traced = torch.jit.trace(clip, torch.randn(1, 3, cfg.image_size, cfg.image_size).half())
  path = str(tmp_path / 'ViT-B-16.pt')
  torch.jit.save(traced, path)
  model = build(cfg)
  torch_import.import_expert(model, cfg, 'clip', path)
  check_clip_loaded(model, {k: v.float().numpy() for k, v in clip.visual.state_dict().items()})


def test_open_clip_state_dict_with_wrappers(tmp_path):
  cfg = tiny('cast', mlp_dim=2 * WIDTH)
  clip = randomise_torch(_OpenAIClip(cfg))
  path = str(tmp_path / 'open_clip.pt')
  torch.save({'epoch': 3, 'state_dict': {'module.' + k: v for k, v in clip.state_dict().items()}}, path)
  model = build(cfg)
  torch_import.import_expert(model, cfg, 'clip', path)
  check_clip_loaded(model, {k: v.numpy() for k, v in clip.visual.state_dict().items()})


def test_clip_into_cava_also_fills_audio_ln_post(tmp_path):
  cfg = tiny('cava', mlp_dim=2 * WIDTH)
  clip = randomise_torch(_OpenAIClip(cfg))
  model = build(cfg)
  torch_import.import_expert(model, cfg, 'clip', {k: v for k, v in clip.state_dict().items()})
  check_clip_loaded(model, {k: v.numpy() for k, v in clip.visual.state_dict().items()})
  np.testing.assert_array_equal(np.asarray(model.audio_ln_post.scale[...]), clip.visual.ln_post.weight.detach().numpy())


def vmae_reference(cfg, seed=3):
  ref = reference_of(torch_mapping_randomised(cfg, seed), cfg)
  return OrderedDict((k, v) for k, v in ref.items() if k.startswith(('patch_embed.', 'blocks.'))
                     and '.clip_' not in k and 'Adapter' not in k and 'cross' not in k)


def torch_mapping_randomised(cfg, seed):
  model = build(cfg, seed)
  rng = np.random.default_rng(seed)
  torch_mapping.assign(model, {p: rng.standard_normal(s).astype(np.float32)
                               for p, s in torch_mapping.jax_shapes(model).items()})
  return model


@pytest.mark.parametrize('layout', ['finetuned_module_backbone', 'pretrain_model_encoder'])
def test_mcg_videomae_layouts(tmp_path, layout):
  cfg = tiny('cast')
  vmae = vmae_reference(cfg)
  t = lambda a: torch.from_numpy(np.array(a))
  if layout == 'finetuned_module_backbone':
    sd = {'backbone.' + k: t(v) for k, v in vmae.items()}
    sd.update({'backbone.fc_norm.weight': torch.ones(WIDTH), 'backbone.fc_norm.bias': torch.zeros(WIDTH),
               'head.weight': torch.randn(5, WIDTH), 'head.bias': torch.randn(5)})
    ckpt = {'module': sd, 'epoch': 10}
  else:
    sd = {'encoder.' + k: t(v) for k, v in vmae.items()}
    sd.update({'encoder.norm.weight': torch.ones(WIDTH), 'encoder.norm.bias': torch.zeros(WIDTH),
               'decoder.blocks.0.norm1.weight': torch.ones(8), 'mask_token': torch.zeros(1, 1, 8),
               'encoder_to_decoder.weight': torch.zeros(8, WIDTH)})
    ckpt = {'model': sd}
  path = str(tmp_path / 'videomae.pth')
  torch.save(ckpt, path)
  model = build(cfg)
  head_before = np.asarray(model.head.kernel[...]).copy()
  torch_import.import_expert(model, cfg, 'videomae', path)
  got = reference_of(model, cfg)
  for k, v in vmae.items():
    np.testing.assert_array_equal(got[k], v, err_msg=k)
  if layout == 'finetuned_module_backbone':
    np.testing.assert_array_equal(got['head.weight'], sd['head.weight'].numpy())
  else:
    np.testing.assert_array_equal(np.asarray(model.head.kernel[...]), head_before)


def test_official_ast_layout_crops_positions_in_time(tmp_path):
  cfg = tiny('cava')  # 32 mel bins x 64 frames: a 2 x 5 patch grid
  source_cfg = tiny('cava', spectrogram_length=124)  # a 2 x 11 grid, like AudioSet's 12 x 101
  ref = reference_of(torch_mapping_randomised(source_cfg, 5), source_cfg)
  ast = {k: v for k, v in ref.items() if k.startswith('ast_') or '.ast_' in k}
  official = {}
  for k, v in ast.items():
    if k.startswith('blocks.'):
      i, rest = k[len('blocks.'):].split('.ast_', 1)
      official[f'module.v.blocks.{i}.{rest}'] = torch.from_numpy(v)
    else:
      official['module.v.' + k[len('ast_'):]] = torch.from_numpy(v)
  official['module.v.head.weight'] = torch.zeros(3, WIDTH)
  official['module.mlp_head.1.weight'] = torch.zeros(3, WIDTH)
  path = str(tmp_path / 'audioset.pth')
  torch.save(official, path)
  model = build(cfg)
  torch_import.import_expert(model, cfg, 'ast', path)
  pos = ast['ast_pos_embed']
  grid = pos[:, 2:].reshape(1, 2, 11, WIDTH)
  start = int(11 / 2) - int(5 / 2)
  expected = np.concatenate([pos[:, :2], grid[:, :, start:start + 5].reshape(1, 10, WIDTH)], 1)
  np.testing.assert_array_equal(np.asarray(model.audio.pos_embed[...]), expected)
  np.testing.assert_array_equal(np.asarray(model.audio.blocks[1].mlp.fc2.kernel[...]),
                                ast['blocks.1.ast_mlp.fc2.weight'].T)


@pytest.mark.parametrize('container', ['deepspeed_module_fp16', 'model', 'safetensors'])
def test_whole_model_checkpoints(tmp_path, container):
  cfg = tiny('cast')
  source = torch_mapping_randomised(cfg, 11)
  ref = reference_of(source, cfg)
  if container == 'deepspeed_module_fp16':
    path = str(tmp_path / 'mp_rank_00_model_states.pt')
    # DeepSpeed's extras include objects weights_only refuses (here an argparse.Namespace).
    torch.save({'module': {k: torch.from_numpy(v).half() for k, v in ref.items()},
                'buffer_names': [], 'ds_version': '0.9.5', 'args': argparse.Namespace(lr=1e-3),
                'global_steps': 100}, path)
    expected = {k: v.astype(np.float16).astype(np.float32) for k, v in ref.items()}
  elif container == 'model':
    path = str(tmp_path / 'checkpoint-best.pth')
    torch.save({'model': {'module.' + k: torch.from_numpy(v) for k, v in ref.items()}, 'epoch': 1}, path)
    expected = ref
  else:
    path = str(tmp_path / 'cast.safetensors')
    torch_io.write_tensors(path, ref)
    expected = ref
  model = build(cfg)
  torch_import.import_checkpoint(model, cfg, path)
  got = reference_of(model, cfg)
  for k, v in expected.items():
    np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_load_into_reads_config_init(tmp_path):
  cfg = tiny('cast')
  ref = reference_of(torch_mapping_randomised(cfg, 2), cfg)
  path = str(tmp_path / 'whole.pth')
  torch_io.write_tensors(path, ref)
  model = build(cfg)
  init = ml_collections.ConfigDict(dict(clip='', videomae='', ast='', checkpoint=path))
  assert torch_import.load_into(model, init, cfg) == {'checkpoint': path}
  np.testing.assert_array_equal(reference_of(model, cfg)['head.weight'], ref['head.weight'])
  assert torch_import.load_into(build(cfg), init) == {'checkpoint': path}  # config inferred
  for name, overrides in (('cava', dict(split_time_mlp=False)), ('ca2st', dict(audio_exchange_start=1)),
                          ('cava_compositional', {}), ('ca2st_compositional', {})):
    other = tiny(name, **overrides)
    inferred = torch_import.infer_model_config(build(other))
    for field, value in inferred.items():
      assert other[field] == value, (name, field)


# ------------------------------------------------------------------------------ bad input


def params_of(model):
  return {k: v.copy() for k, v in torch_mapping.model_arrays(model).items()}


@pytest.mark.parametrize('problem,message', [
    ('missing', r'missing keys \(1\): \[.blocks\.1\.T_Adapter\.D_fc1\.weight'),
    ('unexpected', r'unexpected keys \(1\): \[.blocks\.1\.extra_thing'),
    ('shape', r'shape mismatch for head\.weight: expected \(5, 32\), found \(7, 32\)'),
])
def test_bad_checkpoint_names_the_key_and_loads_nothing(tmp_path, problem, message):
  cfg = tiny('cast')
  ref = reference_of(torch_mapping_randomised(cfg, 4), cfg)
  if problem == 'missing':
    del ref['blocks.1.T_Adapter.D_fc1.weight']
  elif problem == 'unexpected':
    ref['blocks.1.extra_thing'] = np.zeros(3, np.float32)
  else:
    ref['head.weight'] = np.zeros((7, WIDTH), np.float32)
  path = str(tmp_path / 'bad.pth')
  torch_io.write_tensors(path, ref)
  model = build(cfg)
  before = params_of(model)
  with pytest.raises(torch_io.CheckpointError, match=message):
    torch_import.import_checkpoint(model, cfg, path)
  after = params_of(model)
  assert all(np.array_equal(before[k], after[k]) for k in before)  # nothing partially loaded


def test_bad_files(tmp_path):
  cfg = tiny('cast')
  model = build(cfg)
  text = tmp_path / 'notes.pth'
  text.write_text('this is not a checkpoint')
  with pytest.raises(torch_io.CheckpointError, match='not a PyTorch checkpoint'):
    torch_import.import_checkpoint(model, cfg, str(text))
  wrong = str(tmp_path / 'wrong.pth')
  torch.save({'optimizer': {'lr': 1.0}, 'epoch': 3}, wrong)
  with pytest.raises(torch_io.CheckpointError, match='wrong container'):
    torch_import.import_checkpoint(model, cfg, wrong)
  with pytest.raises(torch_io.CheckpointError, match='no such file'):
    torch_import.import_expert(model, cfg, 'clip', str(tmp_path / 'absent.pt'))
  with pytest.raises(torch_io.CheckpointError, match='has no audio'):
    torch_import.import_expert(model, cfg, 'ast', {'module.v.norm.weight': torch.ones(WIDTH)})
  with pytest.raises(torch_io.CheckpointError, match='unexpected keys for this source'):
    torch_import.import_expert(model, cfg, 'clip', {'visual.conv1.weight': torch.ones(WIDTH, 3, 16, 16),
                                                    'visual.bogus': torch.ones(1)})
  # A CLIP of another depth: the extra block is an unexpected key, the absent one missing.
  deeper = {f'visual.transformer.resblocks.{i}.ln_1.weight': torch.ones(WIDTH) for i in range(3)}
  with pytest.raises(torch_io.CheckpointError, match=r'unexpected keys .*blocks\.2\.clip_ln_1\.weight'):
    torch_import.import_expert(model, cfg, 'clip', deeper)


def test_crafted_archive_with_a_bad_storage_type(tmp_path):
  path = tmp_path / 'crafted.pth'
  torch.save({'w': torch.ones(3)}, path)
  with zipfile.ZipFile(path) as z:
    members = {n: z.read(n) for n in z.namelist()}
  pkl = next(n for n in members if n.endswith('data.pkl'))
  assert b'FloatStorage' in members[pkl]
  members[pkl] = members[pkl].replace(b'FloatStorage', b'XloatStorage')  # not a torch class
  with zipfile.ZipFile(path, 'w') as z:
    for n, data in members.items():
      z.writestr(n, data)
  with pytest.raises(torch_io.CheckpointError, match=r'crafted\.pth: .*unknown storage type'):
    torch_io.read_tensors(str(path))   # was AttributeError
