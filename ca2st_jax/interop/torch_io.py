"""Reading and writing PyTorch checkpoints without executing code from the files.

`read_tensors(path)` returns a flat {name: numpy array} for:
  * `.safetensors` files;
  * pickled PyTorch files (`torch.save`, zip or legacy format), read with
    `torch.load(weights_only=True)`;
  * TorchScript archives (OpenAI's `ViT-B-16.pt`) and zip checkpoints whose pickle names
    classes `weights_only` refuses (DeepSpeed extras, argparse namespaces): their `data.pkl`
    is read with a restricted unpickler that builds tensors from the archive's storages and
    turns every other class into an inert placeholder. Nothing from the file is ever called.

Containers are resolved explicitly (`container=`) or from the usual keys ('model', 'module',
'state_dict'); the answer is always one flat state_dict of arrays.

Errors are `CheckpointError` with a message that names the file and what was found.
"""
from __future__ import annotations

import io
import os
import pickle
import struct
import warnings
import zipfile
from collections import OrderedDict
from typing import Any, Iterable, Mapping

import numpy as np

CONTAINERS = ('model', 'module', 'state_dict', 'model_state', 'params')


class CheckpointError(ValueError):
  """A checkpoint that cannot be used, with the reason."""


# ------------------------------------------------------------------------------ raw loading


class _Inert:
  """Stands in for any class a checkpoint names that is not a tensor or a plain container."""

  _qualname = '?'

  def __init__(self, *args, **kwargs):
    self.args, self.kwargs, self.state = args, kwargs, None

  def __setstate__(self, state):
    self.state = state

  def __repr__(self):
    return f'<inert {self._qualname}>'


