r"""Input-pipeline throughput: train and eval clips/s, per worker process, and where time goes.

  python -m ca2st_jax.tools.bench_data --config=configs/<name>.py [--json]
  python -m ca2st_jax.tools.bench_data            # the synthetic set at the K400 recipe, 16x224
  python -m ca2st_jax.tools.bench_data --ra_after_crop --workers=2   # variants

Train is measured in-process (one worker: clips/s per worker) and, with --workers=N>0 (-1: the
configs' one per core), through Grain's multiprocess prefetch (total clips/s with N workers).
Without a prepared dataset for the config (no `dataset_dir` set and nothing built under its
`data_dir`) it builds (once, cached under --data_dir) a synthetic stand-in whose stored frames look
like a prepared Kinetics clip: 64 frames at 256x340 JPEG (16 fps), 4 s of 16 kHz audio; the
config's recipe (sampling, augmentation, audio or not) is kept.
The profile times each stage of one train clip on the same records.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

from absl import app, flags
import ml_collections
from ml_collections import config_flags
import numpy as np

from ca2st_jax import config_lib

_CONFIG = config_flags.DEFINE_config_file('config', None, 'config file (optional)',
                                          lock_config=False)
_JSON = flags.DEFINE_bool('json', False, 'print one JSON line')
_BATCHES = flags.DEFINE_integer('batches', 6, 'train batches to time (after 1 warm-up)')
_WORKERS = flags.DEFINE_integer('workers', 0, 'also time Grain multiprocess prefetch with N '
                                 'workers (-1: one per core, as the paper configs)')
_RA_AFTER_CROP = flags.DEFINE_bool('ra_after_crop', None,
                                   'override config.data.randaugment_after_crop')
_DATA_DIR = flags.DEFINE_string('data_dir', os.path.join(tempfile.gettempdir(), 'ca2st_bench'),
                                'where the synthetic bench set is cached')

BENCH_SYNTHETIC = dict(num_train=16, num_test=4, num_frames=64, size=256, width=340)


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      model=dict(num_frames=16, tubelet_size=2, image_size=224, num_mel_bins=128,
                 spectrogram_length=1024),
      data=config_lib.data_config(synthetic=BENCH_SYNTHETIC, eval_batch_size=6, num_workers=0),
      train=dict(batch_size=8)))


def _time(fn, n):
  """CPU seconds of this process per call (robust to other load on a shared machine)."""
  fn()
  t = time.process_time()
  for _ in range(n):
    fn()
  return (time.process_time() - t) / n


def profile(source, n=8):
  """Seconds per train clip spent in each stage (one process)."""
  from ca2st_jax.data import decode, pipeline, transforms  # pylint: disable=g-import-not-at-top
  opts = source.opts
  rec = source.train_records[0]
  rng = np.random.default_rng(0)
  idx = pipeline.frame_indices(len(rec['frames']), opts, rng)
  blobs = [rec['frames'][i] for i in np.clip(idx, 0, len(rec['frames']) - 1)]
  frames = decode.decode_jpegs(blobs)
  ra = transforms.parse_randaugment(opts.randaugment)
  out = {
      'read_record': _time(lambda: source.train_records[0], n),
      'jpeg_decode': _time(lambda: decode.decode_jpegs(blobs), n),
      'randaugment': _time(lambda: transforms.rand_augment(
          frames, np.random.default_rng(1), *ra, interpolation=opts.interpolation), n) if ra else 0,
      'crop_resize_flip': _time(lambda: transforms.train_frames(
          frames, np.random.default_rng(1), crop_size=opts.crop_size, randaugment=''), n),
  }
  if opts.with_audio:
    out['audio_fbank'] = _time(
        lambda: pipeline.clip_audio(rec, opts, 0.5, np.random.default_rng(2)), n)
  out['whole_clip'] = _time(lambda: pipeline.train_clip(rec, np.random.default_rng(3), opts), n)
  return {k: round(v * 1000, 2) for k, v in out.items()}   # milliseconds


def run(config, batches, workers):
  from ca2st_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  config.data.num_workers = 0   # first in this process: the per-worker (per-core) rate
  source = pipeline.make_source(config)
  bs = source.batch_size
  it = source.train_iterator()
  next(it)
  t, c = time.perf_counter(), time.process_time()
  for _ in range(batches):
    b = next(it)
  train = batches * bs / (time.perf_counter() - t)
  per_cpu = batches * bs / (time.process_time() - c)
  res = {'train_clips_per_s': round(train, 2), 'workers': 1,
         'train_clips_per_s_per_worker': round(train, 2),
         # clips per CPU-second of the (single) worker: the per-core rate without other load
         'train_clips_per_cpu_s': round(per_cpu, 2),
         'video_shape': list(b['video'].shape[1:])}
  workers = pipeline.resolve_num_workers(workers)
  if workers > 0:
    config.data.num_workers = workers
    mp_source = pipeline.make_source(config)
    it = mp_source.train_iterator()
    for _ in range(workers):
      next(it)
    t = time.perf_counter()
    n = batches * workers
    for _ in range(n):
      next(it)
    mp = n * bs / (time.perf_counter() - t)
    res.update(train_clips_per_s=round(mp, 2), workers=workers,
               train_clips_per_s_per_worker_mp=round(mp / workers, 2))
    config.data.num_workers = 0
  t, c = time.perf_counter(), time.process_time()
  n = 0
  for eb in source.eval_iterator():
    n += int(eb['mask'].sum())
  res['eval_clips_per_s'] = round(n / (time.perf_counter() - t), 2)
  res['eval_clips_per_cpu_s'] = round(n / (time.process_time() - c), 2)
  res['eval_views'] = n
  res['profile_ms_per_clip'] = profile(source)
  res['cpu_count'] = os.cpu_count()
  res['load_average'] = round(os.getloadavg()[0], 2)
  return res


def use_synthetic_if_unprepared(config) -> str | None:
  """Points config.data at the synthetic stand-in when its data set is not prepared.

  Returns the directory that was looked for (None when the config's own data set is used).
  """
  from ca2st_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  d = config.data
  if d.name == 'synthetic_av':
    if not d.synthetic:
      d.synthetic = BENCH_SYNTHETIC
    return None
  if d.dataset_dir:
    return None  # named explicitly: a wrong path must fail, not be replaced
  looked = pipeline.dataset_dir(config)
  if os.path.exists(os.path.join(looked, 'dataset_info.json')):
    return None
  d.name, d.builder_config, d.synthetic = 'synthetic_av', '', BENCH_SYNTHETIC
  d.train_split, d.eval_split = 'train', 'test'
  return looked


def main(argv):
  del argv
  config = _CONFIG.value if _CONFIG.value is not None else default_config()
  if not config.data.data_dir:
    config.data.data_dir = _DATA_DIR.value
  name = config.data.name
  looked = use_synthetic_if_unprepared(config)
  if looked:
    print(f'no prepared {name} data set at {looked}: timing the synthetic stand-in with '
          f'the config\'s recipe', flush=True)
  if _RA_AFTER_CROP.value is not None:
    config.data.randaugment_after_crop = _RA_AFTER_CROP.value
  res = run(config, _BATCHES.value, _WORKERS.value)
  if _JSON.value:
    print(json.dumps(res))
  else:
    for k, v in res.items():
      print(f'{k:32s} {v}')


if __name__ == '__main__':
  app.run(main)
