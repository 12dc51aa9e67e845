"""Compositional CAVA and CA²ST (EPIC-KITCHENS-100 with audio): parameter counts and a strict load
against the key lists derived from the authors' code, and configs/{cava,ca2st}_ek100.py:tiny
through the real EK100 builder, input pipeline and trainer (one train step, one eval)."""
import json
import math
import os

import jax
import numpy as np
import pytest
import torch

from ca2st_jax.interop import torch_mapping
from ca2st_jax.interop import torch_model
from ca2st_jax.tools import summary
from tests_helpers import ROOT, load_config

# Its module fixtures run once, on one worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group('test_compositional_av')


REFERENCE = ROOT / 'tests' / 'fixtures' / 'reference'
# (config, key list, parameters counting shared tensors once)
CASES = [
    ('cava_ek100', 'authors_keys_cava_compo_ek100_t400.tsv', 215_505_421),
    ('ca2st_ek100', 'authors_keys_ca2st_compo_ca9_shared_ek100_t400.tsv', 320_183_821),
]


def read_key_list(name):
  """[(key, shape, trained)] of a reference key list."""
  rows = []
  for line in open(REFERENCE / name):
    if line.startswith('#'):
      continue
    key, shape, flag = line.rstrip('\n').split('\t')
    shape = tuple(int(x) for x in shape.strip('()').split(',') if x.strip())
    rows.append((key, shape, flag == 'T'))
  return rows


@pytest.mark.slow
@pytest.mark.parametrize('config_name,tsv,expected_total', CASES)
def test_summary_counts_match_key_list(config_name, tsv, expected_total, abstract_model):
  cfg = load_config(config_name).model
  counts = summary.parameter_counts(abstract_model(cfg))
  # The key list names a shared tensor (CA²ST's bcast_share) under each of its names.
  with torch.device('meta'):
    shared = torch_model.shared_names(torch_model.build(cfg))
  copies = {name for others in shared.values() for name in others}
  rows = [r for r in read_key_list(tsv) if r[0] not in copies]
  assert counts['total'] == sum(math.prod(s) for _, s, _ in rows) == expected_total
  assert counts['trainable'] == sum(math.prod(s) for _, s, trained in rows if trained)
  assert bool(copies) == config_name.startswith('ca2st')


@pytest.mark.slow
@pytest.mark.parametrize('config_name,tsv,expected_total', CASES)
def test_export_loads_strictly_into_key_list(config_name, tsv, expected_total,
                                            abstract_model):
  """At base size, shapes only: a state_dict of the key list's names and shapes loads into the
  PyTorch reference-layout model (meta device) with strict=True, and the export of the JAX model
  has exactly those names and shapes (the order and the trained flags are compared in
  test_interop_models.test_export_keys_and_shapes_match_reference_at_base_size)."""
  del expected_total
  cfg = load_config(config_name).model
  rows = read_key_list(tsv)
  with torch.device('meta'):
    model = torch_model.build(cfg)
    model.load_state_dict({k: torch.empty(s) for k, s, _ in rows}, strict=True, assign=True)
  abstract = abstract_model(cfg)
  entries = torch_mapping.model_table(abstract, cfg)
  shapes = torch_mapping.reference_shapes(entries, torch_mapping.jax_shapes(abstract))
  assert dict(shapes) == {k: s for k, s, _ in rows}
  assert shapes['head_verb.weight'] == (97, 768) and shapes['head_noun.weight'] == (300, 768)


# ------------------------------------------------------------------ EK100 with audio, end to end

FPS, SECONDS, RATE = 8, 6, 16000


def _raw_ek100(raw):
  """One 6 s kitchen video whose audio amplitude steps up every second, and the two CSVs."""
  from ca2st_jax.data import decode  # pylint: disable=import-outside-toplevel
  t = np.arange(SECONDS * RATE) / RATE
  wave = 0.1 * (1 + np.floor(t)) * np.sin(2 * np.pi * 440 * t)      # amplitude 0.1 in [0, 1) s, ...
  frames = np.random.default_rng(0).integers(0, 255, (SECONDS * FPS, 48, 64, 3), dtype=np.uint8)
  (raw / 'P01' / 'videos').mkdir(parents=True)
  decode.write_video(raw / 'P01' / 'videos' / 'P01_01.MP4', frames, FPS, wave, RATE)
  header = ('narration_id,participant_id,video_id,narration_timestamp,start_timestamp,'
            'stop_timestamp,start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,'
            'all_nouns,all_noun_classes\n')
  row = ('P01_01_{i},P01,P01_01,00:00:00.00,00:00:0{a}.00,00:00:0{b}.00,0,0,x,v,{v},n,{n},'
         '[n],[{n}]\n')
  (raw / 'EPIC_100_train.csv').write_text(
      header + row.format(i=0, a=0, b=2, v=3, n=8) + row.format(i=1, a=4, b=5, v=1, n=2))
  (raw / 'EPIC_100_validation.csv').write_text(header + row.format(i=2, a=2, b=4, v=3, n=8))


@pytest.fixture(scope='module')
def ek100_dir(tmp_path_factory):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from ca2st_jax.data import builders  # pylint: disable=import-outside-toplevel
  from ca2st_jax.data.builders import base  # pylint: disable=import-outside-toplevel
  tmp = tmp_path_factory.mktemp('ek100')
  _raw_ek100(tmp / 'raw')
  config = base.VideoBuilderConfig(name='tiny', short_side=40)
  built = base.build(builders.Ek100, tmp / 'raw', tmp / 'out', config, num_workers=1)
  return os.fspath(tfds.builder_from_directory(built.data_dir).data_dir)


def test_ek100_builder_stores_each_segment_audio(ek100_dir):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  source = tfds.builder_from_directory(ek100_dir).as_data_source('train')
  records = {r['id'].decode(): r for r in (source[i] for i in range(len(source)))}
  for key, (start, stop) in (('P01_01_0', (0, 2)), ('P01_01_1', (4, 5))):
    pcm = records[key]['audio'].astype(np.float64) / 32768
    assert records[key]['has_audio'] and abs(pcm.size - (stop - start) * RATE) < 0.03 * RATE
    # The segment's own audio: second k of the video has amplitude 0.1 (k + 1).
    peak = np.abs(pcm[int(0.1 * RATE):int(0.9 * RATE)]).max()
    np.testing.assert_allclose(peak, 0.1 * (start + 1), rtol=0.05)


@pytest.mark.slow
def test_ek100_tiny_config_one_train_and_eval_step(ek100_dir, tmp_path):
  """ca2st_ek100:tiny on the built set (cava_ek100 trains in test_train_configs)."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ca2st_jax.train import trainer  # pylint: disable=import-outside-toplevel
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  config = load_config('ca2st_ek100', 'tiny')
  config.data.update(dataset_dir=ek100_dir, num_workers=0, eval_batch_size=6)
  config.train.update(total_steps=1, warmup_steps=0, ckpt_every=1)
  workdir = tmp_path / 'wd'
  result = trainer.train_and_evaluate(config, str(workdir), 'train_and_eval',
                                      devices=jax.devices()[:1])
  assert result['num_videos'] == 1
  for metric in ('verb_top1', 'noun_top1', 'action_top1', 'action_top1_ref'):
    assert metric in result
  lines = [json.loads(l) for l in open(workdir / 'metrics.jsonl')]
  assert [l['split'] for l in lines] == ['train', 'val']
  assert np.isfinite(lines[0]['loss'])
