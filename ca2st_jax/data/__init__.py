"""Data: TFDS builders (builders/), decoding (decode), audio features (audio), frame sampling
(sampling), video transforms (transforms), Grain pipelines (pipeline), synthetic set (synthetic).

Data flows one way: raw files → builders → ArrayRecord → pipeline (decode, sample, augment) →
per-host numpy batches; the train/eval step normalises video on device with
`transforms.normalize_video`.

Nothing is imported here: the model, the train step and the benchmark use `transforms` without
the data stack (Grain, TFDS, PyAV), which a GPU benchmark machine may not have.
"""
