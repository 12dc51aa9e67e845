"""Test setup: 8 simulated CPU devices and exact fp32 matmuls, fixed before JAX starts; shared
fixtures."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


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
