"""Kinetics-Sounds: the Kinetics-400 classes with a characteristic sound (manual download).

The class list is the 32 Kinetics-400 classes of Arandjelović & Zisserman's Kinetics-Sounds
("Look, Listen and Learn", 2017; 34 names there, of which these 32 exist verbatim in K400),
the version most audio-visual papers report on. Indices follow this (alphabetical) list.
To use another list put `kinetics_sounds_classes.txt` (one K400 class per line) in manual_dir.
Raw layout: exactly the Kinetics-400 one (see kinetics400.py).
"""

from __future__ import annotations

from ca2st_jax.data.builders import kinetics400

KINETICS_SOUNDS_CLASSES = (
    'blowing nose', 'blowing out candles', 'bowling', 'chopping wood', 'dribbling basketball',
    'laughing', 'mowing lawn', 'playing accordion', 'playing bagpipes', 'playing bass guitar',
    'playing clarinet', 'playing drums', 'playing guitar', 'playing harmonica',
    'playing keyboard', 'playing organ', 'playing piano', 'playing saxophone',
    'playing trombone', 'playing trumpet', 'playing violin', 'playing xylophone',
    'ripping paper', 'shoveling snow', 'shuffling cards', 'singing', 'stomping grapes',
    'tap dancing', 'tapping guitar', 'tapping pen', 'tickling', 'typing')


class KineticsSounds(kinetics400.Kinetics400):
  """Kinetics-Sounds (32 classes) from the Kinetics-400 download."""
  name = 'kinetics_sounds'
  DESCRIPTION = 'Kinetics-Sounds: 32 Kinetics-400 classes with distinctive sounds.'
  CLASS_FILTER = KINETICS_SOUNDS_CLASSES

  def _classes(self, manual_dir):
    custom = sorted(manual_dir.rglob('kinetics_sounds_classes.txt'))
    if custom:
      self.CLASS_FILTER = tuple(l.strip() for l in open(custom[0]) if l.strip())
    return super()._classes(manual_dir)
