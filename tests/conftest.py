"""Test setup: 8 simulated CPU devices, one compilation cache and exact fp32 matmuls, fixed before
JAX starts; shared fixtures."""
import os

from tests_helpers import HOST_DEVICES, ROOT  # no JAX import: the settings below come first

# The suite's programs are tiny and compiled once each: most of their time is XLA's CPU compile,
# and LLVM's optimisation level 1 compiles them ~8 % faster than the default 3, with the same
# numbers where the suite checks them bit for bit (test_export_unchanged's hashes of initialised
# weights; level 0 changes them).
os.environ["XLA_FLAGS"] = " ".join((os.environ.get("XLA_FLAGS", ""), HOST_DEVICES,
                                    "--xla_backend_optimization_level=1")).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One XLA compilation cache for every process of a test run (both xdist workers and the CLIs and
# launches that tests start), kept under .pytest_cache for the next run: each process would
# otherwise compile the same small programs (initialisers, tiny train steps) again. It has no size
# limit: with one, JAX reads the whole cache directory under a file lock at every write (~0.2 ms per
# entry, and a run writes ~1,000). Without the lock, two processes that compile the same program
# write the same bytes, and a read of a half-written entry is a warning and a recompile.
for _name, _value in (
    ("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".pytest_cache" / "xla")),
    ("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")):
  os.environ.setdefault(_name, _value)

import runpy  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402
from absl import app  # noqa: E402,F401  (its flags, before run_cli copies the registry)
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

# The suite ends when its slower xdist worker does: the longest modules start first, the many short
# tests fill in behind them.
LONGEST_FIRST = ("test_multiprocess.py", "test_gcs.py", "test_train_configs.py", "test_predict.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def abstract_model():
  """abstract_model(cfg): models.build's model of config.model `cfg` as shapes only
  (nnx.eval_shape), traced once per distinct config in the session: the base-size key-list and
  count tests of several files read the same seven models. Read it, don't change it.

  nnx.eval_shape of a base-size model spends ~20 s building error messages that are never shown
  (flax probes `tracer.sharding`, whose AttributeError text walks the whole trace each time).
  Silencing that text while tracing makes it ~2 s; shapes are unaffected. JAX has no switch for
  it, so the tracer's private `_origin_msg` is replaced."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from jax.interpreters import partial_eval  # pylint: disable=import-outside-toplevel
  from ca2st_jax import models  # pylint: disable=import-outside-toplevel
  traced = {}

  def get(cfg):
    key = cfg.to_json_best_effort(sort_keys=True)
    if key not in traced:
      with pytest.MonkeyPatch.context() as patch:
        patch.setattr(partial_eval.DynamicJaxprTracer, "_origin_msg", lambda self: "")
        traced[key] = nnx.eval_shape(lambda: models.build(cfg, rngs=nnx.Rngs(params=0, dropout=1)))
    return traced[key]

  return get


def _flag_state():
  """A copy of absl's flag registry deep enough to put back (its dicts and their lists)."""
  return {k: ({kk: list(vv) if isinstance(vv, list) else vv for kk, vv in v.items()}
              if isinstance(v, dict) else v) for k, v in vars(flags.FLAGS).items()}


@pytest.fixture
def run_cli(monkeypatch, capsys):
  """run(module, *args) -> (exit code, stdout, stderr) of `python -m module args` in this process.
  The flags other modules defined here are set aside for the run and put back after it."""
  saved, verbosity = _flag_state(), logging.get_verbosity()
  for name in ('JAX_PLATFORMS', 'TPU_SKIP_MDS_QUERY', 'ALLOW_MULTIPLE_LIBTPU_LOAD'):
    monkeypatch.setenv(name, os.environ.get(name, 'cpu' if name == 'JAX_PLATFORMS' else '1'))
  monkeypatch.chdir(ROOT)

  def run(module, *args):
    for name in list(flags.FLAGS):
      if not flags.FLAGS.find_module_defining_flag(name, 'absl').startswith('absl'):
        delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()
    monkeypatch.setattr(sys, 'argv', [module, *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
      runpy.run_module(module, run_name='__main__', alter_sys=True)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err

  yield run
  vars(flags.FLAGS).clear()
  vars(flags.FLAGS).update(saved)
  logging.set_verbosity(verbosity)
