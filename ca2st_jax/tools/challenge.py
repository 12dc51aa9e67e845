r"""The submission file of a challenge server, from the per-video predictions of an eval.

  python -m ca2st_jax.main --config=configs/ca2st_ek100.py --workdir=DIR --mode=eval \
      --config.data.eval_split=test
  python -m ca2st_jax.tools.challenge --workdir=DIR --split=test --format=ek100_action \
      --sls_pt=2 --sls_tl=3 --sls_td=3 --output=submission.zip

It reads DIR/predictions_<split>_<step>.npz (the newest step unless --step; see
ca2st_jax/train/evaluate.py) and writes the JSON each server takes, as a zip holding `test.json`
(what the official scripts upload) when --output ends in .zip, else the plain JSON.

  ek100_action  EPIC-KITCHENS-100 action recognition (github.com/epic-kitchens/C1-Action-Recognition,
                create_submission.py and utils/challenge.py):
                {"version": "0.2", "challenge": "action_recognition", "sls_pt": .., "sls_tl": ..,
                 "sls_td": .., "results": {narration_id: {"verb": {"0": score, ... "96": score},
                                                          "noun": {"0": score, ... "299": score}}}}
  epic_sounds   EPIC-SOUNDS audio-based interaction recognition
                (github.com/epic-kitchens/C9-epic-sounds, the same two files):
                {"version": "0.1", "challenge": "audio_based_interaction_recognition", "sls_pt": ..,
                 "sls_tl": .., "sls_td": .., "t_mod": .., "results": {annotation_id:
                 {"interaction": {"0": score, ... "43": score}}}}

The scores are the view-averaged softmax probabilities. The supervision levels (SLS,
github.com/epic-kitchens/sls, 0-5 each) and EPIC-SOUNDS' training modality (t_mod: 0 audio,
1 video, 2 audio-visual) describe how the model was trained; the servers rank entries with them,
so they are asked for, not guessed.
"""
from __future__ import annotations

import io
import json
import re
import sys
import zipfile

from absl import app
from absl import flags
from etils import epath

from ca2st_jax.train import evaluate as evaluate_lib

# format -> (version, challenge, {result key: (npz array, class count)}, whether t_mod is a field)
FORMATS = {
    "ek100_action": ("0.2", "action_recognition",
                     {"verb": ("prob_verb", 97), "noun": ("prob_noun", 300)}, False),
    "epic_sounds": ("0.1", "audio_based_interaction_recognition",
                    {"interaction": ("prob_label", 44)}, True),
}
SLS_LEVELS = range(6)


def newest_predictions(workdir, split: str) -> epath.Path:
  """The predictions_<split>_<step>.npz of the highest step in `workdir`."""
  pattern = re.compile(rf"predictions_{re.escape(split)}_(\d+)\.npz$")
  found = [(int(m.group(1)), p) for p in epath.Path(workdir).glob(f"predictions_{split}_*.npz")
           if (m := pattern.match(p.name))]
  if not found:
    raise FileNotFoundError(
        f"no predictions_{split}_<step>.npz in {workdir}: run `python -m ca2st_jax.main "
        f"--mode=eval --workdir={workdir} --config.data.eval_split={split}` first")
  return max(found)[1]


def submission(arrays: dict, fmt: str, *, sls_pt: int, sls_tl: int, sls_td: int,
               t_mod: int | None = None) -> dict:
  """The challenge's JSON object from the arrays of a predictions .npz."""
  if fmt not in FORMATS:
    raise ValueError(f"--format={fmt!r}: expected one of {sorted(FORMATS)}")
  version, challenge, heads, with_t_mod = FORMATS[fmt]
  for name, value in (("sls_pt", sls_pt), ("sls_tl", sls_tl), ("sls_td", sls_td)):
    if value not in SLS_LEVELS:
      raise ValueError(f"--{name}={value}: expected a supervision level 0-5 "
                       "(github.com/epic-kitchens/sls)")
  ids = [str(i) for i in arrays["id"]]
  if len(set(ids)) != len(ids):
    raise ValueError("the predictions repeat example ids: the eval split has duplicate ids")
  scores = {}
  for key, (array, classes) in heads.items():
    if array not in arrays:
      raise ValueError(f"--format={fmt} needs {array} in the predictions, which have "
                       f"{sorted(k for k in arrays if k.startswith('prob_'))}: use the format "
                       "of the model's data set")
    if arrays[array].shape != (len(ids), classes):
      raise ValueError(f"--format={fmt}: {array} has shape {arrays[array].shape}, the server "
                       f"takes ({len(ids)}, {classes}) ({classes} classes)")
    scores[key] = arrays[array]
  out = {"version": version, "challenge": challenge,
         "sls_pt": int(sls_pt), "sls_tl": int(sls_tl), "sls_td": int(sls_td)}
  if with_t_mod:
    if t_mod not in (0, 1, 2):
      raise ValueError(f"--t_mod={t_mod}: --format={fmt} needs the training modality "
                       "(0 audio, 1 video, 2 audio-visual)")
    out["t_mod"] = int(t_mod)
  out["results"] = {
      vid: {key: {str(c): float(s) for c, s in enumerate(values[row])}
            for key, values in scores.items()}
      for row, vid in enumerate(ids)}
  return out


def write(obj: dict, output) -> str:
  """`output`: a .zip holding test.json (as the official scripts write it), else plain JSON."""
  output = epath.Path(output)
  text = json.dumps(obj)
  if output.suffix == ".zip":
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
      z.writestr("test.json", text)
    output.write_bytes(buf.getvalue())
  else:
    output.write_text(text)
  return str(output)


def read(path) -> dict:
  """A submission written by `write` (zip or JSON)."""
  path = epath.Path(path)
  if path.suffix == ".zip":
    with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as z:
      return json.loads(z.read("test.json"))
  return json.loads(path.read_text())


_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir holding predictions_<split>_<step>.npz.")
_SPLIT = flags.DEFINE_string("split", "test", "The evaluated split.")
_STEP = flags.DEFINE_integer("step", None, "The eval's step (default: the newest).")
_FORMAT = flags.DEFINE_enum("format", None, sorted(FORMATS), "The challenge server's format.")
_OUTPUT = flags.DEFINE_string("output", None, "Submission file: .zip (test.json inside) or .json.")
_SLS_PT = flags.DEFINE_integer("sls_pt", None, "Supervision level of pre-training (0-5).")
_SLS_TL = flags.DEFINE_integer("sls_tl", None, "Supervision level of training labels (0-5).")
_SLS_TD = flags.DEFINE_integer("sls_td", None, "Supervision level of training data (0-5).")
_T_MOD = flags.DEFINE_integer("t_mod", None, "EPIC-SOUNDS: training modality (0 audio, 1 video, "
                              "2 audio-visual).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    path = (evaluate_lib.predictions_path(_WORKDIR.value, _SPLIT.value, _STEP.value, ".npz")
            if _STEP.value is not None else newest_predictions(_WORKDIR.value, _SPLIT.value))
    if not path.exists():
      raise FileNotFoundError(f"{path} does not exist")
    arrays = evaluate_lib.read_predictions(path)
    obj = submission(arrays, _FORMAT.value, sls_pt=_SLS_PT.value, sls_tl=_SLS_TL.value,
                     sls_td=_SLS_TD.value, t_mod=_T_MOD.value)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  out = write(obj, _OUTPUT.value)
  print(f"{_FORMAT.value} submission of {len(obj['results'])} segments from {path}: {out}",
        flush=True)


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "format", "output", "sls_pt", "sls_tl", "sls_td"])
  app.run(main)
