"""Getting image-folder data sets onto disk safely and reading them the same way everywhere.

Three concerns live here because they share one rule, *untrusted bytes never reach the
rest of the app unchecked*:

* ``decode_image``: the single decoder used by training, evaluation and prediction, so a
  photo is seen identically in all three (EXIF orientation, odd modes, alpha, bombs).
* discovery/validation of ``train/<class>/*`` + ``test/<class>/*`` or flat ``<class>/*``
  folders, and the Gluon dataset/transforms built on top (the chapter's pipeline).
* ``download_hotdog`` / ``install_zip``: streamed, checksummed, zip-slip/bomb-safe
  extraction into a temp dir that is swapped into place only once it validates.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import re
import shutil
import socket
import stat
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
from dataclasses import asdict, dataclass, field
from http.client import HTTPException
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from hotdog.errors import DatasetError, DownloadError, ImageDecodeError, UnsafeArchiveError
from hotdog.paths import data_root

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

HOTDOG_URL = "http://d2l-data.s3-accelerate.amazonaws.com/hotdog.zip"
HOTDOG_SHA1 = "fba480ffa8aa7e0febbb511d181409f899b9baa5"

DEFAULT_MAX_PIXELS = 64_000_000
# A photo file bigger than this is refused before it is read into memory.
MAX_IMAGE_FILE_BYTES = 256 * 1024 * 1024

# Formats PIL may even try. Everything else (EPS runs Ghostscript, TGA/ICO-like formats
# without a magic number "decode" random bytes, exotic scientific formats) is refused.
# (MPO, multi-picture JPEG from cameras, is opened by the JPEG plugin.)
Image.init()
ALLOWED_FORMATS = tuple(f for f in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "DIB", "TIFF", "PPM") if f in Image.OPEN)

# Extensions we *expect* to be images; only used for messages and for the "zip has no
# images" check. Whether a file is really an image is always decided by opening it.
IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .gif .bmp .dib .webp .tif .tiff .ppm .pgm .pbm .pnm".split()
)

# ---------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------

_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis")


def _describe_non_image(data: bytes) -> str:
    """A human guess at what a non-image blob is, so the message helps the user."""
    head = data[:64]
    if len(data) >= 12 and data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        kind = "AVIF" if data[8:12] in (b"avif", b"avis") else "HEIC/HEIF"
        return f"{kind} images are not supported; convert it to JPEG or PNG first"
    stripped = head.lstrip().lower()
    if stripped.startswith((b"<!doctype html", b"<html", b"<?xml", b"<svg", b"<head", b"<body")):
        return "it is an HTML/XML text file, not a photo (was it saved from a web page?)"
    if data[:4] == b"PK\x03\x04":
        return "it is a zip archive, not a photo"
    if data[:5] == b"%PDF-":
        return "it is a PDF document, not a photo"
    try:
        data[:512].decode("utf-8")
        return "it is a text file, not a photo"
    except UnicodeDecodeError:
        pass
    return "it is not a supported image format (JPEG, PNG, GIF, WebP, BMP, TIFF)"


def _read_source(src: Any) -> tuple[bytes, str]:
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src), "image"
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        try:
            if path.exists() and not path.is_dir() and not path.is_file():
                raise ImageDecodeError(f"{path.name} is not a regular file")
            if path.is_file() and path.stat().st_size > MAX_IMAGE_FILE_BYTES:
                raise ImageDecodeError(
                    f"{path.name} is too large ({path.stat().st_size:,} bytes; the limit is {MAX_IMAGE_FILE_BYTES:,})"
                )
            return path.read_bytes(), path.name
        except IsADirectoryError:
            raise ImageDecodeError(f"{path.name} is a folder, not an image file") from None
        except FileNotFoundError:
            raise ImageDecodeError(f"{path.name}: file not found") from None
        except OSError as err:
            raise ImageDecodeError(f"{path.name}: cannot be read ({err.strerror or err})") from None
    if hasattr(src, "read"):  # file-like, e.g. an upload widget's buffer
        name = Path(str(getattr(src, "name", "image"))).name
        try:
            data = src.read(MAX_IMAGE_FILE_BYTES + 1)
            if len(data) > MAX_IMAGE_FILE_BYTES:
                raise ImageDecodeError(f"{name} is too large (more than {MAX_IMAGE_FILE_BYTES:,} bytes)")
            return bytes(data), name
        except ImageDecodeError:
            raise
        except Exception as err:  # noqa: BLE001 - any read failure is the user's file
            raise ImageDecodeError(f"{name}: cannot be read ({err})") from None
    raise ImageDecodeError(f"cannot decode an image from a {type(src).__name__}")


def _open_checked(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Open (header only) and refuse bombs before any pixel is decoded."""
    # PIL warns at 89 Mpx and raises at 2x that; both must become our typed error rather
    # than a warning that lets a bomb through or a PIL exception leaking to the user.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageDecodeError(
            f"{name} is too large to decode safely (more than {max_pixels:,} pixels; "
            "possible decompression bomb)"
        ) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{name} cannot be opened: {_describe_non_image(data)}") from None
    except Exception:  # noqa: BLE001 - hostile headers make PIL raise almost anything
        raise ImageDecodeError(f"{name} is corrupt: its image header cannot be read") from None
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ImageDecodeError(f"{name} is corrupt: it claims a size of {w}x{h} pixels")
    if w * h > max_pixels:
        raise ImageDecodeError(
            f"{name} is too large to decode safely: {w}x{h} pixels exceeds the limit of "
            f"{max_pixels:,} pixels (possible decompression bomb)"
        )
    return im


