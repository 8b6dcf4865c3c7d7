"""Names that come from users' disks and zips: how they are shown, which ones are accepted.

On Linux a file name is bytes; Python shows bytes that are not UTF-8 as lone surrogates
(``'caf\\udce9'``), which crash whatever later encodes them (JSON, Streamlit, logs). So:

* ``display_name`` is the one way a user-supplied name is put into a message: invalid bytes
  and control characters are shown escaped (``caf\\xe9``, ``abc\\n``), never raw.
* ``name_problem`` says why a name cannot be used as a class folder (not UTF-8, control
  characters); discovery refuses such class folders and skips such files.
* ``check_dataset_name`` is the one rule for data set names, whether typed (``--name``, the
  Data page) or taken from a zip's file name (``dataset_name_from_file``).
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

from hotdog.errors import DatasetError

MAX_DATASET_NAME = 64

# One folder name: starts with a letter or digit (never hidden, never an option-like '-x'),
# then word characters, spaces and a little punctuation; never a path separator, no
# trailing dot or space (Windows and Finder mangle them). fullmatch, not ``$``: ``$``
# also matches before a trailing newline, which let ``'abc\n'`` through.
_DATASET_NAME = re.compile(r"[^\W_][\w .()+-]*")


def _is_control(ch: str) -> bool:
    # Cc: C0/C1 controls (newline, tab, ESC...); Cf: invisible format characters such as
    # the right-to-left override, which make a name display as something else.
    return unicodedata.category(ch) in ("Cc", "Cf")


def display_name(name: str | os.PathLike) -> str:
    """``name`` safe to show: bytes that are not UTF-8 and control characters escaped
    (``caf\\xe9``, ``abc\\n``); an ordinary name is returned unchanged."""
    text = os.fsdecode(name) if not isinstance(name, str) else name
    text = os.fsencode(text).decode("utf-8", "backslashreplace") if _has_surrogates(text) else text
    if not any(_is_control(c) for c in text):
        return text
    return "".join(c.encode("unicode_escape").decode("ascii") if _is_control(c) else c for c in text)


def display_path(path: Path) -> str:
    """A relative path for messages, every part escaped by ``display_name``; '/' separated."""
    return "/".join(display_name(part) for part in path.parts) or "."


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= c <= "\udcff" for c in text)


def name_problem(name: str) -> str | None:
    """None for a name that can be shown and stored everywhere, else why not."""
    if _has_surrogates(name):
        return "its name is not valid UTF-8"
    if any(_is_control(c) for c in name):
        return "its name contains control characters"
    return None


def check_dataset_name(name: str) -> str:
    """``name`` when it may name an installed data set, else ``DatasetError`` saying why.

    Letters (any script), digits, spaces, '.', '_', '-', '(', ')' and '+'; 1 to 64
    characters; starting with a letter or digit; not ending with a dot or a space.
    """
    if not isinstance(name, str):
        raise DatasetError(f"a data set name must be text, not {type(name).__name__}")
    shown = display_name(name)
    problem = name_problem(name)
    if problem is not None:
        raise DatasetError(f"data set name '{shown}' is not allowed: {problem}")
    if not name:
        raise DatasetError("the data set name is empty: type a name such as 'pets'")
    if len(name) > MAX_DATASET_NAME:
        raise DatasetError(f"data set name '{shown[:20]}'... is not allowed: it has {len(name)} characters, "
                           f"more than the limit of {MAX_DATASET_NAME}")
    if not _DATASET_NAME.fullmatch(name) or name.endswith((" ", ".")):
        raise DatasetError(
            f"data set name '{shown}' is not allowed: use letters, digits, spaces, '.', '_', '-', '(', ')' "
            f"or '+' (at most {MAX_DATASET_NAME} characters, starting with a letter or digit, "
            "not ending with a dot or a space)"
        )
    return name


def dataset_name_from_file(filename: str) -> str:
    """A name ``check_dataset_name`` accepts, from an uploaded zip's file name
    ('photos (1).zip' -> 'photos-1'; nothing usable -> 'dataset')."""
    stem = Path(os.fsdecode(filename)).stem
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem)[:MAX_DATASET_NAME].strip("-._")
    try:
        return check_dataset_name(name)
    except DatasetError:
        return "dataset"
