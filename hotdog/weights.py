"""Loading MXNet ``.params`` files with errors meant for people (below both
:mod:`hotdog.efficientnet` and :mod:`hotdog.models`, so neither imports the other for it)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hotdog.errors import ModelError


def load_params_file(net, path: str | os.PathLike, ctx=None) -> None:
    """``net.load_parameters`` that turns a missing, empty, truncated, mismatched or
    non-finite file into one ModelError sentence (never a traceback in the message)."""
    import mxnet as mx

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"parameter file not found: {path.name}")
    try:
        net.load_parameters(str(path), ctx=ctx or mx.cpu())
    except (mx.base.MXNetError, AssertionError, ValueError, KeyError, OSError, RuntimeError, IndexError) as err:
        raise ModelError(
            f"cannot load parameters from {path.name}: the file is corrupted, truncated or belongs to "
            f"another model ({first_line(err)})") from err
    # .params files carry no checksum; flipped exponent bits show up as inf/NaN weights.
    for p in net.collect_params().values():
        if p._data is not None and not np.isfinite(p.data().asnumpy()).all():
            raise ModelError(f"parameter file {path.name} holds non-finite values in {p.name} (file corrupted?)")


def first_line(err: BaseException, limit: int = 200) -> str:
    """The most telling line of an MXNet error: its text holds a C++ stack trace whose first
    line is often "Traceback (most recent call last):"; the last non-empty line that is not
    part of the trace says what went wrong."""
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if not ln.startswith(("File ", "[bt]", "Traceback", "Stack trace", "  ")) and not ln[:1].isdigit():
            return ln[:limit]
    return type(err).__name__
