"""Audio features: the numpy Kaldi fbank against kaldi-native-fbank, crop/pad/times, SpecAugment."""
import numpy as np
import pytest

from ca2st_jax.data import audio, decode

knf = pytest.importorskip('kaldi_native_fbank')


def _knf_fbank(wave, rate, bins):
  opts = knf.FbankOptions()
  opts.frame_opts.dither = 0.0
  opts.frame_opts.samp_freq = rate
  opts.frame_opts.window_type = 'hanning'
  opts.mel_opts.num_bins = bins
  opts.use_energy = False
  opts.htk_compat = True
  fb = knf.OnlineFbank(opts)
  fb.accept_waveform(rate, wave.astype(np.float32).tolist())
  fb.input_finished()
  return np.stack([fb.get_frame(i) for i in range(fb.num_frames_ready)])


@pytest.fixture(scope='module')
def real_waves(tmp_path_factory):
  """Waveforms that went through a real codec: chirp + tones + noise, AAC in mp4, decoded."""
  d = tmp_path_factory.mktemp('aud')
  rng = np.random.default_rng(0)
  out = {}
  for rate in (16000, 22050, 24000, 44100, 48000):
    t = np.arange(int(rate * 1.5)) / rate
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * (200 + 1500 * t) * t)
            + 0.05 * rng.standard_normal(t.size))
    path = d / f'a{rate}.mp4'
    decode.write_video(path, np.zeros((4, 16, 16, 3), np.uint8), 4, wave, rate)
    pcm, got_rate = decode.read_audio(path, rate=0)
    assert got_rate == rate and pcm.size > rate
    # The codec low-passes the top bands to ~1e-6 energy, where kaldi-native-fbank's float32
    # arithmetic alone differs by ~1e-3 in log; a faint broadband floor keeps every band defined.
    out[rate] = audio.pcm_to_float(pcm) + 0.003 * rng.standard_normal(pcm.size).astype(np.float32)
  return out


# kaldi itself refuses 128 bins at 16 kHz with a 512 FFT (the lowest bin holds no FFT point);
# torchaudio and we then give that bin log(eps). So 128 bins are compared where Kaldi allows it.
@pytest.mark.parametrize('rate,bins', [(16000, 80), (22050, 96), (24000, 100), (44100, 128),
                                       (48000, 128)])
def test_fbank_matches_kaldi_native_fbank(real_waves, rate, bins):
  wave = real_waves[rate]
  ref = _knf_fbank(wave, rate, bins)
  ours = audio.fbank(wave, rate, bins)
  assert ours.shape == ref.shape
  np.testing.assert_allclose(ours, ref, atol=1e-3, rtol=0)


def test_fbank_16k_128_bins_shape_and_finite(real_waves):
  spec = audio.fbank(real_waves[16000], 16000, 128)
  n = real_waves[16000].size
  assert spec.shape == (1 + (n - 400) // 160, 128)
  assert np.isfinite(spec).all()
  banks = audio.mel_banks(128, 512, 16000.0)
  empty = np.where(banks.sum(1) == 0)[0]
  assert list(empty) == [3]      # the bin Kaldi rejects; torchaudio gives it log(eps) too
  np.testing.assert_allclose(spec[:, 3], np.log(np.finfo(np.float32).eps), rtol=1e-6)


def test_crop_pad_and_times_follow_authors():
  spec = np.arange(50 * 4, dtype=np.float32).reshape(50, 4)
  out, s, e = audio.crop_or_pad(spec, 80, 0.3)       # shorter: zero pad at the end
  assert out.shape == (80, 4) and (out[50:] == 0).all() and (s, e) == (0.0, 80 / 50)
  out, s, e = audio.crop_or_pad(spec, 20, 0.5)       # centred
  gap = int((20 - 50) * 0.5)
  assert (s * 50, e * 50) == (50 + gap - 20, 50 + gap)
  np.testing.assert_array_equal(out, spec[15:35])
  out, s, e = audio.crop_or_pad(spec, 20, 0.0)       # position 0: the start
  np.testing.assert_array_equal(out, spec[0:20])
  out, s, e = audio.crop_or_pad(spec, 20, 0.999)     # position -> 1: the end
  np.testing.assert_array_equal(out, spec[30:50])


def test_audio_features_normalised_times_and_silence():
  rate = 16000
  t = np.arange(rate * 2) / rate
  pcm = audio.float_to_pcm(0.3 * np.sin(2 * np.pi * 500 * t))
  spec, span = audio.audio_features(pcm, rate, target_rate=16000, length=100, num_mel_bins=32,
                                    position=0.5)
  n = 1 + (pcm.size - 400) // 160
  raw = audio.fbank(audio.pcm_to_float(pcm) - audio.pcm_to_float(pcm).mean(), rate, 32)
  start = n + int((100 - n) * 0.5) - 100
  np.testing.assert_allclose(spec, (raw[start:start + 100] + 4.2677393) / (2 * 4.5689974),
                             atol=1e-5)
  np.testing.assert_allclose(span, [2.0 * start / n, 2.0 * (start + 100) / n], rtol=1e-6)
  # Resampling 16k -> 24k keeps the duration.
  _, span24 = audio.audio_features(pcm, rate, target_rate=24000, length=100, num_mel_bins=32,
                                   position=0.5)
  assert abs((span24[1] - span24[0]) - 1.0) < 0.02
  empty, span0 = audio.audio_features(np.zeros(0, np.int16), 0, target_rate=16000, length=10,
                                      num_mel_bins=8, position=0.5)
  assert empty.shape == (10, 8) and np.allclose(empty, 4.2677393 / (2 * 4.5689974))
  assert (span0 == 0).all()


def test_spec_augment_masks_bounded_bands():
  rng = np.random.default_rng(0)
  spec = np.ones((200, 64), np.float32)
  for _ in range(20):
    out = audio.spec_augment(spec, rng, time_mask=70, freq_mask=20)
    zero_rows = np.where((out == 0).all(1))[0]
    zero_cols = np.where((out == 0).all(0))[0]
    assert len(zero_rows) <= 2 * 69 and len(zero_cols) <= 2 * 19
    assert ((out == 0) | (out == 1)).all()
    # masked entries are exactly the union of full rows and full columns
    assert ((out == 0) == (np.isin(np.arange(200), zero_rows)[:, None]
                           | np.isin(np.arange(64), zero_cols)[None])).all()
  assert (spec == 1).all()   # input untouched
