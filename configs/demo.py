r"""Demo: a tiny CA²ST learns the synthetic audio-visual set, on CPU, in a few minutes. No downloads.

  python -m ca2st_jax.main --config=configs/demo.py --workdir=/tmp/ca2st_demo

It writes the synthetic clips (real .mp4 files with audio; 8 classes = shape x motion direction x
tone, so appearance, motion and sound are all needed) and their TFDS ArrayRecord build once under
$TFDS_DATA_DIR/synthetic_av (default ~/tensorflow_datasets; about 65 MB), printing where; trains the
same CA²ST code as the paper configs at toy size through the real Grain pipeline, evaluates (2
clips per video, multi-view softmax averaging), and leaves in the workdir:
  metrics.jsonl   a JSON line per train log or eval, e.g. {"step": 500, "split": "val", "top1": 1.0}
  report.png      training loss curve, val top-1 curve and the final confusion matrix
  model_torch.pt  the trained model as a PyTorch state_dict in the reference layout (if torch is
                  installed)
  ckpt/, best/, tb/  Orbax checkpoints and TensorBoard events.
  labels.json     the class names (model_torch.labels.json beside the export)
and ends by printing a ready `python -m ca2st_jax.predict` command on one of its test clips.
Re-evaluate the finished run:  ... --mode=eval

Sized so that the result does not sit on an edge: each factor is plain to see (a square or a ring,
not a disc that differs from a square only in its corners; a step of about a sixth of the frame
between frames over a still background; a 300 or 1200 Hz tone), the clips are stored at the
model's input size (8 frames of 32x32, 1 s: one JPEG decode per frame and no resize), training
takes the whole frame (no random crop; no flip, which would swap the direction classes), and two
Grain workers keep the input ahead of the train step on 2 cores.

There are no pretrained experts offline, so the demo trains every parameter (train.trainable='all');
with the paper's frozen set (trainable='reference') random frozen experts leave the adapters stuck
on the audio factor for the first ~2000 steps.
"""
import ml_collections

from ca2st_jax import config_lib


def get_config(arg=None):
  del arg
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = config_lib.tiny(config_lib.model_config(
      'ca2st', num_classes=8, drop_path=0.0, audio_exchange_start=0))
  # 32x32 frames in 8x8 patches (a 4x4 grid per frame); adapters and B-CA as wide as the experts.
  config.model.update(image_size=32, patch_size=8, adapter_dim=32, bottleneck_dim=32,
                      spectrogram_length=64, num_mel_bins=32)

  config.data = config_lib.data_config(
      name='synthetic_av', data_dir='',  # '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
      synthetic=dict(num_train=1024, num_test=64, num_frames=8, size=32, fps=8),
      train_split='train', eval_split='test',
      eval_batch_size=32, num_workers=2, seed=0,
      sampling='dense', frame_stride=1, crop_scale=(1.0, 1.0), flip=False, randaugment='',
      test_num_clips=2, test_num_crops=1,
      audio=True, audio_sample_rate=16000, spec_augment=False)

  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  config.train = ml_collections.ConfigDict(dict(
      batch_size=16, total_steps=1500, warmup_steps=50, accum_steps=1, trainable='all',
      mixup_alpha=0.8, mixup_prob=0.0, mixup_audio=False, label_smoothing=0.1,
      log_every=100, eval_every=500, ckpt_every=1500,
  ))
  config.optim = ml_collections.ConfigDict(dict(
      lr=2e-3, min_lr=1e-5, warmup_lr=0.0, scale_lr_by_batch=False,
      weight_decay=0.05, layer_decay=1.0, clip_grad_norm=1.0, betas=(0.9, 0.999), eps=1e-8,
  ))
  config.eval = ml_collections.ConfigDict(dict(best_metric='top1', with_map=False,
                                               write_predictions=False))
  config.ckpt = ml_collections.ConfigDict(dict(keep=2, save_frozen=True))
  config.post = ml_collections.ConfigDict(dict(report=True, export_torch=True, predict_command=True))
  return config