def _high_bit_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Map a 16/32-bit or float grayscale array to uint8 without clipping to white."""
    is_float = arr.dtype.kind == "f"
    arr = arr.astype(np.float64, copy=False)
    finite = np.isfinite(arr)
    if not finite.all():
        arr = np.where(finite, arr, 0.0)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if is_float and lo >= 0.0 and hi <= 1.0:
        scaled = arr * 255.0  # float images in [0, 1]
    elif lo >= 0.0 and hi <= 255.0:
        scaled = arr
    elif lo >= 0.0 and hi <= 65535.0:
        scaled = arr / 257.0  # the usual 16-bit range: 65535 -> 255
    else:
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        if "transparency" in im.info:
            return _composite_on_white(im.convert("RGBA"))
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        gray = _high_bit_to_uint8(np.asarray(im))
        return Image.fromarray(gray, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        return _composite_on_white(im.convert("RGBA"))
    if mode in ("P", "L", "1") and "transparency" in im.info:
        return _composite_on_white(im.convert("RGBA"))
    return im.convert("RGB")


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def decode_image(
    src: bytes | str | os.PathLike,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    min_side: int | None = None,
) -> Image.Image:
    """Decode a photo into an upright RGB PIL image, or raise ``ImageDecodeError``.

    ``min_side`` (optional) lets the decoder shrink the image so its shorter side is
    about ``min_side`` pixels: JPEGs are then decoded at reduced scale (much faster),
    which is what a dataset that caches decoded images wants.
    """
    data, name = _read_source(src)
    if not data:
        raise ImageDecodeError(f"{name} is empty (0 bytes)")
    with warnings.catch_warnings():
        # PIL reports corrupt EXIF/TIFF tags as UserWarnings; they are noise for a photo we
        # either decode or refuse with our own message. The filters are deliberately narrow:
        # catch_warnings is not thread-safe, so under concurrent decodes one of them can
        # outlive this block, and then it must still be harmless process-wide.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        return _decode(data, name, max_pixels, min_side)


def _decode(data: bytes, name: str, max_pixels: int, min_side: int | None) -> Image.Image:
    im = _open_checked(data, name, max_pixels)
    try:
        if getattr(im, "is_animated", False):
            im.seek(0)
        if min_side and im.format == "JPEG":
            w, h = im.size
            scale = min_side / min(w, h)
            if scale < 1:
                im.draft("RGB", (max(1, int(w * scale + 0.999)), max(1, int(h * scale + 0.999))))
        # Truncated photos must fail, which relies on PIL's process-wide
        # LOAD_TRUNCATED_IMAGES staying False; it cannot be overridden per image, so
        # nothing in this project sets it (tests/test_decode.py checks every module).
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            log.warning("PIL LOAD_TRUNCATED_IMAGES was switched on by some code: truncated photos may decode partially")
        im.load()
    except ImageDecodeError:
        raise
    except MemoryError:
        raise ImageDecodeError(f"{name} is too large to decode with the memory available") from None
    except Exception as err:  # noqa: BLE001 - decoder errors from hostile bytes vary widely
        log.debug("decode of %s failed: %r", name, err)
        if "truncated" in str(err).lower():
            raise ImageDecodeError(f"{name} is truncated (the file ends early); re-save or re-download it") from None
        raise ImageDecodeError(f"{name} is corrupt and cannot be decoded") from None
    try:
        try:
            upright = ImageOps.exif_transpose(im)
        except Exception:  # noqa: BLE001 - a broken EXIF block should not reject a good photo
            log.debug("ignoring unreadable EXIF in %s", name)
            upright = im
        rgb = _to_rgb(upright if upright is not None else im)
        if min_side:
            rgb = _shrink_to_min_side(rgb, min_side)
        if rgb is im:
            rgb = rgb.copy()  # detach from the BytesIO-backed file object
        rgb.load()
    except ImageDecodeError:
        raise
    except MemoryError:
        raise ImageDecodeError(f"{name} is too large to decode with the memory available") from None
    except Exception as err:  # noqa: BLE001
        log.debug("conversion of %s failed: %r", name, err)
        raise ImageDecodeError(f"{name} is corrupt and cannot be converted to RGB") from None
    finally:
        im.close()
    if rgb.mode != "RGB":  # pragma: no cover - defensive, _to_rgb always returns RGB
        raise ImageDecodeError(f"{name} could not be converted to RGB")
    return rgb


def _shrink_to_min_side(im: Image.Image, min_side: int) -> Image.Image:
    w, h = im.size
    short = min(w, h)
    if short <= min_side:
        return im
    scale = min_side / short
    size = (max(min_side, round(w * scale)) if w >= h else min_side,
            min_side if w >= h else max(min_side, round(h * scale)))
    return im.resize(size, Image.BILINEAR, reducing_gap=3.0)


# ---------------------------------------------------------------------------------------
# Transforms (the chapter's pipeline)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preprocess:
    """What a source model expects: crop size, resize-before-crop and normalisation."""

    input_size: int = 224
    resize: int = 256
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    def __post_init__(self):
        # Lists from JSON/configs would make the frozen dataclass unhashable.
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if int(self.input_size) < 1 or int(self.resize) < 1:
            raise ValueError(f"input_size and resize must be positive, got {self.input_size}, {self.resize}")

    def scaled(self, input_size: int) -> "Preprocess":
        """Same recipe at another crop size (keeps the chapter's 256/224 ratio)."""
        return Preprocess(int(input_size), int(round(input_size * 256 / 224)), tuple(self.mean), tuple(self.std))

    def to_dict(self) -> dict:
        return {"input_size": self.input_size, "resize": self.resize, "mean": list(self.mean), "std": list(self.std)}


def _as_hwc_uint8(img: Any):
    import mxnet as mx

    if isinstance(img, Image.Image):
        arr = np.asarray(img if img.mode == "RGB" else _to_rgb(img), dtype=np.uint8)
    elif isinstance(img, np.ndarray):
        arr = img
    elif isinstance(img, mx.nd.NDArray):
        nd = img if img.dtype == np.uint8 else img.astype("uint8")
        if nd.ndim == 2:
            nd = nd.expand_dims(axis=2).tile(reps=(1, 1, 3))
        return nd
    else:
        raise TypeError(f"expected a PIL image or an HWC uint8 array, got {type(img).__name__}")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.dtype != np.uint8:
        arr = arr.astype(np.uint8)
    return mx.nd.array(np.ascontiguousarray(arr), dtype="uint8")


class _ImageTransform:
    """Picklable wrapper: PIL/NDArray in, normalised CHW float32 NDArray out.

    Gluon's transform blocks are built lazily per process so a DataLoader worker forked
    from the parent never shares MXNet objects with it.
    """

    def __init__(self, pre: Preprocess, train: bool):
        self.pre = pre
        self.train = train
        self._block = None
        self._pid = os.getpid()
        # Drawn in the building process (after the caller's seeding), so worker seeds
        # below are reproducible for a seeded run.
        self._base_seed = random.getrandbits(31) if train else 0

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_block"] = None
        return state

    def _reseed_if_forked(self) -> None:
        """Give each DataLoader worker its own augmentation stream.

        RandomFlipLeftRight draws from MXNet's RNG, which forked DataLoader workers inherit
        in identical states: without this, worker 1 repeats worker 0's flips batch for
        batch (Python's ``random``, used by RandomResizedCrop, is reseeded from the OS on
        fork, which makes crops unreproducible instead). Each worker gets a seed from the
        building process's draw and its worker index. Only worker processes are touched.
        """
        pid = os.getpid()
        if pid == self._pid:
            return
        self._pid = pid
        import multiprocessing

        import mxnet as mx

        ident = multiprocessing.current_process()._identity or (pid,)  # noqa: SLF001
        seed = (self._base_seed + 7919 * int(ident[-1])) % (2**31 - 1)
        random.seed(seed)
        np.random.seed(seed)
        mx.random.seed(seed)

    def _build(self):
        from mxnet.gluon.data.vision import transforms

        size, resize = self.pre.input_size, self.pre.resize
        normalize = transforms.Normalize(list(self.pre.mean), list(self.pre.std))
        if self.train:
            steps = [transforms.RandomResizedCrop(size), transforms.RandomFlipLeftRight()]
        else:
            steps = [transforms.Resize(resize), transforms.CenterCrop(size)]
        return transforms.Compose(steps + [transforms.ToTensor(), normalize])

    def __call__(self, img):
        if self.train:
            self._reseed_if_forked()
        nd = _as_hwc_uint8(img)
        h, w = nd.shape[0], nd.shape[1]
        # Gluon's crops misbehave on images smaller than the crop (1x1, thin strips).
        # Stretch only the short dimension(s): keeping the aspect ratio would turn an
        # 8000x20 strip into an 89600x224 monster.
        need = self.pre.input_size
        if h < need or w < need:
            import mxnet as mx

            nd = mx.image.imresize(nd, max(w, need), max(h, need), interp=1)
        if self._block is None:
            self._block = self._build()
        return self._block(nd)

    def __repr__(self) -> str:
        return f"{'train' if self.train else 'test'}_transform({self.pre})"


def train_transform(pre: Preprocess = Preprocess()) -> Callable:
    """RandomResizedCrop(size) + RandomFlipLeftRight + ToTensor + Normalize (chapter)."""
    return _ImageTransform(pre, train=True)


def test_transform(pre: Preprocess = Preprocess()) -> Callable:
    """Resize(resize) + CenterCrop(size) + ToTensor + Normalize (chapter)."""
    return _ImageTransform(pre, train=False)


test_transform.__test__ = False  # keep pytest from collecting it when imported into a test module


# ---------------------------------------------------------------------------------------
# Discovery and validation
# ---------------------------------------------------------------------------------------


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


def _hidden(p: Path) -> bool:
    return p.name.startswith(".") or p.name in ("__MACOSX", "Thumbs.db", "desktop.ini")


def _visible_dirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not _hidden(p))
    except OSError as err:
        raise DatasetError(f"cannot list {folder}: {err.strerror or err}") from None


