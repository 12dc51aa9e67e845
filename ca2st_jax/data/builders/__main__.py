"""python -m ca2st_jax.data.builders NAME --manual_dir=RAW --data_dir=OUT [--config=default]
[--short_side=256 --fps=0 --jpeg_quality=90 --audio_rate=16000] [--num_workers=N]: builds
ArrayRecord files (storage options other than the config's give a config of their own name)."""

import argparse
import dataclasses
import logging
import os
import sys

from ca2st_jax.data import builders

STORAGE_OPTIONS = ('short_side', 'fps', 'jpeg_quality', 'audio_rate', 'fold')


def fail(message: str, code: int = 1):
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(code)


class ArgumentParser(argparse.ArgumentParser):

  def error(self, message):
    fail(f'{message} (see --help)', code=2)  # one line instead of the usage block


def main(argv=None):
  p = ArgumentParser(description=__doc__)
  p.add_argument('name', choices=sorted(builders.BUILDERS))
  p.add_argument('--manual_dir', required=True)
  p.add_argument('--data_dir', required=True)
  p.add_argument('--config', default=None, help='builder config name (e.g. split2 for UCF-101)')
  p.add_argument('--num_workers', type=int, default=None,
                 help='decoding processes (default: one per core; 1: in this process)')
  for f in dataclasses.fields(builders.VideoBuilderConfig):
    if f.name in STORAGE_OPTIONS:
      p.add_argument(f'--{f.name}', type=type(f.default), default=None)
  args = p.parse_args(argv)
  if not os.path.isdir(args.manual_dir) or not os.listdir(args.manual_dir):
    fail(f'--manual_dir={args.manual_dir}: no such directory, or it is empty (put the '
         f'{args.name} files there as downloaded)', code=2)
  # This package's progress lines (examples per split, skipped files); TFDS's INFO lines left out.
  logging.basicConfig(level=logging.WARNING, format='%(message)s')
  logging.getLogger('ca2st_jax').setLevel(logging.INFO)
  cls = builders.BUILDERS[args.name]
  configs = {c.name: c for c in cls.BUILDER_CONFIGS}
  cfg = cls.BUILDER_CONFIGS[0]
  if args.config:
    if args.config not in configs:
      p.error(f'unknown --config={args.config} for {args.name}; valid: {", ".join(configs)}')
    cfg = configs[args.config]
  storage = {k: getattr(args, k) for k in STORAGE_OPTIONS if getattr(args, k) is not None}
  if storage:
    name = cfg.name + ''.join(f'_{k}{v}' for k, v in sorted(storage.items()))
    cfg = dataclasses.replace(cfg, name=name, **storage)  # distinct directory per storage
  try:
    b = builders.build(cls, args.manual_dir, args.data_dir, cfg, num_workers=args.num_workers)
  except (FileNotFoundError, ValueError, RuntimeError) as e:  # missing or unusable annotations
    fail(f'{args.name}: {e}')
  print(b.data_dir)
  print({'num_skipped': dict(b.info.metadata.get('num_skipped', {})),
         'bad_rows': len(b.info.metadata.get('bad_rows', [])),
         'splits': {k: v.num_examples for k, v in b.info.splits.items()}})


if __name__ == '__main__':
  main()
