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


@pytest.fixture
def fast_abstract_tracing(monkeypatch):
  """nnx.eval_shape of a base-size model spends ~20 s building error messages that are never
  shown (flax probes `tracer.sharding`, whose AttributeError text walks the whole trace each
  time). Silencing that message text makes it ~2 s; shapes are unaffected."""
  from jax._src.interpreters import partial_eval  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(partial_eval.DynamicJaxprTracer, '_origin_msg', lambda self: '')