def _check_header(path: Path, max_pixels: int) -> str | None:
    """Cheap check (header only): None when it looks like a usable image, else why not."""
    try:
        st_ = path.stat()
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if not stat.S_ISREG(st_.st_mode):
        return "not a regular file"  # a FIFO or device would block or never end
    size = st_.st_size
    if size == 0:
        return "empty file (0 bytes)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=ALLOWED_FORMATS) as im:
                w, h = im.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return "image too large to decode safely"
    except UnidentifiedImageError:
        try:
            with open(path, "rb") as fh:
                head = fh.read(512)
        except OSError:
            head = b""
        return _describe_non_image(head)
    except OSError as err:
        return f"cannot be read ({err.strerror or 'corrupt image header'})"
    except Exception:  # noqa: BLE001
        return "corrupt image header"
    if w <= 0 or h <= 0:
        return f"corrupt image header (claims {w}x{h} pixels)"
    if w * h > max_pixels:
        return f"image too large to decode safely ({w}x{h} pixels)"
    return None


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
        good: list[Path] = []
        cdir = folder / cls
        try:
            entries = sorted(cdir.iterdir())
        except OSError as err:
            raise DatasetError(f"cannot list {cdir}: {err.strerror or err}") from None
        nested = 0
        for p in entries:
            if _hidden(p):
                continue
            if p.is_dir():
                nested += 1
                continue
            if p.is_symlink() and not p.exists():
                skipped.append({"path": str(p.relative_to(rel_to)), "reason": "broken symbolic link"})
                continue
            reason = _check_header(p, max_pixels)
            if reason is None:
                good.append(p)
            else:
                skipped.append({"path": str(p.relative_to(rel_to)), "reason": reason})
        if nested:
            notes.append(f"{cdir.relative_to(rel_to)} has {nested} sub-folder(s); images in sub-folders are ignored")
        files[cls] = good
    return _Scan(files, skipped, notes)


