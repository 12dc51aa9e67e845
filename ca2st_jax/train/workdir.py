"""The workdir's config.json: which run a workdir holds, and whether this config may resume it.

Resuming is refused only for fields that change the learned function: the model architecture
(config.model, less the fields that only change how it is computed) and the data set's identity
(which set and build, hence its classes). Moving the data (data_dir, dataset_dir), worker
counts, batch sizes of evaluation, remat, the attention kernel, the layer loop, logging and
checkpoint cadence may all change.
"""
from __future__ import annotations

import json

import jax
from etils import epath

# config.model fields that change how the model is computed, not what it computes.
MODEL_FIELDS_FREE = ("remat", "attention", "layer_loop")
# config.data fields that name the data set (and so its classes).
DATA_IDENTITY_FIELDS = ("name", "builder_config", "synthetic")


def identity(config_dict: dict) -> dict:
  """The part of a (JSON) config that must match for a workdir to be resumed."""
  model = {k: v for k, v in config_dict.get("model", {}).items() if k not in MODEL_FIELDS_FREE}
  data = {k: v for k, v in config_dict.get("data", {}).items() if k in DATA_IDENTITY_FIELDS}
  if data.get("name") != "synthetic_av":  # its spec names only the synthetic set (and workdirs
    data.pop("synthetic", None)           # written before it was a field of every config lack it)
  return {"model": model, "data": data}


def check_config(config, workdir):
  """Refuses a workdir written by a run of a different model or data set."""
  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    return
  saved = identity(json.loads(path.read_text()))
  current = identity(json.loads(config.to_json_best_effort()))
  diffs = []
  for section in ("model", "data"):
    a, b = saved[section], current[section]
    for key in sorted(set(a) | set(b)):
      if a.get(key) != b.get(key):
        diffs.append(f"config.{section}.{key}: workdir has {a.get(key)!r}, this run {b.get(key)!r}")
  if diffs:
    raise ValueError(
        f"workdir {workdir} holds a run of a different model or data set, so its checkpoints "
        "cannot be resumed or evaluated with this config:\n  " + "\n  ".join(diffs) +
        "\nUse a new --workdir, or the config that wrote it (see its config.json).")


def write_config(config, workdir):
  """Records this run's config (process 0), once its data source has opened."""
  if jax.process_index() != 0:
    return
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
