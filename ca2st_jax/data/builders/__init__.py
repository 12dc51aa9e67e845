"""TFDS builders (manual download, ArrayRecord) for the papers' benchmarks.

Build one with `python -m ca2st_jax.data.builders NAME --manual_dir=RAW --data_dir=OUT`
(no TensorFlow needed) or, with TensorFlow (and TFDS 4.9.10's apache-beam, mlcroissant) installed,
`CA2ST_BUILD_WORKERS=N tfds build ca2st_jax/data/builders/NAME.py --manual_dir=RAW` (ArrayRecord is
the builders' default file format).
"""

from ca2st_jax.data.builders.activitynet import Activitynet
from ca2st_jax.data.builders.base import VideoBuilderConfig, build
from ca2st_jax.data.builders.ek100 import Ek100
from ca2st_jax.data.builders.epic_sounds import EpicSounds
from ca2st_jax.data.builders.kinetics400 import Kinetics400
from ca2st_jax.data.builders.kinetics_sounds import KineticsSounds
from ca2st_jax.data.builders.ssv2 import Ssv2
from ca2st_jax.data.builders.ucf101 import Ucf101Av
from ca2st_jax.data.builders.vggsound import Vggsound

BUILDERS = {b.name: b for b in (Kinetics400, Ssv2, Ek100, EpicSounds, Vggsound, KineticsSounds,
                                Ucf101Av, Activitynet)}