def _require_classes(classes: list[str], where: str) -> None:
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if classes else "none"
        raise DatasetError(
            f"{where} needs at least 2 class folders (one per label, e.g. hotdog/ and not-hotdog/); found {found}"
        )


def _require_nonempty(files: dict[str, list[Path]], split: str, root: Path) -> None:
    for cls, items in files.items():
        if not items:
            raise DatasetError(f"class {cls!r} has no readable images in {split}/ ({root / split / cls})")


def _discover(root: str | os.PathLike, test_ratio: float, seed: int, max_pixels: int):
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"data set folder {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder")
    if not 0.0 <= float(test_ratio) < 1.0:
        raise DatasetError(f"test ratio must be in [0, 1), got {test_ratio}")
    tops = {p.name: p for p in _visible_dirs(root)}
    notes: list[str] = []
    if "train" in tops and "test" in tops:
        layout = "split"
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
        classes = train_classes
        extra = sorted(set(tops) - {"train", "test"})
        if extra:
            notes.append(f"ignored folder(s) next to train/ and test/: {', '.join(extra)}")
        tr = _scan_classes(tops["train"], classes, max_pixels, root)
        te = _scan_classes(tops["test"], classes, max_pixels, root)
        _require_nonempty(tr.files, "train", root)
        _require_nonempty(te.files, "test", root)
        files = {"train": tr.files, "test": te.files}
        return root, layout, classes, files, tr.skipped + te.skipped, notes + tr.warnings + te.warnings
    base = root
    if "train" in tops and len(tops) == 1:
        base = tops["train"]
        notes.append("found train/ but no test/: splitting train/ by the test ratio")
    elif "test" in tops and len(tops) == 1:
        raise DatasetError(f"{root} has a test/ folder but no train/ folder")
    layout = "flat"
    classes = [p.name for p in _visible_dirs(base)]
    _require_classes(classes, str(base))
    sc = _scan_classes(base, classes, max_pixels, root)
    for cls, items in sc.files.items():
        if not items:
            raise DatasetError(f"class {cls!r} has no readable images ({base / cls})")
    train_files: dict[str, list[Path]] = {}
    test_files: dict[str, list[Path]] = {}
    for cls in classes:
        items = list(sc.files[cls])
        # Per-class seeded shuffle: stratified, and adding a class never reshuffles another.
        random.Random(f"{seed}:{cls}").shuffle(items)
        n_test = int(round(len(items) * test_ratio))
        if test_ratio > 0 and n_test == 0 and len(items) >= 2:
            n_test = 1
        n_test = min(n_test, len(items) - 1)
        test_files[cls] = sorted(items[:n_test])
        train_files[cls] = sorted(items[n_test:])
        if test_ratio > 0 and n_test == 0:
            notes.append(f"class {cls!r} has only {len(items)} image(s); none held out for test")
    files = {"train": train_files, "test": test_files}
    return root, layout, classes, files, sc.skipped, notes + sc.warnings


