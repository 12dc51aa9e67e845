r"""Predict the classes of video files with a trained model; timelines and features.

  python -m ca2st_jax.predict --config=configs/demo.py --checkpoint=/tmp/ca2st_demo clip.mp4 DIR
  python -m ca2st_jax.predict --config=configs/cava_vggsound.py --checkpoint=model.pth \
      [--labels=classes.txt] [--top_k=5] [--json=out.jsonl] [--features=out.npz] \
      [--segments --window=4 --stride=2 [--timeline_png=timeline.png]] VIDEO [VIDEO ...]

--checkpoint: a training workdir (its latest checkpoint; WORKDIR/best for the best one) or a
PyTorch state_dict in the reference layout (.pth / .pt / .safetensors: our exports and the
authors' checkpoints, through ca2st_jax.interop.torch_import). Class names come with the
checkpoint (the workdir's labels.json, or `model.labels.json` beside an export); --labels=FILE
(JSON {"label": [...]} or one name a line) for checkpoints without them.

Each file is decoded with PyAV (frames and, for CAVA / CA²ST, its own audio track; a file without
audio is predicted with silence and flagged), cut into the config's evaluation views exactly as
`--mode=eval` does (ca2st_jax.data.pipeline.eval_clip), and the softmax is averaged over the
views. Views of consecutive files share batches of --batch_size (default config.data.
eval_batch_size). A file that cannot be decoded is reported and skipped; the exit code is 1 when
any was. Times are seconds from the first video frame, on the frames' presentation times (a
variable frame rate is resampled by timestamp at decoding; `start_time_s` is where the first frame
sits on the file's clock; the audio track is aligned to the first frame).
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ca2st_jax.train import writer as writer_lib


def define_flags():
  """The command line's flags (defined only when run as a program: other tools that a process
  may import together with this module define `config` too)."""
  config_flags.DEFINE_config_file('config', None, 'Config file the model was trained with.',
                                  lock_config=False)
  flags.DEFINE_string('checkpoint', None, 'Training workdir (latest checkpoint), WORKDIR/best, '
                      'or a .pth / .pt / .safetensors state_dict.')
  flags.DEFINE_string('labels', None, 'Class names: JSON {"label": [...]} or one a line '
                      '(default: the ones recorded with the checkpoint).')
  flags.DEFINE_integer('top_k', 5, 'Classes printed and recorded per file / window.')
  flags.DEFINE_string('json', None, 'Write one JSON record per decoded file (JSON lines).')
  flags.DEFINE_bool('segments', False, 'Also predict windows along each file (a timeline).')
  flags.DEFINE_float('window', 4.0, 'Seconds per window with --segments.')
  flags.DEFINE_float('stride', 2.0, 'Seconds between window starts with --segments.')
  flags.DEFINE_string('timeline_png', None, "With --segments: the plot of the top classes' "
                      'probabilities over time (default: timeline.png beside --json, else in '
                      'the current directory).')
  flags.DEFINE_string('features', None, 'Write pooled expert features and the fused pre-head '
                      'feature per file (and per window) to this .npz.')
  flags.DEFINE_integer('batch_size', 0, 'Views per forward pass (0: config.data.eval_batch_size, '
                       'else 8).')
  flags.DEFINE_integer('short_side', 256, 'Frames larger than this are decoded with this short '
                       'side, as the data builders store them (0: native).')


FLAGS = flags.FLAGS
VIDEO_EXTENSIONS = ('.mp4', '.webm', '.avi', '.mkv', '.mov', '.flv', '.m4v')
EXPORT_EXTENSIONS = ('.pth', '.pt', '.bin', '.safetensors')


# ----------------------------------------------------------------------------- model and labels

def load_model(config, checkpoint: str):
  """(model, class names or None) from a workdir, WORKDIR/best or a PyTorch state_dict."""
  from ca2st_jax.checkpoints import labels as labels_lib  # pylint: disable=import-outside-toplevel
  from etils import epath  # pylint: disable=import-outside-toplevel
  # a gs:// workdir too (os.path.normpath would make gs:// into gs:/)
  path = epath.Path(checkpoint if '://' in checkpoint else os.path.normpath(checkpoint))
  if path.is_dir():
    from ca2st_jax.train import trainer  # pylint: disable=import-outside-toplevel
    best = path.name == 'best'
    workdir = os.fspath(path.parent if path.name in ('best', 'ckpt') else path)
    model, meta = trainer.restore_model(config, workdir, best=best)
    found = labels_lib.find(workdir)
    names = labels_lib.read(found) if found else (meta or {}).get('labels')
    return model, names
  if not checkpoint.endswith(EXPORT_EXTENSIONS):
    raise ValueError(f'--checkpoint={checkpoint}: not a directory (training workdir) nor a '
                     f'{" / ".join(EXPORT_EXTENSIONS)} file')
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from ca2st_jax import models  # pylint: disable=import-outside-toplevel
  from ca2st_jax.interop import torch_import  # pylint: disable=import-outside-toplevel
  model = models.build(config.model, rngs=nnx.Rngs(params=0, dropout=1))
  torch_import.import_checkpoint(model, config.model, checkpoint)
  found = labels_lib.find(checkpoint)
  return model, labels_lib.read(found) if found else None


def check_labels(names, head_sizes: dict[str, int], where: str) -> dict[str, list[str]]:
  """The class names of every head, checked against the model; numbers when there are none."""
  if not names:
    print('warning: no class names came with the checkpoint (give --labels=FILE); printing class '
          'indices', file=sys.stderr, flush=True)
    return {k: [str(i) for i in range(n)] for k, n in head_sizes.items()}
  for head, n in head_sizes.items():
    if head not in names:
      raise ValueError(f'{where}: no class names for the model head {head!r} (has {sorted(names)})')
    if len(names[head]) != n:
      raise ValueError(f'{where}: {len(names[head])} class names for {head!r}, the model has {n}')
  return {k: list(names[k]) for k in head_sizes}


def _concrete(x):
  """Abstract non-parameter state (the dropout RNG streams a restore leaves abstract) as arrays:
  prediction is deterministic and never draws from them."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  if not isinstance(x, jax.ShapeDtypeStruct):
    return x
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return jnp.broadcast_to(jax.random.key(0), x.shape)
  return jnp.zeros(x.shape, x.dtype)


