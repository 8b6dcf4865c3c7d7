"""Read PyTorch checkpoints (``.pth``/``.pt``) without torch and without trusting them.

A PyTorch checkpoint is a pickle, and unpickling runs whatever callables the file names, so
``torch.load`` on an untrusted file is code execution. This reader uses a restricted
unpickler: the only globals a file may name are ``collections.OrderedDict``, the tensor
rebuild functions and the ``torch.*Storage`` types, all of which are replaced by local,
side-effect-free stand-ins. Anything else raises :class:`UnsafeCheckpointError` *before* it is
called. Tensors come back as contiguous numpy arrays.

Both on-disk formats are handled:

* legacy (``torch.save(..., _use_new_zipfile_serialization=False)``, torch < 1.6): magic
  number, protocol version and sys-info pickles, the object pickle, a pickled list of storage
  keys, then each storage as ``int64 element count`` + raw little-endian bytes;
* zip (torch >= 1.6): ``<archive>/data.pkl`` plus one ``<archive>/data/<key>`` entry per storage.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hotdog.errors import ModelError, UnsafeCheckpointError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch storage class name -> numpy dtype. BFloat16 has no numpy dtype: it is widened to
# float32 by placing its 16 bits in the high half of a float32.
STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


@dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> np.dtype:
        return STORAGE_DTYPES[self.name]


class _Storage:
    """A storage whose bytes may arrive after the pickle (legacy format)."""

    __slots__ = ("key", "stype", "numel", "array", "view")

    def __init__(self, key: str, stype: _StorageType, numel: int):
        self.key, self.stype, self.numel = key, stype, numel
        self.array: np.ndarray | None = None
        self.view: tuple[_Storage, int, int] | None = None  # (root, offset, size) for legacy views

    def resolve(self) -> np.ndarray:
        if self.view is not None:
            root, offset, size = self.view
            return root.resolve()[offset:offset + size]
        if self.array is None:
            raise ModelError(f"checkpoint storage {self.key!r} has no data")
        return self.array


class _LazyTensor:
    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def materialize(self) -> np.ndarray:
        flat = self.storage.resolve()
        if self.storage.stype.name == "BFloat16Storage":
            flat = (flat.astype(np.uint32) << 16).view(np.float32)
        if not self.size:
            if self.offset >= flat.size:
                raise ModelError("checkpoint tensor lies outside its storage")
            return np.array(flat[self.offset])
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride) if n > 0)
        if any(n == 0 for n in self.size):
            return np.zeros(self.size, dtype=flat.dtype)
        if self.offset < 0 or last >= flat.size or any(s < 0 for s in self.stride):
            raise ModelError("checkpoint tensor lies outside its storage (file corrupted?)")
        item = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset:], shape=self.size, strides=tuple(s * item for s in self.stride), writeable=False
        )
        return np.ascontiguousarray(view)


def _check_ints(name: str, values) -> tuple:
    if not isinstance(values, (tuple, list)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise UnsafeCheckpointError(f"checkpoint passes a malformed {name} to a tensor rebuild")
    return tuple(values)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *extra):
    if not isinstance(storage, _Storage) or not isinstance(storage_offset, int):
        raise UnsafeCheckpointError("checkpoint calls the tensor rebuild with non-tensor arguments")
    size, stride = _check_ints("size", size), _check_ints("stride", stride)
    if len(size) != len(stride):
        raise UnsafeCheckpointError("checkpoint tensor size and stride disagree")
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *extra):
    if not isinstance(data, _LazyTensor):
        raise UnsafeCheckpointError("checkpoint wraps a non-tensor in a Parameter")
    return data


def _ordered_dict(*args):
    # OrderedDict is rebuilt empty and filled by SETITEMS; refusing constructor arguments keeps
    # the surface to "make an empty dict".
    if args:
        raise UnsafeCheckpointError("checkpoint builds an OrderedDict with arguments")
    return collections.OrderedDict()


_ALLOWED_FUNCTIONS = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals a plain state dict needs; everything else is refused."""

    def __init__(self, file, storages: dict[str, _Storage], zip_format: bool):
        super().__init__(file)
        self._storages = storages
        self._zip_format = zip_format

    def find_class(self, module: str, name: str):
        allowed = _ALLOWED_FUNCTIONS.get((module, name))
        if allowed is not None:
            return allowed
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafeCheckpointError(
            f"checkpoint refused: it references {module}.{name}, which a plain tensor dictionary "
            "never needs (the file may be malicious; it was not executed)"
        )

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise UnsafeCheckpointError(f"checkpoint refused: unexpected persistent id {str(pid)[:80]!r}")
        if self._zip_format:
            if len(pid) != 5:
                raise UnsafeCheckpointError("checkpoint refused: malformed storage record")
            _, stype, key, _location, numel = pid
            view = None
        else:
            if len(pid) != 6:
                raise UnsafeCheckpointError("checkpoint refused: malformed storage record")
            _, stype, key, _location, numel, view = pid
        if not isinstance(stype, _StorageType) or not isinstance(key, str) or not isinstance(numel, int):
            raise UnsafeCheckpointError("checkpoint refused: malformed storage record")
        root = self._storages.get(key)
        if root is None:
            root = self._storages[key] = _Storage(key, stype, numel)
        if view is None:
            return root
        view_key, offset, size = view
        if not isinstance(view_key, str) or not isinstance(offset, int) or not isinstance(size, int):
            raise UnsafeCheckpointError("checkpoint refused: malformed storage view")
        out = _Storage(view_key, stype, size)
        out.view = (root, offset, size)
        return out


