"""Finding a data set on disk: the folder rule and the split rule.

Layouts: ``train/<class>/*`` + ``test/<class>/*`` ("split"), or ``<class>/*`` ("flat",
split here by a seeded, stratified hold-out). ``find_dataset_root`` is the one rule for
looking through wrapper folders (a zip's ``hotdog/train/...``); which files count is
decided by ``hotdog.data.images`` (content, not extension).
"""

from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hotdog.data.images import DEFAULT_MAX_PIXELS, is_hidden, scan_folder
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


def _visible_entries(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if not is_hidden(p))
    except OSError as err:
        raise DatasetError(f"cannot list {folder}: {err.strerror or err}") from None


def _visible_dirs(folder: Path) -> list[Path]:
    return [p for p in _visible_entries(folder) if p.is_dir()]


def find_dataset_root(folder: str | os.PathLike, max_depth: int = 8) -> Path:
    """The data set folder inside ``folder``, looking through wrapper folders.

    A folder whose only visible entry is a sub-folder that itself holds folders is a
    wrapper (``mydata/train/...``, ``mydata/cat/...``): the search goes into it. It stops
    at a ``train``/``test`` folder (that is the data set's own level) and at a lone folder
    of files (a single class, which validation then reports as such).
    """
    cur = Path(folder)
    for _ in range(max_depth):
        visible = _visible_entries(cur)
        if len(visible) != 1 or not visible[0].is_dir() or visible[0].name in _SPLITS:
            break
        if not _visible_dirs(visible[0]):
            break
        cur = visible[0]
    return cur


@dataclass
class _Scan:
    files: dict[str, list[Path]]  # class -> good files
    skipped: list[dict[str, str]]
    warnings: list[str]


def _scan_classes(folder: Path, classes: list[str], max_pixels: int, rel_to: Path) -> _Scan:
    files: dict[str, list[Path]] = {}
    skipped: list[dict[str, str]] = []
    notes: list[str] = []
    for cls in classes:
        cdir = folder / cls
        scan = scan_folder(cdir, max_pixels)
        files[cls] = scan.images
        skipped += [{"path": str(p.relative_to(rel_to)), "reason": why} for p, why in scan.rejected]
        if scan.folders:
            notes.append(f"{cdir.relative_to(rel_to)} has {len(scan.folders)} sub-folder(s); "
                         "images in sub-folders are ignored")
    return _Scan(files, skipped, notes)


def _require_classes(classes: list[str], where: str) -> None:
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if classes else "none"
        raise DatasetError(
            f"{where} needs at least 2 class folders (one per label, e.g. hotdog/ and not-hotdog/); found {found}"
        )


def _require_nonempty(files: dict[str, list[Path]], where: Path) -> None:
    for cls, items in files.items():
        if not items:
            raise DatasetError(f"class {cls!r} has no readable images ({where / cls})")


def _split_layout(root: Path, tops: dict[str, Path], max_pixels: int):
    train_classes = [p.name for p in _visible_dirs(tops["train"])]
    test_classes = [p.name for p in _visible_dirs(tops["test"])]
    _require_classes(train_classes, f"{root / 'train'}")
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        parts = []
        if only_train:
            parts.append(f"only in train: {', '.join(only_train)}")
        if only_test:
            parts.append(f"only in test: {', '.join(only_test)}")
        raise DatasetError(f"train and test have different class folders ({'; '.join(parts)})")
    notes = []
    extra = sorted(set(tops) - set(_SPLITS))
    if extra:
        notes.append(f"ignored folder(s) next to train/ and test/: {', '.join(extra)}")
    scans = {split: _scan_classes(tops[split], train_classes, max_pixels, root) for split in _SPLITS}
    for split, sc in scans.items():
        _require_nonempty(sc.files, tops[split])
    files = {split: sc.files for split, sc in scans.items()}
    skipped = scans["train"].skipped + scans["test"].skipped
    return train_classes, files, skipped, notes + scans["train"].warnings + scans["test"].warnings


def _flat_layout(root: Path, base: Path, test_ratio: float, seed: int, max_pixels: int):
    classes = [p.name for p in _visible_dirs(base)]
    _require_classes(classes, str(base))
    sc = _scan_classes(base, classes, max_pixels, root)
    _require_nonempty(sc.files, base)
    notes: list[str] = []
    files: dict[str, dict[str, list[Path]]] = {"train": {}, "test": {}}
    for cls in classes:
        items = list(sc.files[cls])
        # Per-class seeded shuffle: stratified, and adding a class never reshuffles another.
        random.Random(f"{seed}:{cls}").shuffle(items)
        n_test = int(round(len(items) * test_ratio))
        if test_ratio > 0 and n_test == 0 and len(items) >= 2:
            n_test = 1
        n_test = min(n_test, len(items) - 1)
        files["test"][cls] = sorted(items[:n_test])
        files["train"][cls] = sorted(items[n_test:])
        if test_ratio > 0 and n_test == 0:
            notes.append(f"class {cls!r} has only {len(items)} image(s); none held out for test")
    return classes, files, sc.skipped, notes + sc.warnings


def _discover(root: str | os.PathLike, test_ratio: float, seed: int, max_pixels: int):
    given = Path(root).expanduser()
    if not given.exists():
        raise DatasetError(f"data set folder {given} does not exist")
    if not given.is_dir():
        raise DatasetError(f"{given} is not a folder")
    if not 0.0 <= float(test_ratio) < 1.0:
        raise DatasetError(f"test ratio must be in [0, 1), got {test_ratio}")
    root = find_dataset_root(given)
    notes = [] if root == given else [f"using {root.relative_to(given)}/, the only folder inside {given}"]
    tops = {p.name: p for p in _visible_dirs(root)}
    if "train" in tops and "test" in tops:
        classes, files, skipped, more = _split_layout(root, tops, max_pixels)
        return root, "split", classes, files, skipped, notes + more
    base = root
    if "train" in tops and len(tops) == 1:
        base = tops["train"]
        notes.append("found train/ but no test/: splitting train/ by the test ratio")
    elif "test" in tops and len(tops) == 1:
        raise DatasetError(f"{root} has a test/ folder but no train/ folder")
    classes, files, skipped, more = _flat_layout(root, base, test_ratio, seed, max_pixels)
    return root, "flat", classes, files, skipped, notes + more


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
