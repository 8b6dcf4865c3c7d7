"""Choices the app remembers across reloads, tabs and restarts (``HOTDOG_HOME/prefs.json``).

A browser session forgets everything on reload; what a user chose once (the data set, the
interface language) should not have to be chosen again. One small JSON object, written
atomically under a lock, so two tabs saving at once never leave a torn file. A damaged or
unreadable file reads as "nothing remembered" (never an error page): these are conveniences.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hotdog.fileio import atomic_write_json, file_lock, read_json
from hotdog.paths import hotdog_home

log = logging.getLogger(__name__)

# Known keys and the type each must have; anything else in the file is ignored on read.
KEYS: dict[str, type] = {
    "data_root": str,  # absolute path of the chosen data set
    "language": str,   # "en" or "vi"
}


def prefs_path(home: str | os.PathLike | None = None) -> Path:
    return hotdog_home(home) / "prefs.json"


def load(home: str | os.PathLike | None = None) -> dict[str, Any]:
    """Every remembered choice of a known key and type; {} when none or the file is damaged."""
    path = prefs_path(home)
    try:
        raw = read_json(path)
    except FileNotFoundError:
        return {}
    except Exception as err:  # noqa: BLE001 - a damaged prefs file must not take a page down
        log.warning("ignoring unreadable %s: %s", path, err)
        return {}
    if not isinstance(raw, dict):
        return {}
    return {k: v for k, v in raw.items() if k in KEYS and isinstance(v, KEYS[k])}


def get(key: str, default: Any = None, home: str | os.PathLike | None = None) -> Any:
    return load(home).get(key, default)


def save(key: str, value: Any, home: str | os.PathLike | None = None) -> None:
    """Remember ``key`` (``None`` forgets it). Raises ValueError for an unknown key or type."""
    if key not in KEYS:
        raise ValueError(f"unknown preference {key!r}")
    if value is not None and not isinstance(value, KEYS[key]):
        raise ValueError(f"preference {key!r} must be a {KEYS[key].__name__}, not {value!r}")
    path = prefs_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_suffix(".lock"), timeout=10.0):
        current = load(home)
        if value is None:
            current.pop(key, None)
        else:
            current[key] = value
        atomic_write_json(path, current)
