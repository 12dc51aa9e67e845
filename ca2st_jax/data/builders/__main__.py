"""python -m ca2st_jax.data.builders NAME --manual_dir=RAW --data_dir=OUT [--config=default]
[--short_side=256 --fps=0 --audio_rate=16000 --num_workers=0]: builds ArrayRecord files."""

import argparse
import dataclasses
import logging

from ca2st_jax.data import builders


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument('name', choices=sorted(builders.BUILDERS))
  p.add_argument('--manual_dir', required=True)
  p.add_argument('--data_dir', required=True)
  p.add_argument('--config', default=None, help='builder config name (e.g. split2 for UCF-101)')
  for f in dataclasses.fields(builders.VideoBuilderConfig):
    if f.name in ('short_side', 'fps', 'jpeg_quality', 'audio_rate', 'num_workers', 'fold'):
      p.add_argument(f'--{f.name}', type=type(f.default), default=None)
  args = p.parse_args()
  logging.basicConfig(level=logging.INFO)
  cls = builders.BUILDERS[args.name]
  cfg = cls.BUILDER_CONFIGS[0]
  if args.config:
    cfg = next(c for c in cls.BUILDER_CONFIGS if c.name == args.config)
  overrides = {k: v for k, v in vars(args).items()
               if v is not None and k in {f.name for f in dataclasses.fields(cfg)} and k != 'name'}
  storage = {k: v for k, v in sorted(overrides.items()) if k != 'num_workers'}
  name = cfg.name + ''.join(f'_{k}{v}' for k, v in storage.items())  # distinct dir per storage
  if overrides:
    cfg = dataclasses.replace(cfg, name=name, **overrides)
  b = builders.build(cls, args.manual_dir, args.data_dir, cfg)
  print(b.data_dir)
  print({'num_skipped': dict(b.info.metadata.get('num_skipped', {})),
         'splits': {k: v.num_examples for k, v in b.info.splits.items()}})


if __name__ == '__main__':
  main()
