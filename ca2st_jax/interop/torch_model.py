"""A compact PyTorch implementation of CAST, CAVA and CA²ST, each also compositional (EK100).

Its `state_dict()` has exactly the keys (names, shapes, order) of the reference models
(`tests/fixtures/reference/*.tsv` at base size), and it computes the reference function in eval
mode, reference quirks included (see the comments marked QUIRK). It exists so that

  * a user can run an exported state_dict without the authors' repositories, and
  * the tests have a PyTorch reference to compare the JAX model with.

It is inference-only: dropout and drop-path are identities (the reference's eval mode).

Inputs follow PyTorch conventions:
  video:        float [B, 3, F, H, W], already normalised (ImageNet mean/std);
  audio:        float [B, T_spec, M] normalised log-mel filterbank (what the input pipeline yields);
  audio_times:  float [B, 1 + F // tubelet, 2] seconds (row 0: the audio crop, rows 1..: time slots).
Outputs: a dict of logits, {'label': [B, C]} or {'verb': [B, 97], 'noun': [B, 300]}, like the JAX model.

Nothing in the JAX package imports this module at import time (it needs torch).
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

MODEL_NAMES = ('cast', 'cast_compositional', 'cava', 'cava_compositional', 'ca2st',
               'ca2st_compositional')
# 'eager': the reference's softmax(q k^T) v; 'sdpa': F.scaled_dot_product_attention (fused
# kernels), the modern PyTorch baseline of tools.benchmark --torch_attention=sdpa.
ATTENTIONS = ('eager', 'sdpa')


@dataclasses.dataclass(frozen=True)
class Spec:
  """The `config.model` fields the PyTorch model reads, under the same names (configs/*.py)."""
  name: str
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  bottleneck_dim: int
  adapter_dim: int
  patch_size: int
  image_size: int
  num_frames: int
  tubelet_size: int
  num_mel_bins: int
  spectrogram_length: int
  audio_patch_size: int
  audio_patch_stride: int
  num_classes: int
  num_verbs: int
  num_nouns: int
  # CA²ST switches.
  audio_exchange_start: int
  exchange_method: str            # 'seq' | 'add'
  share_exchange_projections: bool
  # CAVA / CA²ST time encoding and the reference's use_stpos.
  time_encoding: bool
  split_time_mlp: bool
  learned_positions: bool

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid ** 2

  @property
  def time_slots(self) -> int:
    return self.num_frames // self.tubelet_size

  @property
  def audio_grid(self) -> tuple[int, int]:
    f = (self.num_mel_bins - self.audio_patch_size) // self.audio_patch_stride + 1
    t = (self.spectrogram_length - self.audio_patch_size) // self.audio_patch_stride + 1
    return f, t


def spec_from_config(model_config) -> Spec:
  """The Spec of `config.model` (a ConfigDict or dict with the fields of config_lib.model_config)."""
  if isinstance(model_config, Spec):
    return model_config
  names = [f.name for f in dataclasses.fields(Spec)]
  missing = [n for n in names if n not in model_config]
  if missing:
    raise ValueError(f'config.model lacks the fields {missing} (see config_lib.model_config)')
  spec = Spec(**{n: model_config[n] for n in names})
  if spec.name not in MODEL_NAMES:
    raise ValueError(f'config.model.name={spec.name!r}: expected one of {MODEL_NAMES}')
  if spec.exchange_method not in ('seq', 'add'):
    raise ValueError(f"config.model.exchange_method={spec.exchange_method!r}: expected 'seq' or 'add'")
  return spec


# ----------------------------------------------------------------------------- building blocks


def _ln(dim, eps):
  return nn.LayerNorm(dim, eps=eps)


def quick_gelu(x):
  return x * torch.sigmoid(1.702 * x)


class QuickGELU(nn.Module):

  def forward(self, x):
    return quick_gelu(x)


class Adapter(nn.Module):
  """D_fc2(GELU(D_fc1(x))) [+ x]."""

  def __init__(self, dim, hidden, skip):
    super().__init__()
    self.skip = skip
    self.D_fc1 = nn.Linear(dim, hidden)
    self.D_fc2 = nn.Linear(hidden, dim)

  def forward(self, x):
    y = self.D_fc2(F.gelu(self.D_fc1(x)))
    return x + y if self.skip else y


class Mlp(nn.Module):
  """fc1 -> exact GELU -> fc2 (VideoMAE `mlp`, AST `ast_mlp`)."""

  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(F.gelu(self.fc1(x)))


def clip_mlp(dim, hidden):
  return nn.Sequential(OrderedDict([
      ('c_fc', nn.Linear(dim, hidden)), ('gelu', QuickGELU()), ('c_proj', nn.Linear(hidden, dim))]))


def _attend(q, k, v, heads, sdpa):
  """q [..., Nq, D], k/v [..., Nk, D] -> [..., Nq, D]; heads split as (h d), scale d^-0.5 on q."""
  *lead, nq, d = q.shape
  nk = k.shape[-2]
  hd = d // heads
  q = q.reshape(*lead, nq, heads, hd).transpose(-2, -3)
  k = k.reshape(*lead, nk, heads, hd).transpose(-2, -3)
  v = v.reshape(*lead, nk, heads, hd).transpose(-2, -3)
  if sdpa:
    out = F.scaled_dot_product_attention(q, k, v)  # scale d^-0.5 by default
  else:
    out = ((q * hd ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
  return out.transpose(-2, -3).reshape(*lead, nq, d)


class VideoMAEAttention(nn.Module):
  """`qkv` without bias plus separate q_bias / v_bias (k bias is zero)."""

  def __init__(self, dim, heads):
    super().__init__()
    self.heads = heads
    self.sdpa = False
    self.q_bias = nn.Parameter(torch.zeros(dim))
    self.v_bias = nn.Parameter(torch.zeros(dim))
    self.qkv = nn.Linear(dim, 3 * dim, bias=False)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
    q, k, v = F.linear(x, self.qkv.weight, bias).chunk(3, dim=-1)
    return self.proj(_attend(q, k, v, self.heads, self.sdpa))


class AstAttention(nn.Module):
  """DeiT attention: `qkv` with bias, `proj`."""

  def __init__(self, dim, heads):
    super().__init__()
    self.heads = heads
    self.sdpa = False
    self.qkv = nn.Linear(dim, 3 * dim)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    q, k, v = self.qkv(x).chunk(3, dim=-1)
    return self.proj(_attend(q, k, v, self.heads, self.sdpa))


class ClipAttention(nn.MultiheadAttention):
  """nn.MultiheadAttention (in_proj rows q|k|v, out_proj) on batch-first tokens."""

  def __init__(self, dim, heads):
    super().__init__(dim, heads)
    self.sdpa = False

  def forward(self, x):  # pylint: disable=arguments-differ
    q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
    return self.out_proj(_attend(q, k, v, self.num_heads, self.sdpa))


class XAttn(nn.Module):
  """The B-CA attention core: q = W_q x + q_bias; kv = W_kv y + kv_bias (rows k|v); out proj.

  `names` = (q, kv, proj) attribute names; the biases are `<q>_bias`, `<kv>_bias`. Position
  parameters (CAST's windowed pairs) are registered first, as in the reference.
  """

  def __init__(self, dim, heads, names, pos=(), stpos=None):
    super().__init__()
    self.heads = heads
    self.sdpa = False
    self.names = names
    self.stpos = stpos  # use_stpos: names of (audio space, audio time, visual space, visual time)
    for pname, n in pos:
      self.register_parameter(pname, nn.Parameter(torch.zeros(n, dim)))
    qn, kvn, pn = names
    self.register_parameter(qn + '_bias', nn.Parameter(torch.zeros(dim)))
    self.register_parameter(kvn + '_bias', nn.Parameter(torch.zeros(2 * dim)))
    self.add_module(qn, nn.Linear(dim, dim, bias=False))
    self.add_module(kvn, nn.Linear(dim, 2 * dim, bias=False))
    self.add_module(pn, nn.Linear(dim, dim))

  def attend(self, xq, xkv):
    qn, kvn, pn = self.names
    q = F.linear(xq, getattr(self, qn).weight, getattr(self, qn + '_bias'))
    k, v = F.linear(xkv, getattr(self, kvn).weight, getattr(self, kvn + '_bias')).chunk(2, dim=-1)
    return getattr(self, pn)(_attend(q, k, v, self.heads, self.sdpa))


# ---------------------------------------------------------------- exchange between the experts
#
# Batch-first layouts used below (P = patches per frame, T = time slots, Na = audio patches):
#   clip  [B*T, 1+P, d]  (row b*T + t; token 0 = class)
#   vmae  [B, T*P, d]    (token t*P + p)
#   audio [B, 2+Na, d]   (tokens 0, 1 = cls, dist; then f-major patches)


def t2s_window(xa: XAttn, s, t, num_slots):
  """CAST T2S: each CLIP patch attends over the T VideoMAE tokens at its position."""
  bt, n1, d = s.shape
  b = bt // num_slots
  p = n1 - 1
  sq = s[:, 1:].reshape(b, num_slots, p, d).transpose(1, 2) + xa.clip_time_pos   # [B,P,T,d]
  tk = t.reshape(b, num_slots, p, d).transpose(1, 2) + xa.vmae_time_pos          # [B,P,T,d]
  out = xa.attend(sq, tk).transpose(1, 2).reshape(bt, p, d)
  return torch.cat([s[:, :1], out], dim=1)


def s2t_window(xa: XAttn, s, t, num_slots):
  """CAST S2T: each VideoMAE token attends over the P CLIP patches of its paired frame."""
  bt, n1, d = s.shape
  b = bt // num_slots
  tq = t.reshape(bt, n1 - 1, d) + xa.vmae_space_pos
  sk = s[:, 1:] + xa.clip_space_pos
  return xa.attend(tq, sk).reshape(b, -1, d)


def _stpos(xa: XAttn, side):
  """use_stpos additions: audio [Na, d] (space + its one time row); visual [T, P, d]."""
  if xa.stpos is None:
    return None
  space, time = (xa.stpos[0], xa.stpos[1]) if side == 'audio' else (xa.stpos[2], xa.stpos[3])
  space, time = getattr(xa, space), getattr(xa, time)
  return space + time if side == 'audio' else time[:, None] + space[None]


def _visual_grid(pat, te_v, xa):
  """[B, T, P, d] visual patch tokens plus time encodings and learned positions."""
  if te_v is not None:
    pat = pat + te_v[:, :, None]
  add = _stpos(xa, 'visual')
  return pat if add is None else pat + add


def _clip_patches(s, b, te_v, xa):
  """CLIP patch tokens of all frames, [B, T*P, d], time-major."""
  bt, n1, d = s.shape
  return _visual_grid(s[:, 1:].reshape(b, bt // b, n1 - 1, d), te_v, xa).reshape(b, -1, d)


def _audio_patches(a, te_a, xa):
  pat = a[:, 2:]
  if te_a is not None:
    pat = pat + te_a
  add = _stpos(xa, 'audio')
  return pat if add is None else pat + add


def _vmae_tokens(t, num_slots, te_v, xa):
  b, n, d = t.shape
  return _visual_grid(t.reshape(b, num_slots, n // num_slots, d), te_v, xa).reshape(b, n, d)


def audio_queries_clip(xa: XAttn, a, s, te):
  """Audio patches attend to all CLIP patch tokens; cls/dist rows pass through."""
  out = xa.attend(_audio_patches(a, te[0], xa), _clip_patches(s, a.shape[0], te[1], xa))
  return torch.cat([a[:, :2], out], dim=1)


def clip_queries_audio(xa: XAttn, s, a, te):
  """CLIP patches (all frames) attend to all audio patches; class row passes through."""
  b = a.shape[0]
  bt, n1, d = s.shape
  out = xa.attend(_clip_patches(s, b, te[1], xa), _audio_patches(a, te[0], xa))
  return torch.cat([s[:, :1], out.reshape(bt, n1 - 1, d)], dim=1)


def audio_queries_vmae(xa: XAttn, a, t, te, num_slots):
  out = xa.attend(_audio_patches(a, te[0], xa), _vmae_tokens(t, num_slots, te[1], xa))
  return torch.cat([a[:, :2], out], dim=1)


def vmae_queries_audio(xa: XAttn, t, a, te, num_slots):
  return xa.attend(_vmae_tokens(t, num_slots, te[1], xa), _audio_patches(a, te[0], xa))


def _audio_xattn(spec: Spec, names, visual: str, order: str):
  """An audio<->visual attention core, with use_stpos positions when configured.

  visual: 'clip' | 'vmae' (the reference's prefix of the visual side's positions; in CAVA the
  audio side is also called 'clip' and the CLIP side 'vmae'). order: 'cava' or 'ca2st', the
  reference's registration order of the four position tensors.
  """
  d, h = spec.bottleneck_dim, spec.num_heads
  if not spec.learned_positions:
    return XAttn(d, h, names)
  f, t = spec.audio_grid
  na, p, slots = f * t, spec.num_patches, spec.time_slots
  if order == 'cava':  # audio = clip_*, CLIP = vmae_*
    pos = (('clip_space_pos', na), ('vmae_space_pos', p), ('clip_temporal_pos', 1), ('vmae_temporal_pos', slots))
    roles = ('clip_space_pos', 'clip_temporal_pos', 'vmae_space_pos', 'vmae_temporal_pos')
  else:
    pos = ((f'{visual}_space_pos', p), ('audio_space_pos', na), (f'{visual}_temporal_pos', slots),
           ('audio_temporal_pos', 1))
    roles = ('audio_space_pos', 'audio_temporal_pos', f'{visual}_space_pos', f'{visual}_temporal_pos')
  return XAttn(d, h, names, pos=pos, stpos=roles)


class BCast(nn.Module):
  """CA²ST's pairwise B-CA module (`s_t_b_cast`, `s_audio_b_cast`, `t_audio_b_cast`)."""

  def __init__(self, spec: Spec, kind: str):
    super().__init__()
    w, d, h = spec.width, spec.bottleneck_dim, spec.num_heads
    self.kind = kind
    self.num_slots = spec.time_slots
    self.cross_l_down = nn.Linear(w, d)
    self.ln_l_cross = _ln(d, 1e-6)
    self.cross_r_down = nn.Linear(w, d)
    self.ln_r_cross = _ln(d, 1e-6)
    if kind == 's-t':
      self.l2r_cross = XAttn(d, h, ('s2t_q', 's2t_kv', 't2s_proj'),
                             pos=(('clip_space_pos', spec.num_patches), ('vmae_space_pos', spec.num_patches)))
      self.r2l_cross = XAttn(d, h, ('t2s_q', 't2s_kv', 't2s_proj'),
                             pos=(('clip_time_pos', spec.time_slots), ('vmae_time_pos', spec.time_slots)))
    else:
      visual = 'clip' if kind == 's-audio' else 'vmae'
      self.l2r_cross = _audio_xattn(spec, ('q', 'kv', 'proj'), visual, 'ca2st')
      self.r2l_cross = _audio_xattn(spec, ('q', 'kv', 'proj'), visual, 'ca2st')
    self.cross_r_up = nn.Linear(d, w)
    self.cross_l_up = nn.Linear(d, w)

  def deltas(self, l, r, te):
    """Returns (delta_l, delta_r), the up-projected exchange for the left and right stream."""
    nl = self.ln_l_cross(self.cross_l_down(l))
    nr = self.ln_r_cross(self.cross_r_down(r))
    if self.kind == 's-t':
      to_l = t2s_window(self.r2l_cross, nl, nr, self.num_slots)
      to_r = s2t_window(self.l2r_cross, nl, nr, self.num_slots)
    elif self.kind == 's-audio':
      to_l = clip_queries_audio(self.r2l_cross, nl, nr, te)
      to_r = audio_queries_clip(self.l2r_cross, nr, nl, te)
    else:  # 't-audio'
      to_l = vmae_queries_audio(self.r2l_cross, nl, nr, te, self.num_slots)
      to_r = audio_queries_vmae(self.l2r_cross, nr, nl, te, self.num_slots)
    return self.cross_l_up(F.gelu(to_l)), self.cross_r_up(F.gelu(to_r))


def time_mlp(dim, nested):
  """Linear(2,d) ReLU [Linear(d,d) ReLU]x2 LayerNorm(d, eps 1e-5).

  CAVA nests the middle pairs (keys 0, 2.0, 3.0, 4); CA²ST is flat (keys 0, 2, 4, 6).
  """
  if nested:
    return nn.Sequential(nn.Linear(2, dim), nn.ReLU(),
                         nn.Sequential(nn.Linear(dim, dim), nn.ReLU()),
                         nn.Sequential(nn.Linear(dim, dim), nn.ReLU()), nn.LayerNorm(dim))
  return nn.Sequential(nn.Linear(2, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(),
                       nn.Linear(dim, dim), nn.ReLU(), nn.LayerNorm(dim))


# ----------------------------------------------------------------------------------- blocks

# Each expert's block parts under the reference's names: (pre-attention LayerNorm, attention,
# pre-MLP LayerNorm, MLP), their LayerNorm eps, the attention and MLP builders.
EXPERT_PARTS = {
    'clip': (('clip_ln_1', 'clip_attn', 'clip_ln_2', 'clip_mlp'), 1e-5, ClipAttention, clip_mlp),
    'vmae': (('norm1', 'attn', 'norm2', 'mlp'), 1e-6, VideoMAEAttention, Mlp),
    'ast': (('ast_norm1', 'ast_attn', 'ast_norm2', 'ast_mlp'), 1e-6, AstAttention, Mlp),
}


def add_expert_attention(block: nn.Module, spec: Spec, *experts: str) -> None:
  """Registers each expert's pre-attention LayerNorm and attention on `block`, in order (the
  state_dict order is the registration order)."""
  for expert in experts:
    (norm, attn, _, _), eps, attention, _ = EXPERT_PARTS[expert]
    block.add_module(norm, _ln(spec.width, eps))
    block.add_module(attn, attention(spec.width, spec.num_heads))


def add_expert_mlp(block: nn.Module, spec: Spec, *experts: str) -> None:
  """Registers each expert's pre-MLP LayerNorm and MLP on `block`, in order."""
  for expert in experts:
    (_, _, norm, mlp), eps, _, make_mlp = EXPERT_PARTS[expert]
    block.add_module(norm, _ln(spec.width, eps))
    block.add_module(mlp, make_mlp(spec.width, spec.mlp_dim))


def add_adapters(block: nn.Module, spec: Spec, skip: bool, *names: str) -> None:
  """Registers in-block adapters (width -> adapter_dim -> width) under `names`, in order."""
  for name in names:
    block.add_module(name, Adapter(spec.width, spec.adapter_dim, skip=skip))


class CastBlock(nn.Module):
  """CAST block: CLIP and VideoMAE side by side, windowed S<->T B-CA."""

  def __init__(self, spec: Spec):
    super().__init__()
    w, h, d = spec.width, spec.num_heads, spec.bottleneck_dim
    self.num_slots = spec.time_slots
    add_expert_attention(self, spec, 'clip')
    add_adapters(self, spec, True, 'S_Adapter')
    add_expert_attention(self, spec, 'vmae')
    add_adapters(self, spec, True, 'T_Adapter')
    self.cross_s_down = nn.Linear(w, d)
    self.cross_t_down = nn.Linear(w, d)
    self.ln_s_cross = _ln(d, 1e-6)
    self.ln_t_cross = _ln(d, 1e-6)
    self.t2s_cross = XAttn(d, h, ('t2s_q', 't2s_kv', 't2s_proj'),
                           pos=(('clip_time_pos', spec.time_slots), ('vmae_time_pos', spec.time_slots)))
    self.s2t_cross = XAttn(d, h, ('s2t_q', 's2t_kv', 't2s_proj'),
                           pos=(('clip_space_pos', spec.num_patches), ('vmae_space_pos', spec.num_patches)))
    self.cross_s_up = nn.Linear(d, w)
    self.cross_t_up = nn.Linear(d, w)
    add_expert_mlp(self, spec, 'clip')
    add_adapters(self, spec, False, 'S_MLP_Adapter')
    add_expert_mlp(self, spec, 'vmae')
    add_adapters(self, spec, False, 'T_MLP_Adapter')

  def forward(self, s, t):
    s = s + self.S_Adapter(self.clip_attn(self.clip_ln_1(s)))
    t = t + self.T_Adapter(self.attn(self.norm1(t)))
    ns = self.ln_s_cross(self.cross_s_down(s))
    nt = self.ln_t_cross(self.cross_t_down(t))
    s2 = s + self.cross_s_up(F.gelu(t2s_window(self.t2s_cross, ns, nt, self.num_slots)))
    t2 = t + self.cross_t_up(F.gelu(s2t_window(self.s2t_cross, ns, nt, self.num_slots)))
    s, t = s2, t2
    sn = self.clip_ln_2(s)
    s = s + self.clip_mlp(sn) + 0.5 * self.S_MLP_Adapter(sn)
    tn = self.norm2(t)
    t = t + self.mlp(tn) + 0.5 * self.T_MLP_Adapter(tn)
    return s, t


class CavaBlock(nn.Module):
  """CAVA block. QUIRK kept in the names: `S_*`/`*_s_*` act on AUDIO, `T_*`/`*_t_*` on CLIP."""

  def __init__(self, spec: Spec):
    super().__init__()
    w, d = spec.width, spec.bottleneck_dim
    add_expert_attention(self, spec, 'ast', 'clip')
    add_adapters(self, spec, True, 'S_Adapter', 'T_Adapter')
    self.cross_s_down = nn.Linear(w, d)
    self.cross_t_down = nn.Linear(w, d)
    self.ln_s_cross = _ln(d, 1e-6)
    self.ln_t_cross = _ln(d, 1e-6)
    self.t2s_cross = _audio_xattn(spec, ('t2s_q', 't2s_kv', 't2s_proj'), 'vmae', 'cava')
    self.s2t_cross = _audio_xattn(spec, ('s2t_q', 's2t_kv', 't2s_proj'), 'vmae', 'cava')
    self.cross_s_up = nn.Linear(d, w)
    self.cross_t_up = nn.Linear(d, w)
    add_expert_mlp(self, spec, 'ast', 'clip')
    add_adapters(self, spec, False, 'S_MLP_Adapter', 'T_MLP_Adapter')

  def forward(self, a, s, te):
    a = a + self.S_Adapter(self.ast_attn(self.ast_norm1(a)))
    s = s + self.T_Adapter(self.clip_attn(self.clip_ln_1(s)))
    na = self.ln_s_cross(self.cross_s_down(a))
    ns = self.ln_t_cross(self.cross_t_down(s))
    a2 = a + self.cross_s_up(F.gelu(audio_queries_clip(self.t2s_cross, na, ns, te)))
    s2 = s + self.cross_t_up(F.gelu(clip_queries_audio(self.s2t_cross, ns, na, te)))
    a, s = a2, s2
    an = self.ast_norm2(a)
    sn = self.clip_ln_2(s)
    a = a + self.ast_mlp(an) + 0.5 * self.S_MLP_Adapter(an)
    s = s + self.clip_mlp(sn) + 0.5 * self.T_MLP_Adapter(sn)
    return a, s


class Ca2stBlock(nn.Module):
  """CA²ST block: S, T and audio experts; S&T B-CA always, A&S and A&T from
  `audio_exchange_start` on, in sequence ('seq') or averaged ('add')."""

  def __init__(self, spec: Spec, layer: int):
    super().__init__()
    self.exchange = spec.exchange_method
    self.audio_pairs = layer >= spec.audio_exchange_start
    add_expert_attention(self, spec, 'ast', 'clip', 'vmae')
    add_adapters(self, spec, True, 'S_Adapter', 'T_Adapter', 'Audio_Adapter')
    self.s_t_b_cast = BCast(spec, 's-t')
    if self.audio_pairs:
      self.s_audio_b_cast = BCast(spec, 's-audio')
      self.t_audio_b_cast = BCast(spec, 't-audio')
      if spec.share_exchange_projections:  # the reference's bcast_share: one tensor, several names
        st, sa, ta = self.s_t_b_cast, self.s_audio_b_cast, self.t_audio_b_cast
        sa.cross_l_down = st.cross_l_down
        ta.cross_l_down = st.cross_r_down
        sa.cross_r_down = ta.cross_r_down
        sa.cross_l_up = st.cross_l_up
        ta.cross_l_up = st.cross_r_up
        sa.cross_r_up = ta.cross_r_up
    add_expert_mlp(self, spec, 'ast', 'clip', 'vmae')
    add_adapters(self, spec, False, 'S_MLP_Adapter', 'T_MLP_Adapter', 'Audio_MLP_Adapter')

  def forward(self, s, t, a, te):
    s = s + self.S_Adapter(self.clip_attn(self.clip_ln_1(s)))
    t = t + self.T_Adapter(self.attn(self.norm1(t)))
    a = a + self.Audio_Adapter(self.ast_attn(self.ast_norm1(a)))
    if self.exchange == 'seq':
      ds, dt = self.s_t_b_cast.deltas(s, t, te)
      s, t = s + ds, t + dt
      if self.audio_pairs:
        ds, da = self.s_audio_b_cast.deltas(s, a, te)
        s, a = s + ds, a + da
        dt, da = self.t_audio_b_cast.deltas(t, a, te)
        t, a = t + dt, a + da
    else:  # 'add': all pairs read the same inputs; each stream gets the mean of its two deltas
      ds_v, dt_v = self.s_t_b_cast.deltas(s, t, te)
      if self.audio_pairs:
        ds_a, da_s = self.s_audio_b_cast.deltas(s, a, te)
        dt_a, da_t = self.t_audio_b_cast.deltas(t, a, te)
        s, t, a = s + (ds_v + ds_a) / 2, t + (dt_v + dt_a) / 2, a + (da_s + da_t) / 2
      else:  # QUIRK: (x + x) / 2 in the reference; the audio stream gets nothing
        s, t = s + (ds_v + ds_v) / 2, t + (dt_v + dt_v) / 2
    sn = self.clip_ln_2(s)
    tn = self.norm2(t)
    an = self.ast_norm2(a)
    s = s + self.clip_mlp(sn) + 0.5 * self.S_MLP_Adapter(sn)
    t = t + self.mlp(tn) + 0.5 * self.T_MLP_Adapter(tn)
    a = a + self.ast_mlp(an) + 0.5 * self.Audio_MLP_Adapter(an)
    return s, t, a


# ----------------------------------------------------------------------------------- models


def sinusoid_table(n, dim):
  """VideoMAE's fixed position table (float64 maths, float32 result), [1, n, dim]."""
  pos = torch.arange(n, dtype=torch.float64)[:, None]
  j = torch.arange(dim)
  angle = pos / torch.pow(torch.tensor(10000.0, dtype=torch.float64), (2 * (j // 2)).double() / dim)
  table = torch.where(j % 2 == 0, torch.sin(angle), torch.cos(angle))
  return table.float()[None]


class _Model(nn.Module):
  """Shared stems and pooling."""

  def _add_clip_params(self, spec):
    w = spec.width
    self.clip_class_embedding = nn.Parameter(torch.zeros(w))
    self.clip_positional_embedding = nn.Parameter(torch.zeros(spec.num_patches + 1, w))

  def _add_ast_params(self, spec):
    w = spec.width
    f, t = spec.audio_grid
    self.ast_cls_token = nn.Parameter(torch.zeros(1, 1, w))
    self.ast_dist_token = nn.Parameter(torch.zeros(1, 1, w))
    self.ast_pos_embed = nn.Parameter(torch.zeros(1, f * t + 2, w))

  def _add_clip_stem(self, spec):
    self.clip_conv1 = nn.Conv2d(3, spec.width, spec.patch_size, spec.patch_size, bias=False)
    self.clip_ln_pre = _ln(spec.width, 1e-5)

  def _add_vmae_stem(self, spec):
    k = (spec.tubelet_size, spec.patch_size, spec.patch_size)
    self.patch_embed = nn.Module()
    self.patch_embed.proj = nn.Conv3d(3, spec.width, k, k)
    self.register_buffer(
        'pos_embed', sinusoid_table(spec.time_slots * spec.num_patches, spec.width), persistent=False)

  def _add_ast_stem(self, spec):
    k, st = spec.audio_patch_size, spec.audio_patch_stride
    self.ast_patch_embed = nn.Module()
    self.ast_patch_embed.proj = nn.Conv2d(1, spec.width, k, st)
    self.ast_norm = _ln(spec.width, 1e-6)

  def clip_stem(self, video):
    """[B,3,F,H,W] -> [B*T, 1+P, D] from frames 1, 3, 5, ... (`x[:, :, 1::2]`)."""
    x = video[:, :, 1::2]
    b, c, t, h, w = x.shape
    x = x.transpose(1, 2).reshape(b * t, c, h, w)
    x = self.clip_conv1(x).flatten(2).transpose(1, 2)
    cls = self.clip_class_embedding.expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + self.clip_positional_embedding
    return self.clip_ln_pre(x)

  def vmae_stem(self, video):
    x = self.patch_embed.proj(video).flatten(2).transpose(1, 2)
    return x + self.pos_embed

  def ast_stem(self, audio):
    x = audio[:, None].transpose(2, 3)                     # [B,1,M,T]
    x = self.ast_patch_embed.proj(x).flatten(2).transpose(1, 2)  # f-major tokens
    b = x.shape[0]
    x = torch.cat([self.ast_cls_token.expand(b, -1, -1), self.ast_dist_token.expand(b, -1, -1), x], 1)
    return x + self.ast_pos_embed

  def clip_pool(self, s, b, ln):
    return ln(s[:, 0].reshape(b, -1, s.shape[-1]).mean(1))

  def ast_pool(self, a):
    a = self.ast_norm(a)
    return (a[:, 0] + a[:, 1]) / 2

  def time_encodings(self, audio_times):
    """(te_audio [B, Na, d], te_video [B, T, d]) as the authors' forward builds them."""
    spec = self.spec
    f_dim, t_dim = spec.audio_grid
    times = audio_times.reshape(audio_times.shape[0], -1, 2).float()
    start, end = times[:, 0, 0:1], times[:, 0, 1:2]
    num_segments = spec.num_frames // 2
    lin = torch.linspace(0, 1, steps=num_segments + 1, device=times.device)
    seg = torch.stack([start + (end - start) * lin[:-1], start + (end - start) * lin[1:]], dim=-1)
    repeats = t_dim // num_segments + 1
    seg = seg[:, torch.arange(num_segments, device=times.device).repeat_interleave(repeats)[:t_dim]]
    audio_mlp = self.audio_time_mlp if spec.split_time_mlp else self.time_mlp
    e_audio = audio_mlp(seg)                                                    # [B, t_dim, d]
    # QUIRK: encodings are laid out time-major (k * f_dim + f) but added to f-major AST tokens.
    te_audio = e_audio[:, :, None].expand(-1, -1, f_dim, -1).reshape(e_audio.shape[0], -1, e_audio.shape[-1])
    te_video = self.time_mlp(times[:, 1:])
    return te_audio, te_video


class Cast(_Model):
  """CAST (`bidir_vit_base_patch16_224`) and CAST compositional (`compo_bidir_...`)."""

  def __init__(self, spec: Spec):
    super().__init__()
    self.spec = spec
    self.compositional = spec.name == 'cast_compositional'
    self._add_clip_params(spec)
    self._add_vmae_stem(spec)
    self._add_clip_stem(spec)
    self.blocks = nn.ModuleList([CastBlock(spec) for _ in range(spec.depth)])
    self.clip_ln_post = _ln(spec.width, 1e-5)
    self.vmae_fc_norm = _ln(spec.width, 1e-6)
    w = spec.width
    if self.compositional:
      self.head_verb = nn.Linear(w, spec.num_verbs)
      self.head_noun = nn.Linear(w, spec.num_nouns)
    else:
      self.noun_last_Adapter = Adapter(w, spec.adapter_dim, skip=False)
      self.verb_last_Adapter = Adapter(w, spec.adapter_dim, skip=False)
      self.head = nn.Linear(w, spec.num_classes)

  def forward(self, video, audio=None, audio_times=None):
    del audio, audio_times
    b = video.shape[0]
    s, t = self.clip_stem(video), self.vmae_stem(video)
    for blk in self.blocks:
      s, t = blk(s, t)
    fs = self.clip_pool(s, b, self.clip_ln_post)
    ft = self.vmae_fc_norm(t.mean(1))
    if self.compositional:
      return {'verb': self.head_verb(ft), 'noun': self.head_noun(fs)}
    return {'label': self.head(self.noun_last_Adapter(fs) + self.verb_last_Adapter(ft))}


class Cava(_Model):
  """CAVA (`single_ast_clip_vit_base_patch16_224`; defaults time_encoding, split_time_mlp, no
  stpos) and CAVA compositional (`compo_single_ast_clip_vit_base_patch16_224`: verb and noun
  heads on the same fused feature)."""

  def __init__(self, spec: Spec):
    super().__init__()
    self.spec = spec
    self.compositional = spec.name == 'cava_compositional'
    w = spec.width
    self._add_ast_params(spec)
    self._add_clip_params(spec)
    self._add_ast_stem(spec)
    self._add_clip_stem(spec)
    if spec.time_encoding:
      self.time_mlp = time_mlp(spec.bottleneck_dim, nested=True)
      if spec.split_time_mlp:
        self.audio_time_mlp = time_mlp(spec.bottleneck_dim, nested=True)
    self.blocks = nn.ModuleList([CavaBlock(spec) for _ in range(spec.depth)])
    self.audio_ln_post = _ln(w, 1e-5)   # QUIRK: in the state_dict, never used
    self.clip_ln_post = _ln(w, 1e-6)    # QUIRK: eps 1e-6 here (CLIP's is 1e-5)
    if self.compositional:  # registered before the last adapters, as the reference does
      self.head_verb = nn.Linear(w, spec.num_verbs)
      self.head_noun = nn.Linear(w, spec.num_nouns)
    self.noun_last_Adapter = Adapter(w, spec.adapter_dim, skip=True)   # audio feature
    self.verb_last_Adapter = Adapter(w, spec.adapter_dim, skip=True)   # CLIP feature
    if not self.compositional:
      self.head = nn.Linear(w, spec.num_classes)

  def forward(self, video, audio=None, audio_times=None):
    b = video.shape[0]
    te = self.time_encodings(audio_times) if self.spec.time_encoding else (None, None)
    a, s = self.ast_stem(audio), self.clip_stem(video)
    for blk in self.blocks:
      a, s = blk(a, s, te)
    fa = self.ast_pool(a)
    fs = self.clip_pool(s, b, self.clip_ln_post)
    x = self.noun_last_Adapter(fa) + self.verb_last_Adapter(fs)
    if self.compositional:
      return {'verb': self.head_verb(x), 'noun': self.head_noun(x)}
    return {'label': self.head(x)}


class Ca2st(_Model):
  """CA²ST (`cast_single_ast_Bsquare_CA9_base_patch16_224` and its switches) and CA²ST
  compositional (`compo_cast_single_ast_Bsquare_CA9_base_patch16_224`: an audio last adapter per
  head; noun from CLIP + audio, verb from VideoMAE + audio)."""

  def __init__(self, spec: Spec):
    super().__init__()
    self.spec = spec
    self.compositional = spec.name == 'ca2st_compositional'
    w = spec.width
    self._add_ast_params(spec)
    self._add_clip_params(spec)
    self._add_ast_stem(spec)
    if spec.time_encoding:
      self.time_mlp = time_mlp(spec.bottleneck_dim, nested=False)
      if spec.split_time_mlp:
        self.audio_time_mlp = time_mlp(spec.bottleneck_dim, nested=False)
    self._add_vmae_stem(spec)
    self._add_clip_stem(spec)
    self.blocks = nn.ModuleList([Ca2stBlock(spec, i) for i in range(spec.depth)])
    self.audio_ln_post = _ln(w, 1e-5)   # QUIRK: in the state_dict, never used
    self.clip_ln_post = _ln(w, 1e-5)
    self.vmae_fc_norm = _ln(w, 1e-6)
    self.noun_last_Adapter = Adapter(w, spec.adapter_dim, skip=False)
    self.verb_last_Adapter = Adapter(w, spec.adapter_dim, skip=False)
    if self.compositional:
      self.audio_noun_last_Adapter = clip_mlp(w, spec.adapter_dim)
      self.audio_verb_last_Adapter = clip_mlp(w, spec.adapter_dim)
      self.head_verb = nn.Linear(w, spec.num_verbs)
      self.head_noun = nn.Linear(w, spec.num_nouns)
    else:
      self.audio_verb_last_Adapter = clip_mlp(w, spec.adapter_dim)      # c_fc, QuickGELU, c_proj
      self.head = nn.Linear(w, spec.num_classes)

  def forward(self, video, audio=None, audio_times=None):
    b = video.shape[0]
    te = self.time_encodings(audio_times) if self.spec.time_encoding else (None, None)
    s, t, a = self.clip_stem(video), self.vmae_stem(video), self.ast_stem(audio)
    for blk in self.blocks:
      s, t, a = blk(s, t, a, te)
    fs = self.clip_pool(s, b, self.clip_ln_post)
    ft = self.vmae_fc_norm(t.mean(1))
    fa = self.ast_pool(a)
    if self.compositional:
      noun = self.noun_last_Adapter(fs) + self.audio_noun_last_Adapter(fa)
      verb = self.verb_last_Adapter(ft) + self.audio_verb_last_Adapter(fa)
      return {'verb': self.head_verb(verb), 'noun': self.head_noun(noun)}
    x = self.noun_last_Adapter(fs) + self.verb_last_Adapter(ft) + self.audio_verb_last_Adapter(fa)
    return {'label': self.head(x)}


def build(model_config, attention: str = 'eager') -> nn.Module:
  """The PyTorch model for `config.model`, in eval mode, parameters zero (load a state_dict);
  `attention` one of ATTENTIONS."""
  if attention not in ATTENTIONS:
    raise ValueError(f'attention={attention!r}: expected one of {ATTENTIONS}')
  spec = spec_from_config(model_config)
  cls = {'cast': Cast, 'cava': Cava, 'ca2st': Ca2st}[spec.name.removesuffix('_compositional')]
  model = cls(spec).eval()
  for module in model.modules():
    if isinstance(module, (VideoMAEAttention, AstAttention, ClipAttention, XAttn)):
      module.sdpa = attention == 'sdpa'
  return model


def from_checkpoint(path, model_config, container: str | None = None) -> nn.Module:
  """The model for `config.model` with a reference-layout checkpoint loaded strictly.

  Reads any file `ca2st_jax.interop.torch_io` reads (our exports, official CAST DeepSpeed
  checkpoints, the authors' state_dicts; `.pth` or `.safetensors`), without executing code.
  """
  import numpy as np  # pylint: disable=import-outside-toplevel
  from ca2st_jax.interop import torch_io  # pylint: disable=import-outside-toplevel
  model = build(model_config)
  sd = torch_io.strip_prefixes(torch_io.read_tensors(path, container), ('module.',))
  model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)
  return model


def shared_names(model: nn.Module) -> dict[str, list[str]]:
  """{first name: [other names]} for parameters that appear under several state_dict names."""
  seen: dict[int, str] = {}
  out: dict[str, list[str]] = {}
  for name, tensor in model.state_dict(keep_vars=True).items():
    key = id(tensor)
    if key in seen:
      out.setdefault(seen[key], []).append(name)
    else:
      seen[key] = name
  return out