EXPERT_ORDER = {'CAST': ('spatial', 'temporal'), 'CAVA': ('audio', 'spatial'),
                'CA2ST': ('spatial', 'temporal', 'audio')}


def pooled_features(model, inputs) -> dict:
  """{expert: pooled feature [B, D]} from `model.features`, and 'fused': the pre-head feature
  (the sum of the experts' last adapters; models with one head per expert have none)."""
  names = EXPERT_ORDER[type(model).__name__]
  args = [inputs['video']] + ([inputs['audio'], inputs['audio_times']] if 'audio' in names else [])
  feats = dict(zip(names, model.features(*args, deterministic=True)))
  if hasattr(model, 'head'):
    feats['fused'] = sum(getattr(model, f'{k}_last_adapter')(v) for k, v in feats.items())
  return feats


def make_forward(model, with_features: bool):
  """jit(batch -> {'probs': {head: softmax}, 'features': {...}}) on one device."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from ca2st_jax.data.transforms import normalize_video  # pylint: disable=import-outside-toplevel
  graphdef, state = nnx.split(model)
  state = jax.device_put(jax.tree.map(_concrete, state), jax.local_devices()[0])

  @jax.jit
  def forward(state, batch):
    model = nnx.merge(graphdef, state)
    inputs = {'video': normalize_video(batch['video'])}
    inputs.update({k: batch[k] for k in ('audio', 'audio_times') if k in batch})
    out = {'probs': {k: jax.nn.softmax(v.astype(jnp.float32), -1)
                     for k, v in model(**inputs, deterministic=True).items()}}
    if with_features:
      out['features'] = {k: v.astype(jnp.float32) for k, v in pooled_features(model, inputs).items()}
    return out

  return lambda batch: jax.device_get(forward(state, batch))


# ----------------------------------------------------------------------------- decoding and views

@dataclasses.dataclass
class Decoded:
  """One file, decoded into the record the eval views are cut from (the data builders' layout)."""
  path: str
  record: dict          # frames (JPEG), fps, audio (int16 PCM), audio_rate, has_audio
  duration: float       # seconds from the first frame
  start_time: float     # where the first frame sits on the file's clock (seconds)
  has_audio: bool       # an audio track that decodes


def decode_file(path: str, short_side: int, audio_rate: int, with_audio: bool) -> Decoded:
  """Frames at a constant rate on their presentation times, and the audio aligned to frame 0."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from ca2st_jax.data import decode  # pylint: disable=import-outside-toplevel
  info = decode.probe(path)
  native_short = min(info.width, info.height)
  video = decode.read_video(path, short_side if 0 < short_side < native_short else 0)
  pcm, rate = np.zeros(0, np.int16), 0
  if with_audio and info.audio_start is not None:
    pcm, rate = decode.read_audio(path, audio_rate)
    # Sample 0 of the track is at audio_start on the file's clock, frame 0 at video_start.
    shift = int(round((info.audio_start - info.video_start) * rate)) if rate else 0
    pcm = np.concatenate([np.zeros(shift, np.int16), pcm]) if shift > 0 else pcm[-shift:]
  # A video-only model reports whether the file has an audio stream (not decoded).
  has_audio = bool(pcm.size) if with_audio else info.audio_start is not None
  record = dict(frames=video.jpegs, fps=np.float32(video.fps), audio=pcm,
                audio_rate=np.int32(rate if pcm.size else 0), has_audio=bool(pcm.size))
  return Decoded(path, record, float(video.duration), info.video_start, has_audio)


def windows(duration: float, window: float, stride: float) -> list[tuple[float, float]]:
  """[start, end) seconds of the timeline's windows: every `stride` seconds from 0, the last one
  ending at `duration` (so together they cover the whole file); one window for a short file."""
  if window <= 0 or stride <= 0:
    raise ValueError(f'--window={window} and --stride={stride} must be positive')
  if stride > window:
    raise ValueError(f'--stride={stride} is longer than --window={window}: the windows would '
                     'leave gaps')
  if duration <= window:
    return [(0.0, duration)]
  out, start = [], 0.0
  while start + window < duration - 1e-6:
    out.append((start, start + window))
    start += stride
  out.append((duration - window, duration))
  return out


def cut(record: dict, start: float, end: float) -> dict:
  """The part of a record between `start` and `end` seconds (at least one frame)."""
  fps, rate = float(record['fps']), int(record['audio_rate'])
  first = min(int(round(start * fps)), len(record['frames']) - 1)
  last = max(int(round(end * fps)), first + 1)
  audio = record['audio'][int(round(start * rate)):int(round(end * rate))] if rate else record['audio']
  return dict(record, frames=record['frames'][first:last], audio=audio,
              has_audio=bool(record['has_audio']) and audio.size > 0)


def eval_views(record: dict, opts) -> list[dict]:
  """Every (clip, crop) evaluation view of a record, as --mode=eval cuts them."""
  from ca2st_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  return [pipeline.eval_clip(record, clip, crop, opts, opts.num_clips, opts.num_crops)
          for clip in range(opts.num_clips) for crop in range(opts.num_crops)]


def clip_options(config):
  """The config's evaluation options (pipeline.clip_options), without labels: files have none."""
  from ca2st_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  return dataclasses.replace(pipeline.clip_options(config), labels=(), spec_augment=False)


# ----------------------------------------------------------------------------- batching

class Item:
  """A file or one of its windows: sums of its views' probabilities (and features)."""

  def __init__(self, num_views: int, has_audio: bool = True):
    self.remaining, self.count, self.has_audio = num_views, 0, has_audio
    self.probs, self.features = {}, {}

  def add(self, probs: dict, features: dict):
    for acc, new in ((self.probs, probs), (self.features, features)):
      for k, v in new.items():
        acc[k] = acc[k] + v if k in acc else v.astype('float64')
    self.count += 1
    self.remaining -= 1

  def mean(self, which: dict) -> dict:
    return {k: v / self.count for k, v in which.items()}


class Batcher:
  """Fills fixed-size batches with the views of consecutive files (one compiled shape; the last
  batch padded with copies) and hands each view's outputs back to its Item."""

  def __init__(self, forward, batch_size: int):
    self.forward, self.batch_size = forward, batch_size
    self.views, self.owners = [], []

  def add(self, item: Item, view: dict):
    self.views.append(view)
    self.owners.append(item)
    if len(self.views) == self.batch_size:
      self.run()

  def run(self):
    import numpy as np  # pylint: disable=import-outside-toplevel
    if not self.views:
      return
    n = len(self.views)
    views = self.views + [self.views[-1]] * (self.batch_size - n)
    batch = {k: np.stack([v[k] for v in views]) for k in ('video', 'audio', 'audio_times')
             if k in views[0]}
    out = self.forward(batch)
    for i, item in enumerate(self.owners):
      item.add({k: v[i] for k, v in out['probs'].items()},
               {k: v[i] for k, v in out.get('features', {}).items()})
    self.views, self.owners = [], []


# ----------------------------------------------------------------------------- results

def top_k(probs, names, k: int) -> list[dict]:
  import numpy as np  # pylint: disable=import-outside-toplevel
  order = np.argsort(-probs, kind='stable')[:k]
  return [{'label': names[i], 'index': int(i), 'prob': float(probs[i])} for i in order]


def predictions(probs: dict, names: dict, k: int) -> dict:
  """{'predictions': top-k} of a single-head model; {'verb', 'noun', 'action'} of a
  compositional one (action = verb x noun, their probabilities multiplied)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  if 'label' in probs:
    return {'predictions': top_k(probs['label'], names['label'], k)}
  verb, noun = probs['verb'], probs['noun']
  joint = np.outer(verb, noun)
  order = np.argsort(-joint, axis=None, kind='stable')[:k]
  action = []
  for flat in order:
    v, n = np.unravel_index(flat, joint.shape)
    action.append({'label': f"{names['verb'][v]} {names['noun'][n]}", 'verb_index': int(v),
                   'noun_index': int(n), 'prob': float(joint[v, n])})
  return {'verb': top_k(verb, names['verb'], k), 'noun': top_k(noun, names['noun'], k),
          'action': action}


def print_result(record: dict, out=sys.stdout):
  audio = 'audio' if record['has_audio'] else 'no audio'
  lines = [f"{record['path']}  ({record['duration_s']:.2f} s, {audio})"]
  lines += [f'  warning: {w}' for w in record.get('warnings', [])]
  for head in ('predictions', 'action', 'verb', 'noun'):
    if head in record:
      title = '' if head == 'predictions' else f'  {head}:'
      lines += [title] if title else []
      lines += [f"  {p['prob']:.3f}  {p['label']}" for p in record[head]]
  for seg in record.get('segments', []):
    best = (seg.get('predictions') or seg['action'])[0]
    lines.append(f"  [{seg['start_s']:7.2f} - {seg['end_s']:7.2f} s]  {best['prob']:.3f}  "
                 f"{best['label']}")
  print('\n'.join(lines), file=out, flush=True)


def plot_timelines(records: list[dict], path: str, num_classes: int = 3) -> str:
  """One panel per file: the probabilities of its top classes in each window over time."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(len(records), 1, figsize=(10, 2.6 * len(records)), squeeze=False)
  for ax, rec in zip(axes[:, 0], records):
    segs = rec['segments']
    key = 'label' if 'predictions' in segs[0] else 'verb'   # the head all_probs holds
    score = {}
    for seg in segs:
      for p in seg['all_probs']:
        score[p[0]] = max(score.get(p[0], 0.0), p[1])
    top = sorted(score, key=score.get, reverse=True)[:num_classes]
    for label in top:
      xs, ys = [], []
      for seg in segs:
        prob = dict(map(tuple, seg['all_probs'])).get(label, 0.0)
        xs += [seg['start_s'], seg['end_s']]
        ys += [prob, prob]
      ax.plot(xs, ys, label=label)
    ax.set_xlim(0, max(rec['duration_s'], 1e-3))
    ax.set_ylim(0, 1.02)
    ax.set_ylabel(f'p ({key})')
    ax.set_title(os.path.basename(rec['path']), fontsize=9)
    ax.legend(fontsize=7, loc='upper right')
  axes[-1, 0].set_xlabel('seconds from the first frame')
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def list_videos(args) -> list[str]:
  """The files named, and the video files under the directories named (sorted)."""
  out = []
  for a in args:
    if os.path.isdir(a):
      for dirpath, dirs, files in os.walk(a):
        dirs.sort()
        out += [os.path.join(dirpath, f) for f in sorted(files)
                if f.lower().endswith(VIDEO_EXTENSIONS)]
    else:
      out.append(a)
  return out


@dataclasses.dataclass
class Options:
  top_k: int = 5
  segments: bool = False
  window: float = 4.0
  stride: float = 2.0
  with_features: bool = False
  batch_size: int = 8
  short_side: int = 256


def predict(config, model, names, paths, options: Options, log=sys.stderr):
  """Predicts every file: (records of the decoded files, features or None, failed [(path, why)]).

  Each record is printed as soon as its file's views are done. `names`: the class names
  ({head: [...]}, or None for class indices). Records keep each window's full probabilities
  ('all_probs', for the plot); `public(record)` is what --json writes.
  """
  import numpy as np  # pylint: disable=import-outside-toplevel
  from ca2st_jax.data import decode  # pylint: disable=import-outside-toplevel
  opts = clip_options(config)
  forward = make_forward(model, options.with_features)
  batcher = Batcher(forward, options.batch_size)
  records, failed, pending = [], [], []   # pending: (Decoded, file Item, [(window, Item)])
  features = {'file': [], 'window': []}
  t0 = time.time()

  def finish(decoded, file_item, window_items):
    nonlocal names
    probs = file_item.mean(file_item.probs)
    if not isinstance(names, dict) or set(names) != set(probs) or any(
        len(names[k]) != len(v) for k, v in probs.items()):
      names = check_labels(names, {k: len(v) for k, v in probs.items()},
                           'the class names (--labels=FILE, or the labels file of the checkpoint)')
    rec = {'path': decoded.path, 'duration_s': round(decoded.duration, 4),
           'start_time_s': round(decoded.start_time, 4), 'has_audio': decoded.has_audio,
           'num_views': file_item.count, **predictions(probs, names, options.top_k)}
    if opts.with_audio and not decoded.has_audio:
      rec['warnings'] = ['no audio track: predicted with silence']
    if options.with_features:
      features['file'].append(file_item.mean(file_item.features))
    if options.segments:
      rec['segments'] = []
      for (start, end), item in window_items:
        p = item.mean(item.probs)
        seg = {'start_s': round(start, 4), 'end_s': round(end, 4),
               'has_audio': bool(item.has_audio), **predictions(p, names, options.top_k)}
        head = 'label' if 'label' in p else 'verb'
        seg['all_probs'] = [[names[head][i], float(x)] for i, x in enumerate(p[head])]
        rec['segments'].append(seg)
        if options.with_features:
          features['window'].append(dict(item.mean(item.features), file=len(records),
                                         start_s=start, end_s=end))
    records.append(rec)
    done = len(records) + len(failed)
    elapsed = time.time() - t0
    print(f'[{done}/{len(paths)}] {decoded.path}: done; {elapsed:.1f} s elapsed, ETA '
          f'{writer_lib.format_eta(elapsed / done * (len(paths) - done))}', file=log, flush=True)
    print_result(public(rec))

  def drain(final=False):
    if final:
      batcher.run()
    while pending and pending[0][1].remaining == 0 and all(
        it.remaining == 0 for _, it in pending[0][2]):
      finish(*pending.pop(0))

  for path in paths:
    try:
      decoded = decode_file(path, options.short_side, opts.audio_rate, opts.with_audio)
    except (decode.DecodeError, OSError, ValueError) as e:
      failed.append((path, str(e)))
      print(f'error: {path}: cannot decode ({e}); skipped', file=log, flush=True)
      continue
    views = eval_views(decoded.record, opts)
    file_item = Item(len(views))
    window_items = []
    if options.segments:
      for start, end in windows(decoded.duration, options.window, options.stride):
        part = cut(decoded.record, start, end)
        item = Item(opts.num_clips * opts.num_crops,
                    part['has_audio'] if opts.with_audio else decoded.has_audio)
        window_items.append(((start, end), item))
    pending.append((decoded, file_item, window_items))
    for view in views:
      batcher.add(file_item, view)
    for (start, end), item in window_items:
      for view in eval_views(cut(decoded.record, start, end), opts):
        batcher.add(item, view)
    drain()
  drain(final=True)
  feats = _stack_features(features, records) if options.with_features else None
  return records, feats, failed


def public(rec: dict) -> dict:
  """The record as written (without the per-window probability lists the plot uses)."""
  if 'segments' not in rec:
    return rec
  return dict(rec, segments=[{k: v for k, v in s.items() if k != 'all_probs'}
                             for s in rec['segments']])


def _stack_features(features, records) -> dict:
  import numpy as np  # pylint: disable=import-outside-toplevel
  out = {'path': np.asarray([r['path'] for r in records], dtype=str)}
  if features['file']:
    for k in features['file'][0]:
      out[k] = np.stack([f[k] for f in features['file']]).astype(np.float32)
  if features['window']:
    for k in features['window'][0]:
      dtype = np.int32 if k == 'file' else np.float32
      out[f'window_{k}'] = np.asarray([f[k] for f in features['window']], dtype)
  return out


def main(argv):
  paths = list_videos(argv[1:])
  if FLAGS.config is None or not FLAGS.checkpoint:
    raise app.UsageError('--config=configs/<name>.py and --checkpoint=WORKDIR|model.pth are required')
  if not paths:
    raise app.UsageError('name at least one video file or directory of videos')
  config = FLAGS.config
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax's INFO lines would bury the predictions
  from ca2st_jax.checkpoints import labels as labels_lib  # pylint: disable=import-outside-toplevel
  from ca2st_jax.checkpoints.orbax import CheckpointError as OrbaxError  # pylint: disable=import-outside-toplevel
  from ca2st_jax.interop.torch_io import CheckpointError  # pylint: disable=import-outside-toplevel
  try:
    model, names = load_model(config, FLAGS.checkpoint)
    if FLAGS.labels:
      names = labels_lib.read(FLAGS.labels)
  except (CheckpointError, OrbaxError, OSError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(1)
  batch_size = FLAGS.batch_size or int(config.data.get('eval_batch_size', 0) or 8)
  options = Options(top_k=FLAGS.top_k, segments=FLAGS.segments, window=FLAGS.window,
                    stride=FLAGS.stride, with_features=bool(FLAGS.features),
                    batch_size=batch_size, short_side=FLAGS.short_side)
  if options.segments:
    windows(1.0, options.window, options.stride)  # checks them before any decoding
  try:
    records, feats, failed = predict(config, model, names, paths, options)
  except ValueError as e:  # class names that do not fit the model
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(1)
  if FLAGS.json:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.json)), exist_ok=True)
    with open(FLAGS.json, 'w') as f:
      for rec in records:
        f.write(json.dumps(public(rec)) + '\n')
    print(f'wrote {FLAGS.json} ({len(records)} records)', file=sys.stderr, flush=True)
  if options.segments and records:
    png = FLAGS.timeline_png or os.path.join(
        os.path.dirname(os.path.abspath(FLAGS.json)) if FLAGS.json else '.', 'timeline.png')
    print(f'wrote {plot_timelines(records, png)}', file=sys.stderr, flush=True)
  if feats is not None:
    import numpy as np  # pylint: disable=import-outside-toplevel
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.features)), exist_ok=True)
    np.savez(FLAGS.features, **feats)
    print(f'wrote {FLAGS.features}: ' + ', '.join(f'{k} {v.shape}' for k, v in feats.items()),
          file=sys.stderr, flush=True)
  if failed:
    print(f'{len(failed)} of {len(paths)} files could not be decoded: '
          + ', '.join(p for p, _ in failed), file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['config', 'checkpoint'])
  app.run(main)
