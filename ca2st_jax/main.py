r"""Train and/or evaluate a model from a config file.

  python -m ca2st_jax.main --config=configs/demo.py --workdir=/tmp/ca2st_demo
  python -m ca2st_jax.main --config=configs/cava_vggsound.py --workdir=DIR \
      [--mode=train|eval|train_and_eval] [--config.train.batch_size=64 ...]

The run resumes from the latest checkpoint in --workdir, else from `config.init` imports, else from
scratch. --mode=eval evaluates the workdir's latest checkpoint. With no --workdir, configs/demo.py
style runs go to /tmp/ca2st_jax/<config name>.
"""
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ca2st_jax import cli

config_flags.DEFINE_config_file("config", None, "Config file (configs/<name>.py[:variant]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and TensorBoard.")
flags.DEFINE_enum("mode", "train_and_eval", ["train", "eval", "train_and_eval"], "What to run.")


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]} (flags are --name=value)")
  config = flags.FLAGS.config
  cli.quiet_library_logs()  # Orbax/Grain INFO lines drown the progress lines
  cli.skip_absent_tpu()
  cli.check_data(config)
  workdir = flags.FLAGS.workdir
  if not workdir:
    name = os.path.splitext(os.path.basename(flags.FLAGS["config"].config_filename))[0]
    workdir = os.path.join("/tmp/ca2st_jax", name)
    logging.info("no --workdir given: using %s", workdir)
  # Imported late so --help and flag errors do not pay for JAX start-up.
  from ca2st_jax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  mesh_lib.maybe_initialize_distributed()
  import jax  # pylint: disable=g-import-not-at-top
  for name, value in (config.get("jax_config", None) or {}).items():
    jax.config.update(name, value)
  cli.use_compilation_cache(workdir)
  from ca2st_jax.checkpoints import orbax as orbax_ckpt  # pylint: disable=g-import-not-at-top
  from ca2st_jax.train import trainer  # pylint: disable=g-import-not-at-top
  print(f"ca2st_jax: mode={flags.FLAGS.mode} workdir={workdir} devices={jax.device_count()} "
        f"({jax.devices()[0].platform})", flush=True)
  try:
    result = trainer.train_and_evaluate(config, workdir, flags.FLAGS.mode)
  except (ValueError, FileNotFoundError, trainer.NonFiniteLossError,
          orbax_ckpt.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  if result.get("preempted"):
    return
  post = config.get("post", None)
  if post and flags.FLAGS.mode != "eval" and jax.process_index() == 0:
    from ca2st_jax import report  # pylint: disable=g-import-not-at-top
    config_args = [a for a in sys.argv[1:] if a.startswith("--config")]
    report.run_post(config, workdir, config_args)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=cli.parse_flags)
