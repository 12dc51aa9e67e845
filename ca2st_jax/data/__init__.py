"""Data: TFDS builders (builders/), decoding (decode), audio features (audio), frame sampling
(sampling), video transforms (transforms), Grain pipelines (pipeline), synthetic set (synthetic).

Data flows one way: raw files → builders → ArrayRecord → pipeline (decode, sample, augment) →
per-host numpy batches; the train/eval step normalises video on device with `normalize_video`.
"""

from ca2st_jax.data.pipeline import ClipOptions, Source, make_source
from ca2st_jax.data.transforms import normalize_video
