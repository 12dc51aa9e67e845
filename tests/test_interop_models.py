"""JAX model vs the PyTorch reference-layout model, on the same weights; mapping round trips;
export key lists at base size against the reference key lists (tests/fixtures/reference/*.tsv)."""
import os

import numpy as np
import pytest
import torch
from flax import nnx

from ca2st_jax import models
from ca2st_jax.interop import torch_model
from ca2st_jax.interop import torch_mapping
from ca2st_jax.tools import export_torch
from tests_helpers import load_config, tiny_model_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(REPO, 'tests', 'fixtures', 'reference')


def tiny(name, **overrides):
  return tiny_model_config(name, **{**dict(num_classes=5, num_verbs=3, num_nouns=4, num_frames=4,
                                           drop_path=0.1, head_dropout=0.1,
                                           audio_exchange_start=1), **overrides})


def randomised(cfg, seed=0):
  """A model whose every parameter (adapters, B-CA up-projections, heads included) is random."""
  model = models.build(cfg, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
  rng = np.random.default_rng(seed)
  shapes = torch_mapping.jax_shapes(model)
  torch_mapping.assign(model, {p: (0.3 * rng.standard_normal(s)).astype(np.float32)
                               for p, s in shapes.items()})
  return model


def inputs(cfg, batch=2, seed=1):
  rng = np.random.default_rng(seed)
  video = rng.standard_normal((batch, cfg.num_frames, cfg.image_size, cfg.image_size, 3)).astype(np.float32)
  audio = rng.standard_normal((batch, cfg.spectrogram_length, cfg.num_mel_bins)).astype(np.float32)
  times = np.sort(rng.uniform(0, 10, (batch, 1 + cfg.num_frames // cfg.tubelet_size, 2)), -1)
  return video, audio, times.astype(np.float32)


def torch_logits(cfg, reference, video, audio, times):
  model = torch_model.build(cfg)
  model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in reference.items()}, strict=True)
  with torch.no_grad():
    out = model(torch.from_numpy(video).permute(0, 4, 1, 2, 3), torch.from_numpy(audio),
                torch.from_numpy(times))
  return {k: v.numpy() for k, v in out.items()}


CASES = [
    ('cast', {}),
    ('cast_compositional', {}),
    ('cava', {}),
    ('ca2st', {}),  # seq, shared projections, audio pairs from layer 1 of 2
    ('ca2st', dict(exchange_method='add', share_exchange_projections=False, audio_exchange_start=0)),
    ('cava', dict(learned_positions=True, split_time_mlp=False)),
    ('ca2st', dict(learned_positions=True, time_encoding=False)),
    ('cava_compositional', {}),
    ('ca2st_compositional', {}),
]


@pytest.mark.parametrize('name,overrides', CASES, ids=[f'{n}-{i}' for i, (n, _) in enumerate(CASES)])
def test_jax_matches_torch_model(name, overrides):
  cfg = tiny(name, **overrides)
  model = randomised(cfg)
  entries = torch_mapping.model_table(model, cfg)
  reference = export_torch.export_arrays(model, cfg)
  video, audio, times = inputs(cfg)
  out_jax = model(video=video, audio=audio, audio_times=times, deterministic=True)
  out_torch = torch_logits(cfg, reference, video, audio, times)
  assert set(out_jax) == set(out_torch)
  for k in out_jax:
    got = np.asarray(out_jax[k])
    assert got.shape == out_torch[k].shape
    assert np.abs(out_torch[k]).max() > 0.1  # the comparison is not between zeros
    np.testing.assert_allclose(got, out_torch[k], atol=1e-4, rtol=0)

  # Round trip JAX -> reference -> JAX is bit-exact, and a second model loaded from it agrees.
  back = torch_mapping.to_jax(entries, reference, torch_mapping.jax_shapes(model))
  original = torch_mapping.model_arrays(model)
  assert set(back) == set(original)
  for p, v in original.items():
    assert np.array_equal(back[p], v), p
  other = models.build(cfg, rngs=nnx.Rngs(params=7, dropout=8))
  torch_mapping.assign(other, back)
  for p, v in torch_mapping.model_arrays(other).items():
    assert np.array_equal(v, original[p]), p


def test_shared_projections_are_one_tensor():
  cfg = tiny('ca2st')
  model = randomised(cfg)
  reference = export_torch.export_arrays(model, cfg)
  groups = export_torch.shared_groups(model, cfg)
  assert groups['blocks.1.s_t_b_cast.cross_l_down.weight'] == ['blocks.1.s_audio_b_cast.cross_l_down.weight']
  assert groups['blocks.1.s_audio_b_cast.cross_r_up.bias'] == ['blocks.1.t_audio_b_cast.cross_r_up.bias']
  assert not any(k.startswith('blocks.0.') for k in groups)  # no audio pairs before layer 1
  for first, others in groups.items():
    for o in others:
      assert np.array_equal(reference[first], reference[o])
  # Loading copies that disagree is refused.
  bad = dict(reference)
  bad['blocks.1.s_audio_b_cast.cross_l_down.weight'] = bad['blocks.1.s_audio_b_cast.cross_l_down.weight'] + 1
  with pytest.raises(ValueError, match='shared'):
    torch_mapping.to_jax(torch_mapping.model_table(model, cfg), bad, torch_mapping.jax_shapes(model))


def read_tsv(name, with_flags=False):
  rows = []
  with open(os.path.join(REFERENCE, name)) as f:
    for line in f:
      if line.startswith('#'):
        continue
      key, shape, flag = line.rstrip('\n').split('\t')
      shape = tuple(int(x) for x in shape.strip('()').split(',') if x.strip())
      rows.append((key, shape, flag == 'T') if with_flags else (key, shape))
  return rows


@pytest.mark.slow
@pytest.mark.parametrize('config_name,tsv', [
    ('cast_k400', 'official_keys_cast_k400.tsv'),
    ('cast_ek100', 'official_keys_cast_ek100.tsv'),
    ('cava_vggsound', 'authors_keys_cava_vggsound_t1024.tsv'),
    ('cava_epic_sounds', 'authors_keys_cava_epicsounds_t400.tsv'),
    ('ca2st_vggsound', 'authors_keys_ca2st_ca9_shared_vggsound_t1024.tsv'),
    ('cava_ek100', 'authors_keys_cava_compo_ek100_t400.tsv'),
    ('ca2st_ek100', 'authors_keys_ca2st_compo_ca9_shared_ek100_t400.tsv'),
])
def test_export_keys_and_shapes_match_reference_at_base_size(config_name, tsv, abstract_model):
  config = load_config(config_name)
  cfg = config.model
  abstract = abstract_model(cfg)
  entries = torch_mapping.model_table(abstract, cfg)
  shapes = torch_mapping.reference_shapes(entries, torch_mapping.jax_shapes(abstract))
  order = export_torch.reference_order(cfg)
  exported = [(k, shapes[k]) for k in order]
  assert set(order) == set(shapes)
  assert exported == read_tsv(tsv)
  # The reference's trained/frozen split is the JAX model's TRAINABLE filter, name by name.
  trained = {key: flag for key, _, flag in read_tsv(tsv, with_flags=True)}
  wrong = [e.ref for e in entries if models.is_trainable(tuple(e.jax.split('/'))) != trained[e.ref]]
  assert not wrong, wrong[:10]