def load_splits(root, test_ratio: float = 0.2, seed: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS) -> DatasetSplits:
    """Discover a data set; files whose header is unreadable are left out (see validate_dataset)."""
    root, layout, classes, files, _skipped, _notes = _discover(root, test_ratio, seed, max_pixels)
    items = {
        split: [(p, i) for i, cls in enumerate(classes) for p in files[split][cls]] for split in ("train", "test")
    }
    return DatasetSplits(root=root, classes=classes, train=items["train"], test=items["test"], layout=layout)


def validate_dataset(root, test_ratio: float = 0.2, seed: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS) -> DatasetReport:
    """Counts per split and class plus the files that will be skipped and why.

    Only image headers are read (fast even for thousands of photos); a file whose pixel
    data is corrupt is caught later by ``decode_image`` / ``ImageListDataset.preload``.
    """
    root, layout, classes, files, skipped, notes = _discover(root, test_ratio, seed, max_pixels)
    counts = {split: {cls: len(files[split][cls]) for cls in classes} for split in ("train", "test")}
    return DatasetReport(root=str(root), layout=layout, classes=classes, counts=counts, skipped=skipped, warnings=notes)


# ---------------------------------------------------------------------------------------
# Gluon dataset
# ---------------------------------------------------------------------------------------


def _gluon_dataset_base():
    from mxnet.gluon.data import Dataset

    return Dataset


class ImageListDataset(_gluon_dataset_base()):
    """(path, label) pairs -> (CHW float32 NDArray, int label) through ``decode_image``.

    With ``cache_decoded`` each file is decoded once per process and kept as a compact
    HWC uint8 array, shrunk so its shorter side is at most ``min_side`` (pass the
    transform's ``Preprocess.resize``): later epochs only pay for the augmentation.
    Call ``preload()`` before building a multi-worker DataLoader so forked workers
    inherit the cache instead of each decoding everything again.
    """

    def __init__(self, items: Iterable[tuple[Path, int]], transform: Callable | None = None,
                 cache_decoded: bool = True, min_side: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.items = [(Path(p), int(label)) for p, label in items]
        self.transform = transform
        self.cache_decoded = cache_decoded
        self.min_side = int(min_side) if min_side else None
        self.max_pixels = max_pixels
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.items)

    def _decoded(self, idx: int) -> np.ndarray:
        arr = self._cache.get(idx)
        if arr is None:
            path = self.items[idx][0]
            img = decode_image(path, self.max_pixels, min_side=self.min_side)
            arr = np.asarray(img, dtype=np.uint8)
            if self.cache_decoded:
                self._cache[idx] = arr
        return arr

    def image(self, idx: int) -> Image.Image:
        """The decoded (possibly shrunk) RGB image, e.g. for showing samples."""
        return Image.fromarray(self._decoded(idx))

    def preload(self, threads: int = 2) -> list[dict[str, str]]:
        """Decode everything now; drop items that fail and return them as {path, reason}."""
        from concurrent.futures import ThreadPoolExecutor

        failures: dict[int, str] = {}

        def work(i: int) -> None:
            try:
                self._decoded(i)
            except ImageDecodeError as err:
                failures[i] = str(err)

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            list(pool.map(work, range(len(self.items))))
        if failures:
            keep = [i for i in range(len(self.items)) if i not in failures]
            bad = [{"path": str(self.items[i][0]), "reason": failures[i]} for i in sorted(failures)]
            self._cache = {new: self._cache[old] for new, old in enumerate(keep) if old in self._cache}
            self.items = [self.items[i] for i in keep]
            return bad
        return []

    def __getitem__(self, idx: int):
        arr = self._decoded(idx)
        label = self.items[idx][1]
        if self.transform is None:
            import mxnet as mx

            return mx.nd.array(arr, dtype="uint8"), label
        return self.transform(arr), label


# ---------------------------------------------------------------------------------------
# Download of the chapter's data set
# ---------------------------------------------------------------------------------------

_MARKER = ".hotdog-source.sha1"
_CHUNK = 1 << 20
_install_lock = threading.Lock()


def _offline_message(url: str, detail: str) -> str:
    host = urllib.parse.urlsplit(url).hostname or url
    return (
        f"Could not reach {host} ({detail}): this machine seems to be offline, so use a local "
        "image folder with `python -m hotdog data --root DIR` or install a data set zip with "
        "`python -m hotdog install-zip FILE.zip --name NAME` instead."
    )


