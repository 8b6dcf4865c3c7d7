"""Finding a data set on disk: the folder rule and the split rule.

Layouts: ``train/<class>/*`` + ``test/<class>/*`` ("split"), or ``<class>/*`` ("flat",
split here by a seeded, stratified hold-out). ``find_dataset_root`` is the one rule for
looking through wrapper folders (a zip's ``hotdog/train/...``); which files count is
decided by ``hotdog.data.images`` (content, not extension).
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from hotdog.data.access import link_bounds
from hotdog.data.images import (
    DEFAULT_MAX_PIXELS,
    FolderUnreadable,
    entry_kind,
    is_hidden,
    list_entries,
    os_reason,
    scan_folder,
)
from hotdog.data.names import display_name, display_path, name_problem
from hotdog.errors import DatasetError
from hotdog.paths import data_root

_SPLITS = ("train", "test")


@dataclass
class DatasetSplits:
    root: Path
    classes: list[str]
    train: list[tuple[Path, int]]
    test: list[tuple[Path, int]]
    layout: str  # 'split' | 'flat'
    # Carved from train for choosing the best epoch (carve_validation); empty otherwise.
    val: list[tuple[Path, int]] = field(default_factory=list)


@dataclass
class DatasetReport:
    root: str
    layout: str
    classes: list[str]
    counts: dict[str, dict[str, int]]
    skipped: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def total(self) -> int:
        return sum(n for split in self.counts.values() for n in split.values())


class _Walk:
    """One discovery: the data set root messages are relative to, where links may lead,
    and the entries skipped on the way (shown relative to ``root`` only, escaped)."""

    def __init__(self, root: Path, bounds: list[Path]):
        self.root = root
        self.bounds = bounds
        self.skipped: list[dict[str, str]] = []

    def rel(self, p: Path) -> str:
        try:
            return display_path(p.relative_to(self.root))
        except ValueError:  # pragma: no cover - every path walked is under root
            return display_name(p.name)

    def where(self, folder: Path) -> str:
        return "the data set folder" if folder == self.root else f"the folder '{self.rel(folder)}'"

    def entries(self, folder: Path) -> list[Path]:
        try:
            return list_entries(folder)
        except FolderUnreadable as err:
            raise DatasetError(f"{self.where(folder)} cannot be read ({err.reason})") from None

    def dirs(self, folder: Path) -> list[Path]:
        """Visible sub-folders of ``folder``; links leading outside are skipped with a
        reason, folders with unusable names refused (they would become class names)."""
        out = []
        for p in self.entries(folder):
            kind, why = entry_kind(p, self.bounds)
            if kind == "dir":
                out.append(p)
            elif kind == "skip":
                if name_problem(p.name) is not None and _is_dir_quietly(p):
                    raise DatasetError(
                        f"the folder '{self.rel(p)}' cannot be used as a class: {name_problem(p.name)}; "
                        "rename it (e.g. to plain letters and digits)"
                    )
                self.skipped.append({"path": self.rel(p), "reason": why or "skipped"})
        return out


def _is_dir_quietly(p: Path) -> bool:
    try:
        return p.is_dir() and not p.is_symlink()
    except OSError:
        return False


def find_dataset_root(folder: str | os.PathLike, max_depth: int = 8) -> Path:
    """The data set folder inside ``folder``, looking through wrapper folders.

    A folder whose only visible entry is a sub-folder that itself holds folders is a
    wrapper (``mydata/train/...``, ``mydata/cat/...``): the search goes into it. It stops
    at a ``train``/``test`` folder (that is the data set's own level) and at a lone folder
    of files (a single class, which validation then reports as such). Links leading out of
    the shared data folders (and ``folder``) are never followed.
    """
    cur = Path(folder)
    walk = _Walk(cur, link_bounds(cur))
    for _ in range(max_depth):
        visible = walk.entries(cur)
        if len(visible) != 1 or entry_kind(visible[0], walk.bounds)[0] != "dir" or visible[0].name in _SPLITS:
            break
        if not walk.dirs(visible[0]):
            break
        cur = visible[0]
    return cur


@dataclass
class _Scan:
    files: dict[str, list[Path]]  # class -> good files


def _scan_classes(walk: _Walk, folder: Path, classes: list[str], max_pixels: int, notes: list[str]) -> _Scan:
    files: dict[str, list[Path]] = {}
    for cls in classes:
        cdir = folder / cls
        try:
            scan = scan_folder(cdir, max_pixels, walk.bounds)
        except FolderUnreadable as err:
            raise DatasetError(
                f"the class folder '{walk.rel(cdir)}' cannot be read ({err.reason}); fix its permissions "
                "or move it out of the data set"
            ) from None
        files[cls] = scan.images
        walk.skipped += [{"path": walk.rel(p), "reason": why} for p, why in scan.rejected]
        if scan.folders:
            notes.append(f"{walk.rel(cdir)} has {len(scan.folders)} sub-folder(s); "
                         "images in sub-folders are ignored")
    return _Scan(files)


def _require_classes(classes: list[str], where: str) -> None:
    if len(classes) < 2:
        found = f"only '{display_name(classes[0])}'" if classes else "none"
        raise DatasetError(
            f"{where} needs at least 2 class folders (one per label, e.g. hotdog/ and not-hotdog/); found {found}"
        )


def _require_nonempty(walk: _Walk, files: dict[str, list[Path]], where: Path) -> None:
    for cls, items in files.items():
        if not items:
            raise DatasetError(f"class '{display_name(cls)}' has no readable images (in {walk.where(where)})")


def _split_layout(walk: _Walk, tops: dict[str, Path], max_pixels: int):
    train_classes = [p.name for p in walk.dirs(tops["train"])]
    test_classes = [p.name for p in walk.dirs(tops["test"])]
    _require_classes(train_classes, "The folder 'train'")
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        parts = []
        if only_train:
            parts.append(f"only in train: {', '.join(only_train)}")
        if only_test:
            parts.append(f"only in test: {', '.join(only_test)}")
        raise DatasetError(f"train and test have different class folders ({'; '.join(parts)})")
    notes: list[str] = []
    extra = sorted(set(tops) - set(_SPLITS))
    if extra:
        notes.append(f"ignored folder(s) next to train/ and test/: {', '.join(extra)}")
    scans = {split: _scan_classes(walk, tops[split], train_classes, max_pixels, notes) for split in _SPLITS}
    for split, sc in scans.items():
        _require_nonempty(walk, sc.files, tops[split])
    files = {split: sc.files for split, sc in scans.items()}
    return train_classes, files, notes


def _flat_layout(walk: _Walk, base: Path, test_ratio: float, seed: int, max_pixels: int):
    classes = [p.name for p in walk.dirs(base)]
    where = walk.where(base)
    _require_classes(classes, where[0].upper() + where[1:])
    notes: list[str] = []
    sc = _scan_classes(walk, base, classes, max_pixels, notes)
    _require_nonempty(walk, sc.files, base)
    files: dict[str, dict[str, list[Path]]] = {"train": {}, "test": {}}
    for cls in classes:
        files["train"][cls], files["test"][cls] = _hold_out(sc.files[cls], test_ratio, f"{seed}:{cls}")
        if test_ratio > 0 and not files["test"][cls]:
            notes.append(f"class {cls!r} has only {len(sc.files[cls])} image(s); none held out for test")
    return classes, files, notes


def _hold_out(items, ratio: float, key: str) -> tuple[list, list]:
    """(kept, held out) of one class's items, both sorted: a seeded shuffle per class
    (stratified, and adding a class never reshuffles another), ``ratio`` of them held out,
    at least one when there are two or more, never all of them."""
    items = list(items)
    random.Random(key).shuffle(items)
    n = int(round(len(items) * ratio))
    if ratio > 0 and n == 0 and len(items) >= 2:
        n = 1
    n = min(n, len(items) - 1)
    return sorted(items[n:]), sorted(items[:n])


def carve_validation(splits: DatasetSplits, fraction: float, seed: int) -> DatasetSplits:
    """``splits`` with ``fraction`` of each class of its *training* split moved to ``val``
    (seeded, stratified, like the flat layout's test split); the test split is untouched,
    so nothing is ever chosen on it. ``fraction`` 0 returns ``splits`` as they are. A class
    with fewer than 2 training photos cannot give one up: DatasetError."""
    if not fraction:
        return splits
    train, val = [], []
    for label, cls in enumerate(splits.classes):
        mine = [p for p, lab in splits.train if lab == label]
        if len(mine) < 2:
            raise DatasetError(f"class '{display_name(cls)}' has {len(mine)} training photo(s): too few to hold "
                               "some out for validation (set the validation fraction to 0)")
        kept, held = _hold_out(mine, fraction, f"val:{seed}:{cls}")
        train += [(p, label) for p in kept]
        val += [(p, label) for p in held]
    return replace(splits, train=train, val=val)


def _discover(root: str | os.PathLike, test_ratio: float, seed: int, max_pixels: int):
    """Messages name paths relative to the data set only: ``root`` may be any server
    folder (the app confines it first with ``resolve_user_folder``), and what the user sees
    must never map the server's disk."""
    given = Path(root).expanduser()
    label = display_name(given.name) or "/"
    try:
        if not given.exists():
            raise DatasetError(f"data set folder '{label}' does not exist")
        if not given.is_dir():
            raise DatasetError(f"'{label}' is not a folder")
    except OSError as err:
        raise DatasetError(f"data set folder '{label}' cannot be read ({os_reason(err)})") from None
    if not 0.0 <= float(test_ratio) < 1.0:
        raise DatasetError(f"test ratio must be in [0, 1), got {test_ratio}")
    bounds = link_bounds(given)
    root = find_dataset_root(given)
    walk = _Walk(root, bounds)
    notes = [] if root == given else [f"using {display_path(root.relative_to(given))}/, the only folder inside "
                                      f"{label}"]
    tops = {p.name: p for p in walk.dirs(root)}
    if "train" in tops and "test" in tops:
        classes, files, more = _split_layout(walk, tops, max_pixels)
        return root, "split", classes, files, walk.skipped, notes + more
    base = root
    if "train" in tops and len(tops) == 1:
        base = tops["train"]
        notes.append("found train/ but no test/: splitting train/ by the test ratio")
    elif "test" in tops and len(tops) == 1:
        raise DatasetError("the data set has a test/ folder but no train/ folder")
    classes, files, more = _flat_layout(walk, base, test_ratio, seed, max_pixels)
    return root, "flat", classes, files, walk.skipped, notes + more


def load_splits(root, test_ratio: float = 0.2, seed: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS) -> DatasetSplits:
    """Discover a data set; files whose header is unreadable are left out (see validate_dataset)."""
    root, layout, classes, files, _skipped, _notes = _discover(root, test_ratio, seed, max_pixels)
    items = {
        split: [(p, i) for i, cls in enumerate(classes) for p in files[split][cls]] for split in _SPLITS
    }
    return DatasetSplits(root=root, classes=classes, train=items["train"], test=items["test"], layout=layout)


def validate_dataset(root, test_ratio: float = 0.2, seed: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS) -> DatasetReport:
    """Counts per split and class plus the files that will be skipped and why.

    Only image headers are read (fast even for thousands of photos); a file whose pixel
    data is corrupt is caught later by ``decode_image`` / ``ImageListDataset.preload``.
    """
    root, layout, classes, files, skipped, notes = _discover(root, test_ratio, seed, max_pixels)
    counts = {split: {cls: len(files[split][cls]) for cls in classes} for split in _SPLITS}
    return DatasetReport(root=str(root), layout=layout, classes=classes, counts=counts, skipped=skipped, warnings=notes)


def installed_datasets(home=None) -> list[Path]:
    """Installed data set folders under ``data_root(home)`` (downloaded or from zips)."""
    droot = data_root(home)
    if not droot.is_dir():
        return []
    return [p for p in sorted(droot.iterdir()) if p.is_dir() and not is_hidden(p)]


# Bytes of each file that go into the fingerprint. Hashing whole files would make a run
# start read the whole data set once more (gigabytes for big sets); the size plus the
# first MiB catches every real change (a photo replaced, re-encoded, cropped, renamed or
# moved between classes) at a bounded cost, and photos are rarely larger than that anyway.
_FINGERPRINT_HEAD = 1 << 20


def fingerprint(splits: DatasetSplits) -> str:
    """A content fingerprint of a discovered data set, to record with a run and compare later.

    SHA-256 over the class names and, for every image of both splits sorted by path: its
    split, label, path relative to ``splits.root``, size in bytes and the SHA-256 of its
    first MiB. Same files with the same split and labels -> same string, wherever the set
    lives on disk. Returns ``"sha256:<64 hex>"``; a file that vanished or cannot be read
    counts as size -1 (the fingerprint then differs, which is the point).
    """
    h = hashlib.sha256(b"hotdog-data-fingerprint-v1\0")
    for cls in splits.classes:
        h.update(os.fsencode(cls) + b"\0")
    rows = []
    for split, items in (("train", splits.train), ("test", splits.test)):
        for path, label in items:
            path = Path(path)
            try:
                rel = path.relative_to(splits.root)
            except ValueError:
                rel = Path(path.name)
            rows.append((os.fsencode(str(rel)), split, int(label), path))
    rows.sort()
    for rel, split, label, path in rows:
        size, head = -1, b""
        try:
            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                head = hashlib.sha256(fh.read(_FINGERPRINT_HEAD)).digest()
        except OSError:
            pass
        h.update(b"%s\0%s\0%d\0%d\0" % (split.encode(), rel, label, size) + head)
    return "sha256:" + h.hexdigest()
