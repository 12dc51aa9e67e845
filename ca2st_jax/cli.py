"""What the command lines check before they import JAX or build a model: the --config file, the
flags and the data, each mistake reported as one line on stderr that names it and its fix."""
from __future__ import annotations

import difflib
import glob
import importlib.util
import os
import sys

from absl import flags
from absl import logging


def fail(message: str, code: int = 2):
  """Exits with `error: message` on stderr (code 2: a usage mistake, 1: a failed run)."""
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(code)


def flag_value(argv, name: str) -> str | None:
  """The value given to --name in argv (`--name=V` or `--name V`), else None."""
  for i, arg in enumerate(argv):
    if arg.startswith(f'--{name}='):
      return arg.split('=', 1)[1]
    if arg == f'--{name}' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def check_config_file(argv, name: str = 'config'):
  """ml_collections only reports a missing config file when the config is first read, as a
  traceback: checked here first."""
  value = flag_value(argv, name)
  if value is None:
    return
  path = value.split(':', 1)[0]
  if not os.path.isfile(path):
    fail(f'--{name}={value}: no such file {path!r} (the configs are in configs/, e.g. '
         f'--{name}=configs/demo.py)')


def check_file(flag: str, path: str, hint: str = ''):
  """Exits when the file given to --flag does not exist."""
  if not os.path.isfile(path):
    fail(f'--{flag}={path}: no such file' + (f' ({hint})' if hint else ''))


def parse_flags(argv):
  """absl's flag parsing (app.run's `flags_parser`) with every mistake as one line: a missing
  config file, an unknown flag, a bad value, a --config.x override that names no field."""
  check_config_file(argv)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(one_line(e))
  except (AttributeError, KeyError):  # ml_collections: an override that names no field
    # Raised while the config flag is parsed, before its value is set: the file is read again.
    config = load_config_file(flag_value(argv, 'config'))
    for arg in argv[1:]:
      if arg.startswith('--config.'):
        path = arg[2:].split('=', 1)[0]
        message = missing_field(config, path.split('.')[1:])
        if message:
          fail(f'--{path}: {message}')
    raise


def load_config_file(value: str):
  """get_config() of --config=PATH[:ARG], as ml_collections' config flag calls it."""
  path, _, arg = value.partition(':')
  spec = importlib.util.spec_from_file_location('config_file', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*([arg] if arg else []))


def one_line(error: BaseException) -> str:
  """absl's message; when the flag's parser failed in several lines (a config file's
  get_config raising), its first line and the error it started from."""
  lines = str(error).splitlines()
  if len(lines) <= 1:
    return str(error)
  root = error
  while root.__cause__ or root.__context__:
    root = root.__cause__ or root.__context__
  return f'{lines[0]} {type(root).__name__}: {root}'


def missing_field(config, keys) -> str | None:
  """Why the field `keys` (['train', 'batch_size']) is not in `config`, or None when it is."""
  node = config
  for key in keys:
    if not hasattr(node, 'keys') or key not in node:
      names = list(node.keys()) if hasattr(node, 'keys') else []
      close = difflib.get_close_matches(key, names, n=1)
      hint = f'did you mean {close[0]!r}?' if close else 'see the config file for its fields'
      return f'the config has no field {key!r} ({hint})'
    node = node[key]
  return None


def quiet_library_logs():
  """absl logging at WARNING unless --verbosity is given: Orbax, Grain and JAX log INFO lines
  (checkpoint steps, backend probes) that would bury the tool's own output."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)


def _set_platforms(platforms: str):
  os.environ['JAX_PLATFORMS'] = platforms
  if 'jax' in sys.modules:  # imported already: its config read the variable at import
    sys.modules['jax'].config.update('jax_platforms', platforms)


def use_cpu_unless_set():
  """For tools that only trace or convert a model (summary, export_torch): no accelerator is
  needed, and JAX need not probe the installed plugins."""
  if 'JAX_PLATFORMS' not in os.environ:
    _set_platforms('cpu')


def _has_tpu() -> bool:
  """A TPU chip on this host's PCI bus (Google's vendor id, where JAX itself looks)."""
  for vendor in glob.glob('/sys/bus/pci/devices/*/vendor'):
    try:
      with open(vendor) as f:
        if f.read().strip() == '0x1ae0':
          return True
    except OSError:
      continue
  return False


def skip_absent_tpu():
  """Without JAX_PLATFORMS, JAX starts every installed plugin: the [aot] extra's libtpu on a
  machine without a TPU prints a screen of TPU warnings first. There, use the GPU (when an NVIDIA
  device and JAX's CUDA plugin are both present) or the CPU."""
  if 'JAX_PLATFORMS' in os.environ or importlib.util.find_spec('libtpu') is None or _has_tpu():
    return
  cuda_plugin = any(importlib.util.find_spec(f'jax_cuda{v}_plugin') for v in (12, 13))
  _set_platforms('cuda,cpu' if cuda_plugin and os.path.exists('/dev/nvidiactl') else 'cpu')


def check_data(config):
  """A prepared data set where config.data points (the synthetic set is built on first use);
  remote (gs://...) locations are left to the pipeline."""
  d = config.data
  if d.dataset_dir:
    if '://' not in d.dataset_dir and not os.path.isfile(
        os.path.join(d.dataset_dir, 'dataset_info.json')):
      fail(f'config.data.dataset_dir={d.dataset_dir}: no prepared data set there (no '
           'dataset_info.json); give the directory the builder wrote (python -m '
           'ca2st_jax.data.builders NAME --manual_dir=RAW --data_dir=OUT prints it)')
    return
  if d.name == 'synthetic_av':
    return
  data_dir = d.data_dir or os.environ.get('TFDS_DATA_DIR',
                                          os.path.expanduser('~/tensorflow_datasets'))
  where = os.path.join(data_dir, d.name, *([d.builder_config] if d.builder_config else []))
  if '://' not in data_dir and not glob.glob(os.path.join(where, '**', 'dataset_info.json'),
                                             recursive=True):
    fail(f'config.data.name={d.name!r}: not prepared under {data_dir} (no dataset_info.json '
         f'under {where}); build it with python -m ca2st_jax.data.builders {d.name} '
         f'--manual_dir=RAW --data_dir={data_dir}, or set --config.data.dataset_dir=DIR')


def use_compilation_cache(workdir):
  """XLA's compiled steps kept under workdir/compilation_cache, unless a cache is already set
  (JAX_COMPILATION_CACHE_DIR, config.jax_config): a resumed run (after a preemption, for an
  evaluation) reads them back instead of compiling again, minutes for the unrolled layers on a
  TPU."""
  import jax  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "compilation_cache"))
