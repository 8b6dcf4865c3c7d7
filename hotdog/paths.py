"""Where Hotdog Lab keeps things on disk.

Everything lives under one root, ``HOTDOG_HOME`` (default ``~/.hotdog``), so a test or a
second user can point the whole app somewhere else with one environment variable.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from pathlib import Path


def hotdog_home(override: str | os.PathLike | None = None) -> Path:
    if override is not None:
        return Path(override).expanduser()
    return Path(os.environ.get("HOTDOG_HOME", "~/.hotdog")).expanduser()


def data_root(home: str | os.PathLike | None = None) -> Path:
    """Folder that holds installed data sets (``<home>/data/<name>``)."""
    return hotdog_home(home) / "data"


def runs_root(home: str | os.PathLike | None = None) -> Path:
    return hotdog_home(home) / "runs"


def cache_root(home: str | os.PathLike | None = None) -> Path:
    """Converted weights and other derived files that can always be rebuilt."""
    return hotdog_home(home) / "cache"


# The command line is a local user on their own machine: links in their data sets lead
# wherever they like. A ContextVar (not a global flag) so the app's threads never see it.
_LINKS_ANYWHERE: contextvars.ContextVar[bool] = contextvars.ContextVar("hotdog_links_anywhere", default=False)


@contextlib.contextmanager
def local_user():
    """Within this block (the CLI), symlinks inside data sets are followed wherever they lead."""
    token = _LINKS_ANYWHERE.set(True)
    try:
        yield
    finally:
        _LINKS_ANYWHERE.reset(token)


def links_anywhere() -> bool:
    """True inside :func:`local_user` (the command line)."""
    return _LINKS_ANYWHERE.get()