def _materialize(obj: Any, depth: int = 0) -> Any:
    if depth > 50:
        raise UnsafeCheckpointError("checkpoint refused: nesting too deep")
    if isinstance(obj, _LazyTensor):
        return obj.materialize()
    if isinstance(obj, dict):
        out = obj.__class__() if isinstance(obj, collections.OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _materialize(v, depth + 1)
        return out
    if isinstance(obj, list):
        return [_materialize(v, depth + 1) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialize(v, depth + 1) for v in obj)
    if isinstance(obj, (_Storage, _StorageType)):
        raise UnsafeCheckpointError("checkpoint holds a bare storage, not a tensor dictionary")
    return obj


def _safe_plain_load(f):
    """The legacy header pickles hold only numbers, strings, bools and dicts of those."""
    return _RestrictedUnpickler(f, {}, zip_format=True).load()


def _load_legacy(data: bytes) -> Any:
    f = io.BytesIO(data)
    magic = _safe_plain_load(f)
    if magic != LEGACY_MAGIC:
        raise ModelError("not a PyTorch checkpoint (bad magic number)")
    protocol = _safe_plain_load(f)
    if protocol != LEGACY_PROTOCOL:
        raise ModelError(f"unsupported PyTorch legacy checkpoint protocol {protocol!r}")
    sys_info = _safe_plain_load(f)
    little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
    if not little:
        raise ModelError("big-endian PyTorch checkpoints are not supported")
    storages: dict[str, _Storage] = {}
    result = _RestrictedUnpickler(f, storages, zip_format=False).load()
    keys = _safe_plain_load(f)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise UnsafeCheckpointError("checkpoint refused: malformed storage key list")
    for key in keys:
        st = storages.get(key)
        if st is None:
            raise ModelError(f"checkpoint lists storage {key!r} that no tensor uses (file corrupted?)")
        header = f.read(8)
        if len(header) != 8:
            raise ModelError("checkpoint is truncated (storage header missing)")
        (numel,) = struct.unpack("<q", header)
        nbytes = numel * st.stype.dtype.itemsize
        if numel < 0 or nbytes > len(data) - f.tell():
            raise ModelError("checkpoint is truncated or corrupted (storage larger than the file)")
        st.array = np.frombuffer(f.read(nbytes), dtype=st.stype.dtype)
    return _materialize(result)


def _load_zip(path_or_bytes) -> Any:
    with zipfile.ZipFile(path_or_bytes) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise ModelError("zip checkpoint has no single <archive>/data.pkl")
        prefix = pkl[0][: -len("data.pkl")]
        storages: dict[str, _Storage] = {}
        result = _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), storages, zip_format=True).load()
        byteorder = prefix + "byteorder"
        if byteorder in names and zf.read(byteorder).strip() not in (b"little", b""):
            raise ModelError("big-endian PyTorch checkpoints are not supported")
        for key, st in storages.items():
            entry = f"{prefix}data/{key}"
            if entry not in names:
                raise ModelError(f"zip checkpoint is missing storage {entry!r} (file truncated?)")
            info = zf.getinfo(entry)
            itemsize = st.stype.dtype.itemsize
            if info.file_size != st.numel * itemsize and info.file_size < st.numel * itemsize:
                raise ModelError(f"zip checkpoint storage {entry!r} is shorter than declared")
            raw = zf.read(entry)
            st.array = np.frombuffer(raw[: st.numel * itemsize], dtype=st.stype.dtype)
    return _materialize(result)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a PyTorch checkpoint into ``{name: numpy array}`` without executing anything.

    Raises :class:`UnsafeCheckpointError` for a file that references anything beyond plain
    tensors, and :class:`ModelError` for a missing, truncated or otherwise unreadable file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ModelError(f"cannot read checkpoint {path}: {err.strerror or err}") from err
    try:
        if data[:4] == b"PK\x03\x04":
            obj = _load_zip(io.BytesIO(data))
        else:
            obj = _load_legacy(data)
    except (ModelError, UnsafeCheckpointError):
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, AttributeError,
            IndexError, struct.error, zipfile.BadZipFile, MemoryError, RecursionError) as err:
        raise ModelError(f"checkpoint {path.name} is corrupted or not a PyTorch file ({type(err).__name__}: {err})") from err
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelError(f"checkpoint {path.name} does not hold a tensor dictionary")
    out = {}
    for k, v in obj.items():
        if isinstance(k, str) and isinstance(v, np.ndarray):
            out[k] = v
    return out