def _inert_class(module, name):
  return type(name, (_Inert,), {'_qualname': f'{module}.{name}'})


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickles `data.pkl` of a torch zip archive; only tensor rebuilding is real."""

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
    super().__init__(file)
    self._archive = archive
    self._prefix = prefix
    self._storages: dict[str, Any] = {}

  def find_class(self, module, name):
    import torch  # pylint: disable=import-outside-toplevel
    allowed = {
        ('torch._utils', '_rebuild_tensor_v2'): torch._utils._rebuild_tensor_v2,  # pylint: disable=protected-access
        ('torch._utils', '_rebuild_parameter'): torch._utils._rebuild_parameter,  # pylint: disable=protected-access
        ('collections', 'OrderedDict'): OrderedDict,
        ('torch', 'Size'): torch.Size,
    }
    if (module, name) in allowed:
      return allowed[(module, name)]
    if module == 'torch.jit._pickle':  # TorchScript's typed-container helpers: pass the value through
      return lambda value, *_: value
    if module == 'torch' and name.endswith('Storage'):
      storage = getattr(torch, name, None)
      if storage is not None:
        return storage
    if module == 'torch' and name in ('float32', 'float16', 'bfloat16', 'float64', 'int64', 'int32',
                                      'uint8', 'int8', 'bool'):
      return getattr(torch, name)
    return _inert_class(module, name)

  def persistent_load(self, pid):
    import torch  # pylint: disable=import-outside-toplevel
    if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == 'storage'):
      raise CheckpointError(f'unsupported persistent id {pid!r}')
    storage_type, key = pid[1], pid[2]
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')  # legacy storage classes warn on .dtype
      dtype = (torch.uint8 if storage_type is torch.UntypedStorage
               else getattr(storage_type, 'dtype', None))
    if not isinstance(dtype, torch.dtype):
      raise CheckpointError(f'storage {key!r} has an unknown storage type {storage_type!r}')
    if key not in self._storages:
      name = f'{self._prefix}data/{key}'
      try:
        raw = self._archive.read(name)
      except KeyError as e:
        raise CheckpointError(f'archive lacks the storage record {name}') from e
      untyped = torch.frombuffer(bytearray(raw), dtype=torch.uint8).untyped_storage() if raw else (
          torch.UntypedStorage(0))
      with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        self._storages[key] = torch.storage.TypedStorage(
            wrap_storage=untyped, dtype=dtype, _internal=True)
    return self._storages[key]


def _is_torchscript(names: Iterable[str]) -> bool:
  return any(n.endswith('/constants.pkl') or '/code/' in n for n in names)


def _load_zip_restricted(path: str):
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pkls = [n for n in names if n.endswith('data.pkl') and n.count('/') == 1]
    if not pkls:
      raise CheckpointError(f'{path}: zip archive without a data.pkl; not a PyTorch checkpoint')
    prefix = pkls[0][:-len('data.pkl')]
    with archive.open(pkls[0]) as f:
      try:
        return _RestrictedUnpickler(io.BytesIO(f.read()), archive, prefix).load()
      except CheckpointError as e:
        raise CheckpointError(f'{path}: {e}') from e
      except Exception as e:  # a damaged or crafted pickle: say so, whatever broke inside
        raise CheckpointError(
            f'{path}: unreadable PyTorch archive ({type(e).__name__}: {str(e)[:200]})') from e


def _is_safetensors(path: str) -> bool:
  if path.endswith('.safetensors'):
    return True
  try:
    with open(path, 'rb') as f:
      head = f.read(9)
  except OSError:
    return False
  if len(head) < 9:
    return False
  (n,) = struct.unpack('<Q', head[:8])
  return 0 < n < (1 << 27) and head[8:9] == b'{'


# Files looked for when a directory is given: DeepSpeed tag dirs and Hugging Face save_pretrained dirs.
DIRECTORY_FILES = ('mp_rank_00_model_states.pt', 'model.safetensors', 'pytorch_model.bin')


def resolve_path(path) -> str:
  """`path`, or the checkpoint file inside a DeepSpeed / Hugging Face directory."""
  path = os.fspath(path)
  if os.path.isdir(path):
    for name in DIRECTORY_FILES:
      if os.path.isfile(os.path.join(path, name)):
        return os.path.join(path, name)
    raise CheckpointError(f'{path}: a directory without any of {DIRECTORY_FILES} '
                          '(sharded Hugging Face checkpoints are not supported)')
  return path


def load_raw(path: str) -> Any:
  """The checkpoint's top-level object: a dict of tensors/containers (never executes code)."""
  import torch  # pylint: disable=import-outside-toplevel
  path = resolve_path(path)
  if not os.path.isfile(path):
    raise CheckpointError(f'{path}: no such file')
  if _is_safetensors(path):
    from safetensors.torch import load_file  # pylint: disable=import-outside-toplevel
    try:
      return load_file(path)
    except Exception as e:  # safetensors raises its own error types
      raise CheckpointError(f'{path}: unreadable safetensors file ({e})') from e
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as archive:
      torchscript = _is_torchscript(archive.namelist())
    if torchscript:
      return _load_zip_restricted(path)
    try:
      return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError:
      # weights_only refused a class (e.g. DeepSpeed's extras): read it inertly instead.
      return _load_zip_restricted(path)
    except Exception as e:
      raise CheckpointError(f'{path}: not a readable PyTorch checkpoint ({e})') from e
  try:
    return torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:
    raise CheckpointError(
        f'{path}: not a PyTorch checkpoint (neither safetensors, a torch zip archive nor a '
        f'weights-only pickle): {type(e).__name__}: {str(e)[:200]}') from e


# ------------------------------------------------------------------------- state_dict views


def _is_tensor(x) -> bool:
  import torch  # pylint: disable=import-outside-toplevel
  return isinstance(x, (torch.Tensor, np.ndarray))


def module_tensors(obj, prefix='') -> 'OrderedDict[str, Any]':
  """Tensors held by an unpickled TorchScript module tree, named like its state_dict()."""
  out = OrderedDict()
  if _is_tensor(obj):
    out[prefix[:-1]] = obj
    return out
  if isinstance(obj, _Inert):
    obj = obj.state
  if isinstance(obj, Mapping):
    for k, v in obj.items():
      if isinstance(k, str) and (_is_tensor(v) or isinstance(v, (_Inert, Mapping))):
        out.update(module_tensors(v, f'{prefix}{k}.'))
  return out


