r"""Export a model as a PyTorch state_dict in the reference layout.

  python -m ca2st_jax.tools.export_torch --config=configs/cast_k400.py --output=cast_k400.pth \
      [--workdir=DIR] [--dtype=float32|float16|bfloat16]

With --workdir the weights come from the latest checkpoint in DIR/ckpt; without it the model is
freshly initialised and `config.init` imports are applied (so `--config.init.clip=ViT-B-16.pt
--config.init.videomae=...` exports the reference's starting point). `.pth` (torch.save of a
dict of tensors, loadable with `torch.load(weights_only=True)`) or `.safetensors`, by extension.
The keys and shapes are exactly the reference model's (`tests/fixtures/reference/*.tsv` at base
size); CA²ST's shared B-CA tensors are written under every name. Load the file with
`ca2st_jax.interop.torch_model.build(config.model).load_state_dict(sd, strict=True)`, or
into the authors' code.
"""
from __future__ import annotations

import importlib.util
import os
from collections import OrderedDict

from absl import app
from absl import flags
from ml_collections import config_flags

from ca2st_jax import cli

EXTENSIONS = ('.pth', '.pt', '.bin', '.safetensors')

FLAGS = flags.FLAGS


def define_flags():
  """The command line's flags (defined only when run as a program: ca2st_jax.main imports this
  module for its after-training export and defines `config` itself)."""
  config_flags.DEFINE_config_file('config', None, 'Config file (configs/<name>.py[:variant]).',
                                  lock_config=False)
  flags.DEFINE_string('output', None, 'Output path, .pth or .safetensors.')
  flags.DEFINE_string('workdir', None, 'Training workdir to export the latest checkpoint of.')
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'float16', 'bfloat16'],
                    'Floating dtype of the written tensors.')


TORCH_MISSING = "PyTorch is not installed: pip install torch==2.13.0 && pip install -e '.[torch]'"


def reference_order(model_config) -> list[str]:
  """The reference state_dict's key order (from the PyTorch model built on the meta device)."""
  import torch  # pylint: disable=import-outside-toplevel
  from ca2st_jax.interop import torch_model  # pylint: disable=import-outside-toplevel
  with torch.device('meta'):
    return list(torch_model.build(model_config).state_dict().keys())


def export_arrays(model, model_config) -> 'OrderedDict':
  """{reference name: numpy array} in the reference's order, every name of shared tensors."""
  from ca2st_jax.interop import torch_mapping  # pylint: disable=import-outside-toplevel
  entries = torch_mapping.model_table(model, model_config)
  ref = torch_mapping.to_reference(entries, torch_mapping.model_arrays(model))
  order = reference_order(model_config)
  if set(order) != set(ref):
    raise AssertionError(f'export keys differ from the reference model: missing '
                         f'{sorted(set(order) - set(ref))[:5]}, extra {sorted(set(ref) - set(order))[:5]}')
  return OrderedDict((k, ref[k]) for k in order)


def shared_groups(model, model_config) -> dict[str, list[str]]:
  """{first reference name: [other names]} for parameters exported under several names."""
  from ca2st_jax.interop import torch_mapping  # pylint: disable=import-outside-toplevel
  by_path: dict[str, list[str]] = {}
  for e in torch_mapping.model_table(model, model_config):
    by_path.setdefault(e.jax, []).append(e.ref)
  order = {k: i for i, k in enumerate(reference_order(model_config))}
  out = {}
  for names in by_path.values():
    if len(names) > 1:
      names = sorted(names, key=order.get)
      out[names[0]] = names[1:]
  return out


def model_from_workdir(config, workdir, setup=None):
  """The model at the latest checkpoint of a training workdir (the trainer's own restore)."""
  try:
    from ca2st_jax.train import trainer  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise RuntimeError(f'--workdir needs ca2st_jax.train.trainer: {e}') from e
  return trainer.restore_model(config, workdir, setup=setup)[0]


def fresh_model(config):
  """A freshly initialised model with config.init imports applied."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from ca2st_jax import models  # pylint: disable=import-outside-toplevel
  from ca2st_jax.interop import torch_import  # pylint: disable=import-outside-toplevel
  seed = int(config.get('seed', 0) or 0)
  model = models.build(config.model, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
  loaded = torch_import.apply_init(model, config)
  for field, path in loaded.items():
    print(f'imported config.init.{field} = {path}', flush=True)
  return model


def export(config, output, workdir=None, dtype='float32', setup=None) -> OrderedDict:
  """Writes the export and returns the arrays written (float32, before the dtype cast).
  `setup`: an already built trainer Setup for `config` (saves rebuilding it)."""
  from ca2st_jax.interop import torch_io  # pylint: disable=import-outside-toplevel
  parent = os.path.dirname(os.path.abspath(output))
  os.makedirs(parent, exist_ok=True)   # before the (slow) restore, so a bad path fails first
  model = model_from_workdir(config, workdir, setup) if workdir else fresh_model(config)
  arrays = export_arrays(model, config.model)
  torch_io.write_tensors(output, arrays, dtype=dtype, shared=shared_groups(model, config.model))
  if workdir:
    write_labels_beside(output, workdir)
  return arrays


def write_labels_beside(output, workdir):
  """Copies the workdir's class names next to the export (`model.pth` -> `model.labels.json`),
  where `ca2st_jax.predict` finds them; a workdir without them (a run before they were recorded,
  an in-memory source) gets none."""
  from ca2st_jax.checkpoints import labels  # pylint: disable=import-outside-toplevel
  found = labels.find(workdir)
  if found:
    print(f'wrote {labels.write(labels.beside(output), labels.read(found))}', flush=True)


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]} (flags are --name=value)')
  output = FLAGS.output
  if not output.endswith(EXTENSIONS):
    cli.fail(f'--output={output}: the name must end in {" / ".join(EXTENSIONS)}')
  if importlib.util.find_spec('torch') is None:
    cli.fail(f'export_torch needs the reference model: {TORCH_MISSING}')
  if FLAGS.workdir and not os.path.isdir(os.path.join(FLAGS.workdir, 'ckpt')):
    cli.fail(f'--workdir={FLAGS.workdir}: no checkpoints there (no ckpt/ directory); give the '
             '--workdir of a training run')
  cli.quiet_library_logs()  # Orbax logs every restore step at INFO
  cli.use_cpu_unless_set()
  from ca2st_jax.interop.torch_io import CheckpointError  # pylint: disable=import-outside-toplevel
  try:
    arrays = export(FLAGS.config, output, FLAGS.workdir, FLAGS.dtype)
  except (CheckpointError, OSError, ValueError, NotImplementedError) as e:
    cli.fail(str(e), code=1)
  n = sum(a.size for a in arrays.values())
  print(f'wrote {output}: {len(arrays)} tensors, {n:,} values (shared names counted each '
        f'time), dtype {FLAGS.dtype}; size {os.path.getsize(output) / 2**20:.1f} MiB', flush=True)


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['config', 'output'])
  app.run(main, flags_parser=cli.parse_flags)
