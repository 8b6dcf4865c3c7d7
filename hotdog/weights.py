"""Loading MXNet ``.params`` files with errors meant for people (below both
:mod:`hotdog.efficientnet` and :mod:`hotdog.models`, so neither imports the other for it)."""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np

from hotdog.errors import ModelError


# Who hears about a weights conversion (a run reports it as its "convert" start-up phase):
# a ContextVar, so a conversion in one thread never reports into another thread's run.
_CONVERSION_LISTENER: contextvars.ContextVar[Callable[[int], None] | None] = contextvars.ContextVar(
    "hotdog_conversion_listener", default=None)


@contextlib.contextmanager
def on_conversion(listener: Callable[[int], None]):
    """Within this block, a weights conversion calls ``listener(0)`` before and ``listener(1)``
    after it runs (nothing is called when the converted weights are already cached)."""
    token = _CONVERSION_LISTENER.set(listener)
    try:
        yield
    finally:
        _CONVERSION_LISTENER.reset(token)


def report_conversion(done: int) -> None:
    listener = _CONVERSION_LISTENER.get()
    if listener is not None:
        listener(done)


class ParamsFileError(ModelError):
    """A ``.params`` file cannot be loaded: ``reason`` is what is wrong with it, one clause
    without the file's name or folder ("the file is corrupted, truncated or ...")."""

    def __init__(self, file: str, reason: str):
        self.file, self.reason = file, reason
        super().__init__(f"cannot load parameters from {file}: {reason}")


def load_params_file(net, path: str | os.PathLike, ctx=None) -> None:
    """``net.load_parameters`` that turns a missing, empty, truncated, mismatched or
    non-finite file into one ParamsFileError sentence (never a traceback or a folder in it)."""
    import mxnet as mx

    path = Path(path)
    if not path.is_file():
        raise ParamsFileError(path.name, "the file is missing")
    check_params_file(path)
    try:
        net.load_parameters(str(path), ctx=ctx or mx.cpu())
    except Exception as err:  # noqa: BLE001 - whatever a damaged file makes MXNet raise
        detail = first_line(err, hide=path)
        raise ParamsFileError(path.name, "the file is corrupted, truncated or belongs to another model"
                              + (f" ({detail})" if detail else "")) from err
    # .params files carry no checksum; flipped exponent bits show up as inf/NaN weights.
    for p in net.collect_params().values():
        if p._data is not None and not np.isfinite(p.data().asnumpy()).all():
            raise ParamsFileError(path.name, f"the file holds non-finite values in {p.name} (corrupted?)")


# MXNet's NDArray list format (src/ndarray/ndarray.cc, NDArray::Save): a list header, then
# per array a magic, storage type, shape, context, dtype and the raw data, then the names.
_LIST_MAGIC = 0x112
_ARRAY_MAGICS = (0xF993FAC9, 0xF993FACA)  # V2, V3 (numpy shape semantics)
_V1_MAGIC = 0xF993FAC8
_DTYPE_SIZES = {0: 4, 1: 8, 2: 2, 3: 1, 4: 4, 5: 1, 6: 8, 7: 1, 12: 2}
_MAX_NDIM = 32


def check_params_file(path: str | os.PathLike) -> None:
    """Refuse a ``.params`` file whose declared arrays do not fit in it, before MXNet reads it.

    MXNet allocates each array at its declared shape before reading the data, so a damaged
    shape field (a flipped bit, garbage after the header) made it allocate ~16 GB and spend
    half a minute before failing. Only what the format says for sure is checked: what this
    reader does not follow (sparse arrays, empty arrays in old layouts) is left to MXNet."""
    import struct

    path = Path(path)

    def bad(detail: str):
        raise ParamsFileError(path.name, f"the file is corrupted, truncated or belongs to another model ({detail})")

    try:
        size = path.stat().st_size
        fh = open(path, "rb")
    except OSError as err:
        raise ParamsFileError(path.name, f"the file cannot be read ({err.strerror or type(err).__name__})") from None
    with fh:
        def take(fmt: str):
            n = struct.calcsize(fmt)
            raw = fh.read(n)
            if len(raw) != n:
                bad(f"it ends after {size} bytes, in the middle of its header")
            return struct.unpack(fmt, raw)[0]

        if size == 0:
            bad("it is empty")
        if take("<Q") != _LIST_MAGIC or take("<Q") != 0:
            bad("it does not start like an MXNet parameter file")
        count = take("<Q")
        if count > size:
            bad(f"it claims {count} arrays in {size} bytes")
        for i in range(count):
            magic = take("<I")
            if magic in _ARRAY_MAGICS:
                if take("<i") != 0:
                    return  # a sparse array: left to MXNet
                ndim, dim_fmt = take("<i"), "<q"
                if ndim < 0 or (ndim == 0 and magic == _ARRAY_MAGICS[0]):
                    continue  # an empty array: no data follows
            elif magic == _V1_MAGIC:
                ndim, dim_fmt = take("<i"), "<q"
            else:
                ndim, dim_fmt = magic, "<I"  # the oldest layout: the magic is the number of dimensions
            if ndim > _MAX_NDIM:
                bad(f"array {i + 1} claims {ndim} dimensions")
            if ndim <= 0:
                return  # an empty array in an old layout: left to MXNet
            dims = [take(dim_fmt) for _ in range(ndim)]
            if any(d < 0 for d in dims):
                bad(f"array {i + 1} has a negative dimension")
            take("<i"), take("<i")  # context: device type and id
            dtype = take("<i")
            if dtype not in _DTYPE_SIZES:
                bad(f"array {i + 1} has an unknown data type {dtype}")
            nbytes = _DTYPE_SIZES[dtype]
            for d in dims:
                nbytes *= d
            left = size - fh.tell()
            if nbytes > left:
                bad(f"array {i + 1} needs {nbytes} bytes but only {left} are left; truncated?")
            fh.seek(nbytes, os.SEEK_CUR)


_TRACE_LINE = re.compile(r"^(File |\[bt\]|Traceback|Stack trace|\d)|Traceback \(most recent call last\)")


def first_line(err: BaseException, limit: int = 200, hide: str | os.PathLike | None = None) -> str:
    """The most telling line of an MXNet error: its text holds a C++ stack trace whose first
    line is often "Traceback (most recent call last):"; the last non-empty line that is not
    part of the trace says what went wrong. ``hide``: a file whose folder must not show
    (MXNet quotes the full path it was given); only its name remains."""
    text = str(err)
    if hide is not None:
        hide = Path(hide)
        for form in {str(hide), str(hide.absolute()), str(hide.resolve())}:
            text = text.replace(form, hide.name)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if not _TRACE_LINE.search(ln):
            return ln[:limit]
    return type(err).__name__