def _verified_copy(target: Path, sha1: str) -> bool:
    try:
        return (target / _MARKER).read_text().strip() == sha1 and (target / "train").is_dir() and (target / "test").is_dir()
    except OSError:
        return False


def _fetch(url: str, dest: Path, sha1: str, progress, timeout: float) -> None:
    digest = hashlib.sha1()
    done = 0
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "hotdog-lab"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status = getattr(resp, "status", 200)
            if status != 200:
                raise DownloadError(f"download of {url} failed: HTTP {status} {getattr(resp, 'reason', '')}".rstrip())
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if progress:
                progress(0, total)
            with open(dest, "wb") as out:
                while True:
                    chunk = resp.read(_CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
    except DownloadError:
        raise
    except urllib.error.HTTPError as err:
        raise DownloadError(f"download of {url} failed: HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        reason = err.reason
        detail = getattr(reason, "strerror", None) or str(reason)
        raise DownloadError(_offline_message(url, detail)) from None
    except (ConnectionRefusedError, socket.gaierror) as err:
        raise DownloadError(_offline_message(url, err.strerror or str(err))) from None
    except (HTTPException, ConnectionError, TimeoutError, socket.timeout) as err:
        raise DownloadError(
            f"download of {url} is truncated: the connection ended after {done:,} bytes "
            f"({type(err).__name__}); the partial file was discarded, try again"
        ) from None
    except ValueError as err:  # malformed URL
        raise DownloadError(f"cannot download {url!r}: {err}") from None
    except OSError as err:
        raise DownloadError(f"cannot save the download to {dest.parent}: {err.strerror or err}") from None
    if total is not None and done != total:
        raise DownloadError(
            f"download of {url} is truncated: received {done:,} of {total:,} bytes; try again"
        )
    got = digest.hexdigest()
    if sha1 and got.lower() != sha1.lower():
        raise DownloadError(
            f"download of {url} is corrupt: SHA-1 {got} does not match the expected {sha1}; "
            "the file was discarded, try again"
        )


def _find_split_root(folder: Path) -> Path:
    """The folder holding train/ and test/ (zips may or may not wrap them in a top folder)."""
    cur = folder
    for _ in range(4):
        names = {p.name for p in _visible_dirs(cur)}
        if {"train", "test"} <= names:
            return cur
        visible = [p for p in cur.iterdir() if not _hidden(p)]
        if len(visible) == 1 and visible[0].is_dir():
            cur = visible[0]
            continue
        break
    raise DatasetError("the downloaded archive has no train/ and test/ folders")


def download_hotdog(home=None, url: str = HOTDOG_URL, sha1: str = HOTDOG_SHA1,
                    progress: Callable[[int, int | None], None] | None = None,
                    timeout: float = 30.0) -> Path:
    """The chapter's hot dog data set at ``data_root(home)/"hotdog"`` (downloaded once)."""
    droot = data_root(home)
    target = droot / "hotdog"
    if _verified_copy(target, sha1):
        return target
    try:
        droot.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(f"cannot create the data folder {droot}: {err.strerror or err}") from None
    with _install_lock, _dir_lock(droot):
        if _verified_copy(target, sha1):  # another process finished it while we waited
            return target
        _remove_stale_downloads(droot)
        fd, zpath = tempfile.mkstemp(prefix=".download-", suffix=".zip", dir=droot)
        os.close(fd)
        zpath = Path(zpath)
        staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=droot))
        try:
            _fetch(url, zpath, sha1, progress, timeout)
            try:
                with zipfile.ZipFile(zpath) as zf:
                    _safe_extract(zf, staging, ZipLimits(max_total_bytes=8_000_000_000))
            except zipfile.BadZipFile as err:
                raise DownloadError(f"the download from {url} is not a valid zip ({err})") from None
            try:
                split_root = _find_split_root(staging)
            except DatasetError as err:
                raise DownloadError(str(err)) from None
            (split_root / _MARKER).write_text(sha1 + "\n")
            _swap_into_place(split_root, target)
        finally:
            zpath.unlink(missing_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _remove_stale_downloads(droot: Path) -> None:
    """Leftovers of a download killed mid-way (only called while holding the lock)."""
    for p in droot.iterdir():
        if p.name.startswith((".download-", ".extract-")):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


class _dir_lock:
    """Advisory lock so two processes never extract into the same data root at once."""

    def __init__(self, folder: Path):
        self.path = folder / ".hotdog.lock"
        self.fh = None

    def __enter__(self):
        try:
            import fcntl

            self.fh = open(self.path, "a")
            fcntl.flock(self.fh, fcntl.LOCK_EX)
        except (ImportError, OSError):
            self.fh = None
        return self

    def __exit__(self, *exc):
        if self.fh is not None:
            self.fh.close()


def _swap_into_place(new: Path, target: Path) -> None:
    """Replace ``target`` with ``new`` so readers see the old or the new set, never half."""
    old = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f".old-{target.name}-{os.getpid()}-{threading.get_ident()}")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(target, old)
    try:
        os.rename(new, target)
    except OSError:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# User-supplied zips
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZipLimits:
    max_total_bytes: int = 2_000_000_000
    max_entries: int = 100_000
    max_ratio: float = 200.0
    # Ratios of tiny entries are meaningless (a 4 KiB blank file compresses 100x), so the
    # ratio limits apply only above these sizes.
    ratio_min_entry_bytes: int = 1 << 20
    ratio_min_total_bytes: int = 8 << 20