def to_numpy(t) -> np.ndarray:
  """A tensor as a numpy array (bfloat16 becomes float32, which numpy can hold exactly)."""
  import torch  # pylint: disable=import-outside-toplevel
  if isinstance(t, np.ndarray):
    return t
  t = t.detach().cpu()
  if t.dtype == torch.bfloat16:
    t = t.float()
  return t.contiguous().numpy()


def find_state_dict(obj, path: str = '?', container: str | None = None) -> 'OrderedDict[str, Any]':
  """The flat state_dict inside a loaded checkpoint."""
  if isinstance(obj, _Inert):  # a TorchScript module tree
    tensors = module_tensors(obj)
    if not tensors:
      raise CheckpointError(f'{path}: TorchScript archive holds no tensors')
    return tensors
  if not isinstance(obj, Mapping):
    raise CheckpointError(
        f'{path}: wrong container: top level is a {type(obj).__name__}, expected a dict '
        f'(a state_dict or one of {CONTAINERS})')
  if container is not None:
    if container not in obj:
      raise CheckpointError(
          f'{path}: wrong container: no {container!r} at the top level (found {sorted(map(str, obj))[:10]})')
    return find_state_dict(obj[container], path)
  tensors = OrderedDict((k, v) for k, v in obj.items() if isinstance(k, str) and _is_tensor(v))
  if tensors and len(tensors) >= len(obj) / 2:
    return tensors
  for key in CONTAINERS:
    if key in obj and isinstance(obj[key], (Mapping, _Inert)):
      return find_state_dict(obj[key], path)
  raise CheckpointError(
      f'{path}: wrong container: top-level keys {sorted(map(str, obj))[:10]} hold no state_dict '
      f'(expected tensors or one of {CONTAINERS})')


def read_tensors(path, container: str | None = None) -> 'OrderedDict[str, np.ndarray]':
  """{name: numpy array} from any supported checkpoint file (see the module docstring)."""
  path = resolve_path(path)
  sd = find_state_dict(load_raw(path), path, container)
  return OrderedDict((k, to_numpy(v)) for k, v in sd.items())


def strip_prefixes(sd: Mapping[str, Any], prefixes=('module.',)) -> 'OrderedDict[str, Any]':
  """Drops a leading wrapper prefix ('module.' of DDP/DeepSpeed) when every key carries it."""
  out = OrderedDict(sd)
  for p in prefixes:
    if out and all(k.startswith(p) for k in out):
      out = OrderedDict((k[len(p):], v) for k, v in out.items())
  return out


# ---------------------------------------------------------------------------------- writing


def write_tensors(path, tensors: Mapping[str, np.ndarray], dtype: str = 'float32',
                  shared: Mapping[str, Iterable[str]] | None = None) -> None:
  """Writes a state_dict to `.pth` (torch.save of a plain dict of tensors, loadable with
  weights_only=True) or `.safetensors`, by extension. Floating tensors are cast to `dtype`.

  `shared` ({name: [other names]}) makes the other names views of the same tensor in a
  `.pth` (as the reference's state_dict holds them); safetensors stores separate copies.
  """
  import torch  # pylint: disable=import-outside-toplevel
  path = os.fspath(path)
  tdtype = {'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16}.get(dtype)
  if tdtype is None:
    raise ValueError(f'dtype must be float32, float16 or bfloat16, got {dtype!r}')
  out = OrderedDict()
  for k, v in tensors.items():
    t = torch.from_numpy(np.array(v, copy=True, order="C"))
    out[k] = t.to(tdtype) if t.is_floating_point() else t
  if path.endswith('.safetensors'):
    from safetensors.torch import save_file  # pylint: disable=import-outside-toplevel
    save_file({k: v.contiguous() for k, v in out.items()}, path)
  elif path.endswith(('.pth', '.pt', '.bin')):
    for first, others in (shared or {}).items():
      for other in others:
        out[other] = out[first]
    torch.save(out, path)
  else:
    raise ValueError(f'{path}: unknown extension; use .pth, .pt, .bin or .safetensors')
