"""Where Hotdog Lab keeps things on disk.

Everything lives under one root, ``HOTDOG_HOME`` (default ``~/.hotdog``), so a test or a
second user can point the whole app somewhere else with one environment variable.
"""

from __future__ import annotations

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