_DRIVE = re.compile(r"^[A-Za-z]:")
# A data set name becomes one folder name: word characters, spaces and a little
# punctuation, never a path separator, never hidden, no trailing dot or space.
_NAME_OK = re.compile(r"^[^\W_][\w .()+-]{0,62}(?<![ .])$")


def _entry_parts(info: zipfile.ZipInfo) -> list[str]:
    raw = info.filename
    if "\\" in raw:
        raise UnsafeArchiveError(f"refused: entry {raw!r} uses backslashes in its path (possible path traversal)")
    if raw.startswith("/") or _DRIVE.match(raw):
        raise UnsafeArchiveError(f"refused: entry {raw!r} has an absolute path")
    if "\x00" in raw:
        raise UnsafeArchiveError(f"refused: entry {raw!r} has a NUL byte in its name")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafeArchiveError(f"refused: entry {raw!r} points outside the archive folder (zip-slip '..')")
    return parts


def _declared_entry_count(fileobj) -> int | None:
    """Entry count from the end-of-central-directory record, read before ZipFile parses
    (and allocates) the whole central directory."""
    try:
        if isinstance(fileobj, (str, os.PathLike)):
            with open(fileobj, "rb") as fh:
                rec = zipfile._EndRecData(fh)  # noqa: SLF001 - stable since Python 2
        else:
            rec = zipfile._EndRecData(fileobj)  # noqa: SLF001
            fileobj.seek(0)
    except Exception:  # noqa: BLE001 - ZipFile itself reports unreadable archives
        return None
    return None if not rec else int(rec[zipfile._ECD_ENTRIES_TOTAL])  # noqa: SLF001


def _check_zip(zf: zipfile.ZipFile, limits: ZipLimits) -> list[tuple[zipfile.ZipInfo, list[str]]]:
    infos = zf.infolist()
    if len(infos) > limits.max_entries:
        raise UnsafeArchiveError(
            f"refused: the zip has {len(infos):,} entries, more than the limit of {limits.max_entries:,}"
        )
    total = 0
    total_compressed = 0
    plan = []
    for info in infos:
        parts = _entry_parts(info)
        mode = (info.external_attr >> 16) & 0xFFFF
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            raise UnsafeArchiveError(f"refused: entry {info.filename!r} is a symbolic link")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise UnsafeArchiveError(f"refused: entry {info.filename!r} is not a regular file or folder")
        if info.flag_bits & 0x1:
            raise UnsafeArchiveError(f"refused: entry {info.filename!r} is encrypted")
        if not parts:
            continue
        if info.is_dir():
            plan.append((info, parts))
            continue
        if any(p.startswith(".") or p == "__MACOSX" for p in parts):
            continue  # Finder/editor litter: never extracted
        if parts[-1].lower().endswith((".zip", ".jar", ".7z", ".rar", ".tar", ".gz", ".tgz", ".xz", ".bz2")):
            raise UnsafeArchiveError(
                f"refused: the zip contains another archive ({info.filename!r}); nested archives are "
                "not extracted, unpack it and upload the inner data set instead"
            )
        total += info.file_size
        total_compressed += info.compress_size
        if total > limits.max_total_bytes:
            raise UnsafeArchiveError(
                f"refused: the zip would unpack to more than {limits.max_total_bytes:,} bytes (zip bomb limit)"
            )
        if info.file_size >= limits.ratio_min_entry_bytes:
            ratio = info.file_size / max(1, info.compress_size)
            if ratio > limits.max_ratio:
                raise UnsafeArchiveError(
                    f"refused: entry {info.filename} expands {ratio:,.0f}x, more than the limit of "
                    f"{limits.max_ratio:g}x (zip bomb)"
                )
        plan.append((info, parts))
    if total >= limits.ratio_min_total_bytes and total / max(1, total_compressed) > limits.max_ratio:
        raise UnsafeArchiveError(
            f"refused: the zip expands {total / max(1, total_compressed):,.0f}x overall, more than the limit of "
            f"{limits.max_ratio:g}x (zip bomb)"
        )
    return plan


