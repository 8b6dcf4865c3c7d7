"""Which server folders a user may point the app at.

The app's "local folder" is typed by whoever can reach the server, so it is confined to the
*allowed roots*:

* ``$HOTDOG_HOME/data`` (installed and downloaded data sets),
* ``$HOTDOG_DATA`` (the data set folder the administrator offers first), and
* every folder in ``$HOTDOG_DATA_ROOTS``, separated by ``os.pathsep`` (':' on Linux/macOS,
  ';' on Windows), e.g. ``HOTDOG_DATA_ROOTS=/srv/photos:/mnt/datasets``. Relative entries
  are ignored (they would depend on the server's working folder).

``resolve_user_folder`` follows symbolic links before checking, so a link inside an allowed
root cannot lead out of it; its refusal names no server path and reads the same whether the
folder exists or not. Inside a data set, discovery does not follow links that leave the
allowed roots (and the data set itself): see ``within`` and ``hotdog.data.images.scan_folder``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

from hotdog.data.names import display_path
from hotdog.errors import AccessError, DatasetError
from hotdog.paths import data_root, links_anywhere

log = logging.getLogger(__name__)

ENV_DATA = "HOTDOG_DATA"
ENV_DATA_ROOTS = "HOTDOG_DATA_ROOTS"

REFUSED = (
    "That folder cannot be used: the app only reads data sets from the data folders this "
    "server shares (its own data folder, HOTDOG_DATA and the folders listed in "
    "HOTDOG_DATA_ROOTS). Install the data set as a zip, or ask the administrator to put it "
    "in a shared data folder."
)


def _real(p: str | os.PathLike) -> Path:
    return Path(os.path.realpath(p))


def allowed_roots(home: str | os.PathLike | None = None) -> list[Path]:
    """The folders user-chosen data sets must be inside, symlinks resolved, without
    duplicates: ``data_root(home)``, ``$HOTDOG_DATA``, then each ``$HOTDOG_DATA_ROOTS`` entry."""
    wanted: list[Path] = [data_root(home)]
    env_data = os.environ.get(ENV_DATA, "").strip()
    if env_data:
        wanted.append(Path(env_data).expanduser())
    for entry in os.environ.get(ENV_DATA_ROOTS, "").split(os.pathsep):
        entry = entry.strip()
        if not entry:
            continue
        p = Path(entry).expanduser()
        if not p.is_absolute():
            log.warning("%s: ignoring the relative entry %r (use absolute folders)", ENV_DATA_ROOTS, entry)
            continue
        wanted.append(p)
    roots: list[Path] = []
    for p in wanted:
        try:
            real = _real(p.expanduser() if p.is_absolute() else p.expanduser().absolute())
        except (OSError, ValueError, RuntimeError):  # NUL bytes, unknown ~user
            continue
        if real not in roots:
            roots.append(real)
    return roots


def within(path: str | os.PathLike, bounds: Iterable[Path]) -> bool:
    """True when ``path``, symlinks resolved, is one of ``bounds`` or inside one (``bounds``
    must already be resolved, e.g. from ``allowed_roots``)."""
    try:
        real = _real(path)
    except (OSError, ValueError):
        return False
    return any(real == b or real.is_relative_to(b) for b in bounds)


def link_bounds(folder: str | os.PathLike, home=None) -> list[Path]:
    """Where symlinks found while reading ``folder`` may point: the allowed roots and the
    folder itself (so a data set anywhere keeps its internal links); anywhere for the
    command line's local user (:func:`local_user`)."""
    if links_anywhere():
        return [Path(os.sep)]
    return allowed_roots(home) + [_real(folder)]


def resolve_user_folder(text: str, home: str | os.PathLike | None = None) -> Path:
    """The data set folder a user typed, resolved (symlinks followed), if it is inside an
    allowed root; else ``AccessError`` with a sentence that names no server path and does
    not reveal whether the folder exists.

    ``~`` is expanded; a relative path is taken inside ``$HOTDOG_HOME/data`` ("hotdog" is
    the installed hot dog set). Inside the allowed roots, a missing folder or a file is a
    ``DatasetError`` naming the path relative to its root.
    """
    if not isinstance(text, (str, os.PathLike)):
        raise AccessError(REFUSED)
    raw = os.fspath(text).strip() if isinstance(text, str) else os.fspath(text)
    if not raw:
        raise DatasetError("type the folder of a data set (one holding train/ and test/, or class folders)")
    try:
        p = Path(raw).expanduser()
        if not p.is_absolute():
            p = data_root(home) / p
        real = _real(p)
    except (OSError, ValueError, RuntimeError):  # NUL byte, '~nosuchuser', ...
        raise AccessError(REFUSED) from None
    for root in allowed_roots(home):
        if real == root or real.is_relative_to(root):
            shown = display_path(real.relative_to(root))
            try:
                is_dir = real.is_dir()
                exists = is_dir or real.exists()
            except OSError as err:
                raise DatasetError(f"the folder '{shown}' cannot be read ({err.strerror or 'error'})") from None
            if not exists:
                raise DatasetError(f"there is no folder '{shown}' in the shared data folders")
            if not is_dir:
                raise DatasetError(f"'{shown}' is a file, not a folder")
            return real
    raise AccessError(REFUSED)
