"""The torch-free checkpoint reader: both formats, views/strides, and hostile pickles."""

from __future__ import annotations

import builtins
import collections
import io
import os
import pickle
import struct
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from hotdog.errors import ModelError, UnsafeCheckpointError
from hotdog.torchpickle import LEGACY_MAGIC, LEGACY_PROTOCOL, load_state_dict


# ------------------------------------------------------------------ a minimal torch.save stand-in

@pytest.fixture
def fake_torch(monkeypatch):
    """Modules named like torch's so pickle writes the same GLOBAL opcodes torch.save does."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*a):  # never called: the reader substitutes its own
        raise AssertionError

    def _rebuild_parameter(*a):
        raise AssertionError

    for fn in (_rebuild_tensor_v2, _rebuild_parameter):
        fn.__module__, fn.__qualname__ = utils.__name__, fn.__name__
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    utils._rebuild_parameter = _rebuild_parameter
    for name in ("FloatStorage", "LongStorage", "HalfStorage"):
        cls = type(name, (), {"__module__": "torch"})
        setattr(torch, name, cls)
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


class _Storage:
    def __init__(self, key, cls, array):
        self.key, self.cls, self.array = key, cls, np.ascontiguousarray(array).ravel()


class _Tensor:
    def __init__(self, storage, offset, size, stride, parameter=False):
        self.storage, self.offset, self.size, self.stride, self.parameter = storage, offset, size, stride, parameter

    def __reduce_ex__(self, proto):
        utils = sys.modules["torch._utils"]
        t = (utils._rebuild_tensor_v2,
             (self.storage, self.offset, tuple(self.size), tuple(self.stride), False, collections.OrderedDict()))
        if self.parameter:  # nn.Parameter pickles as _rebuild_parameter(<tensor>, requires_grad, hooks)
            return (utils._rebuild_parameter, (_Rebuilt(t), False, collections.OrderedDict()))
        return t


class _Rebuilt:
    def __init__(self, reduced):
        self.reduced = reduced

    def __reduce_ex__(self, proto):
        return self.reduced


def _tensor(key, torch, array, parameter=False, dtype="FloatStorage"):
    a = np.ascontiguousarray(array).reshape(array.shape)  # 0-d stays 0-d
    st = _Storage(key, getattr(torch, dtype), a)
    return _Tensor(st, 0, a.shape, tuple(s // a.itemsize for s in a.strides), parameter)


def write_checkpoint(path: Path, obj, fmt: str) -> Path:
    storages: dict[str, _Storage] = {}

    class P(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, _Storage):
                storages[o.key] = o
                rec = ("storage", o.cls, o.key, "cpu", o.array.size)
                return rec if fmt == "zip" else rec + (None,)
            return None

    buf = io.BytesIO()
    P(buf, protocol=2).dump(obj)
    if fmt == "zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr("archive/data.pkl", buf.getvalue())
            zf.writestr("archive/byteorder", "little")
            for key, st in storages.items():
                zf.writestr(f"archive/data/{key}", st.array.astype(st.array.dtype.newbyteorder("<")).tobytes())
            zf.writestr("archive/version", "3\n")
        return path
    out = io.BytesIO()
    for header in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"protocol_version": 1001, "little_endian": True,
                                                   "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(header, out, protocol=2)
    out.write(buf.getvalue())
    keys = list(storages)
    pickle.dump(keys, out, protocol=2)
    for key in keys:
        st = storages[key]
        out.write(struct.pack("<q", st.array.size))
        out.write(st.array.tobytes())
    path.write_bytes(out.getvalue())
    return path


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_roundtrip_tensors_views_and_dtypes(tmp_path, fake_torch, fmt):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    shared = _Storage("7", fake_torch.FloatStorage, np.arange(20, dtype=np.float32))
    state = collections.OrderedDict()
    state["conv.weight"] = _tensor("0", fake_torch, w)
    state["fc.weight_t"] = _Tensor(shared, 2, (3, 4), (1, 3))  # non-contiguous view (a transpose)
    state["fc.bias"] = _Tensor(shared, 14, (5,), (1,))  # second tensor in the same storage
    state["bn.num_batches_tracked"] = _tensor("1", fake_torch, np.array(7, dtype=np.int64), dtype="LongStorage")
    state["half"] = _tensor("2", fake_torch, np.array([1.5, -2.0], dtype=np.float16), dtype="HalfStorage")
    state["param"] = _tensor("3", fake_torch, w * 2, parameter=True)
    path = write_checkpoint(tmp_path / f"ck.{fmt}.pth", state, fmt)

    got = load_state_dict(path)
    assert list(got) == list(state)
    np.testing.assert_array_equal(got["conv.weight"], w)
    np.testing.assert_array_equal(got["fc.weight_t"], np.arange(20, dtype=np.float32)[2:14].reshape(4, 3).T)
    assert got["fc.weight_t"].flags.c_contiguous
    np.testing.assert_array_equal(got["fc.bias"], np.arange(14, 19, dtype=np.float32))
    assert got["bn.num_batches_tracked"].dtype == np.int64 and int(got["bn.num_batches_tracked"]) == 7
    np.testing.assert_array_equal(got["half"], np.array([1.5, -2.0], dtype=np.float16))
    np.testing.assert_array_equal(got["param"], w * 2)


def test_reads_the_shipped_efficientnet_checkpoint():
    from hotdog.efficientnet import torch_checkpoint_path

    state = load_state_dict(torch_checkpoint_path())
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert "_blocks.16._project_conv.weight" not in state
    assert all(np.isfinite(v).all() for v in state.values() if v.dtype.kind == "f")


# ------------------------------------------------------------------ hostile and broken files

class _System:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _Exec:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return (builtins.exec, (self.code,))


def _payloads(marker: Path):
    return {
        "os.system": _System(f"touch {marker}"),
        "builtins.exec": _Exec(f"open({str(marker)!r}, 'w').write('pwned')"),
    }


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
@pytest.mark.parametrize("kind", ["os.system", "builtins.exec"])
def test_malicious_pickle_is_refused_without_running(tmp_path, fake_torch, fmt, kind):
    marker = tmp_path / "pwned"
    payload = _payloads(marker)[kind]
    state = collections.OrderedDict(weight=_tensor("0", fake_torch, np.ones(3, np.float32)), evil=payload)
    path = write_checkpoint(tmp_path / "evil.pth", state, fmt)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_state_dict(path)
    assert "not executed" in str(info.value)
    assert not marker.exists()


def test_malicious_legacy_header_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    pickle.dump(_System(f"touch {marker}"), buf, protocol=2)
    path = tmp_path / "evil.pth"
    path.write_bytes(buf.getvalue())
    with pytest.raises(UnsafeCheckpointError):
        load_state_dict(path)
    assert not marker.exists()


def test_other_torch_globals_are_refused(tmp_path, fake_torch):
    # torch.load itself would happily call e.g. torch.storage._load_from_bytes (a nested
    # torch.load) or any importable callable; only the rebuild functions are allowed here.
    def _load_from_bytes(b):
        raise AssertionError

    storage_mod = types.ModuleType("torch.storage")
    _load_from_bytes.__module__, _load_from_bytes.__qualname__ = "torch.storage", "_load_from_bytes"
    storage_mod._load_from_bytes = _load_from_bytes
    sys.modules["torch.storage"] = storage_mod
    try:
        class Nested:
            def __reduce__(self):
                return (_load_from_bytes, (b"x",))

        path = write_checkpoint(tmp_path / "nested.pth", {"w": Nested()}, "zip")
    finally:
        del sys.modules["torch.storage"]
    with pytest.raises(UnsafeCheckpointError, match="torch.storage._load_from_bytes"):
        load_state_dict(path)


def test_truncated_and_garbage_checkpoints_give_model_error(tmp_path):
    from hotdog.efficientnet import torch_checkpoint_path

    data = torch_checkpoint_path().read_bytes()
    for name, blob in {"truncated": data[: len(data) // 2], "header-only": data[:200],
                       "garbage": b"\x00" * 1000, "empty": b""}.items():
        path = tmp_path / f"{name}.pth"
        path.write_bytes(blob)
        with pytest.raises(ModelError):
            load_state_dict(path)
    with pytest.raises(ModelError, match="cannot read"):
        load_state_dict(tmp_path / "missing.pth")