def _safe_extract(zf: zipfile.ZipFile, dest: Path, limits: ZipLimits) -> int:
    """Extract into ``dest`` (fresh, empty) counting real bytes, never trusting headers."""
    plan = _check_zip(zf, limits)
    dest_resolved = dest.resolve()
    written_total = 0
    for info, parts in plan:
        out = dest.joinpath(*parts)
        if not out.resolve().is_relative_to(dest_resolved):  # belt and braces after _entry_parts
            raise UnsafeArchiveError(f"refused: entry {info.filename!r} points outside the target folder")
        if info.is_dir():
            out.mkdir(parents=True, exist_ok=True)
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        try:
            with zf.open(info) as src, open(out, "xb") as fh:
                while True:
                    chunk = src.read(_CHUNK)
                    if not chunk:
                        break
                    written += len(chunk)
                    written_total += len(chunk)
                    if written > info.file_size:
                        raise UnsafeArchiveError(
                            f"refused: entry {info.filename!r} unpacks to more bytes than its header declares"
                        )
                    if written_total > limits.max_total_bytes:
                        raise UnsafeArchiveError(
                            f"refused: the zip unpacks to more than {limits.max_total_bytes:,} bytes (zip bomb limit)"
                        )
                    fh.write(chunk)
        except FileExistsError:
            raise UnsafeArchiveError(f"refused: entry {info.filename!r} appears twice in the zip") from None
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, RuntimeError) as err:
            raise UnsafeArchiveError(f"the zip is corrupt or unsupported at {info.filename!r} ({err})") from None
        except (OSError, ValueError) as err:
            if isinstance(err, OSError) and err.errno is not None:
                raise
            raise UnsafeArchiveError(f"the zip is corrupt at {info.filename!r} ({err})") from None
    return written_total


def _dataset_root_in(folder: Path) -> Path:
    """Descend through single wrapper folders (``mydata/train/...`` or ``mydata/cat/...``)."""
    cur = folder
    for _ in range(8):
        visible = [p for p in cur.iterdir() if not _hidden(p)]
        if len(visible) == 1 and visible[0].is_dir() and visible[0].name not in ("train", "test"):
            if any(c.is_dir() and not _hidden(c) for c in visible[0].iterdir()):
                cur = visible[0]
                continue
        break
    return cur


def _has_image_file(folder: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.rglob("*"))


def dataset_name_from_file(filename: str) -> str:
    """A name ``install_zip`` accepts, from an uploaded zip's file name ('photos (1).zip' -> 'photos-1')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(filename).stem).strip("-._")[:64] or "dataset"


def install_zip(src, name: str, home=None, limits: ZipLimits = ZipLimits()) -> Path:
    """Install a user-supplied data set zip as ``data_root(home)/name`` and return that folder.

    Refuses unsafe archives (``UnsafeArchiveError``) and unusable data sets
    (``DatasetError``); in both cases nothing is left behind and a data set previously
    installed under ``name`` stays as it was.
    """
    if not isinstance(name, str) or not _NAME_OK.match(name):
        raise DatasetError(
            f"data set name {name!r} is not allowed: use letters, digits, spaces, '.', '_', '-', '(', ')' or '+' "
            "(at most 63 characters, starting with a letter or digit)"
        )
    droot = data_root(home)
    target = droot / name
    try:
        droot.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatasetError(f"cannot create the data folder {droot}: {err.strerror or err}") from None
    if isinstance(src, (bytes, bytearray, memoryview)):
        fileobj: Any = io.BytesIO(bytes(src))
    elif isinstance(src, (str, os.PathLike)):
        if not Path(src).is_file():
            raise DatasetError(f"zip file {src} does not exist")
        fileobj = str(src)
    elif hasattr(src, "read"):
        fileobj = io.BytesIO(src.read())
    else:
        raise DatasetError(f"cannot read a zip from a {type(src).__name__}")
    declared = _declared_entry_count(fileobj)
    if declared is not None and declared > limits.max_entries:
        raise UnsafeArchiveError(
            f"refused: the zip has {declared:,} entries, more than the limit of {limits.max_entries:,}"
        )
    staging = Path(tempfile.mkdtemp(prefix=f".install-{name}-", dir=droot))
    try:
        try:
            with zipfile.ZipFile(fileobj) as zf:
                _safe_extract(zf, staging, limits)
        except zipfile.BadZipFile:
            raise DatasetError("the upload is not a valid zip file") from None
        except OSError as err:
            raise DatasetError(f"cannot extract the zip into {droot}: {err.strerror or err}") from None
        if not _has_image_file(staging):
            raise DatasetError("the zip contains no image files (expected class folders of .jpg/.png photos)")
        root = _dataset_root_in(staging)
        validate_dataset(root)
        with _install_lock, _dir_lock(droot):
            _swap_into_place(root, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def installed_datasets(home=None) -> list[Path]:
    """Installed data set folders under ``data_root(home)`` (downloaded or from zips)."""
    droot = data_root(home)
    if not droot.is_dir():
        return []
    return [p for p in sorted(droot.iterdir()) if p.is_dir() and not _hidden(p)]


__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "HOTDOG_URL", "HOTDOG_SHA1", "DEFAULT_MAX_PIXELS",
    "Preprocess", "decode_image", "train_transform", "test_transform",
    "DatasetSplits", "DatasetReport", "load_splits", "validate_dataset", "ImageListDataset",
    "download_hotdog", "ZipLimits", "install_zip", "installed_datasets",
]


def list_images(folder) -> list[Path]:
    """Placeholder until the data package split lands (content-based rule there)."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)
