"""What counts as an image, and the one decoder every caller uses.

The rule is *content, not extension*: a file is an image when its header opens under the
format allowlist with a sane size, whatever it is called. ``decode_image`` (training,
evaluation, prediction), ``image_problem`` / ``is_image_file`` (discovery, zip install)
and ``list_images`` all go through the same header check, so a photo that trains is also
listed and evaluated, and a skipped file is skipped for the same reason everywhere.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from hotdog.errors import DatasetError, ImageDecodeError

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 64_000_000
# A photo file bigger than this is refused before it is read into memory.
MAX_IMAGE_FILE_BYTES = 256 * 1024 * 1024

# Formats PIL may even try. Everything else (EPS runs Ghostscript, TGA/ICO-like formats
# without a magic number "decode" random bytes, exotic scientific formats) is refused.
# (MPO, multi-picture JPEG from cameras, is opened by the JPEG plugin.)
Image.init()
ALLOWED_FORMATS = tuple(f for f in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "DIB", "TIFF", "PPM") if f in Image.OPEN)

# Extensions we *expect* to be images. Never used to decide whether a file is one (that is
# ``is_image_file``); kept importable for code outside this package that still filters by
# name (hotdog.train._split_items, until it switches to ``list_images``).
IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .gif .bmp .dib .webp .tif .tiff .ppm .pgm .pbm .pnm".split()
)

_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis")
# Enough of a file to tell what it is when PIL cannot (see _describe_non_image).
_HEAD_BYTES = 512


def is_hidden(p: Path) -> bool:
    """Dot files and the litter file managers leave behind; never data."""
    return p.name.startswith(".") or p.name in ("__MACOSX", "Thumbs.db", "desktop.ini")


def _describe_non_image(head: bytes) -> str:
    """A human guess at what a non-image blob is, so the message helps the user."""
    if len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        kind = "AVIF" if head[8:12] in (b"avif", b"avis") else "HEIC/HEIF"
        return f"{kind} images are not supported; convert it to JPEG or PNG first"
    stripped = head[:64].lstrip().lower()
    if stripped.startswith((b"<!doctype html", b"<html", b"<?xml", b"<svg", b"<head", b"<body")):
        return "it is an HTML/XML text file, not a photo (was it saved from a web page?)"
    if head[:4] == b"PK\x03\x04":
        return "it is a zip archive, not a photo"
    if head[:5] == b"%PDF-":
        return "it is a PDF document, not a photo"
    try:
        head[:_HEAD_BYTES].decode("utf-8")
        return "it is a text file, not a photo"
    except UnicodeDecodeError:
        pass
    return "it is not a supported image format (JPEG, PNG, GIF, WebP, BMP, TIFF)"


def _check_file(path: Path) -> None:
    """Refuse what must not be opened at all: missing, folders, FIFOs/devices (reading
    one would block or never end), empty and oversized files."""
    name = path.name
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise ImageDecodeError(f"{name} is a broken symbolic link") from None
        raise ImageDecodeError(f"{name}: file not found") from None
    except OSError as err:
        raise ImageDecodeError(f"{name}: cannot be read ({err.strerror or err})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageDecodeError(f"{name} is a folder, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise ImageDecodeError(f"{name} is not a regular file")
    if st.st_size > MAX_IMAGE_FILE_BYTES:
        raise ImageDecodeError(f"{name} is too large ({st.st_size:,} bytes; the limit is {MAX_IMAGE_FILE_BYTES:,})")
    if st.st_size == 0:
        raise ImageDecodeError(f"{name} is empty (0 bytes)")


def _read_source(src: Any) -> tuple[bytes, str]:
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src), "image"
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        _check_file(path)
        try:
            return path.read_bytes(), path.name
        except OSError as err:  # vanished or unreadable since the check
            raise ImageDecodeError(f"{path.name}: cannot be read ({err.strerror or err})") from None
    if hasattr(src, "read"):  # file-like, e.g. an upload widget's buffer
        name = Path(str(getattr(src, "name", "image"))).name
        try:
            data = src.read(MAX_IMAGE_FILE_BYTES + 1)
        except Exception as err:  # noqa: BLE001 - any read failure is the user's file
            raise ImageDecodeError(f"{name}: cannot be read ({err})") from None
        if len(data) > MAX_IMAGE_FILE_BYTES:
            raise ImageDecodeError(f"{name} is too large (more than {MAX_IMAGE_FILE_BYTES:,} bytes)")
        return bytes(data), name
    raise ImageDecodeError(f"cannot decode an image from a {type(src).__name__}")


def _open_checked(fp: BinaryIO, name: str, max_pixels: int) -> Image.Image:
    """Open (header only) and refuse bombs before any pixel is decoded.

    The one header check: the decoder and ``image_problem`` both come through here.
    """
    head = fp.read(_HEAD_BYTES)
    fp.seek(0)
    # PIL warns at 89 Mpx and raises at 2x that; both must become our typed error rather
    # than a warning that lets a bomb through or a PIL exception leaking to the user.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(fp, formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageDecodeError(
            f"{name} is too large to decode safely (more than {max_pixels:,} pixels; "
            "possible decompression bomb)"
        ) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{name} cannot be opened: {_describe_non_image(head)}") from None
    except OSError as err:
        if err.errno is None:  # PIL's own "broken header" OSErrors carry no errno
            raise ImageDecodeError(f"{name} is corrupt: its image header cannot be read") from None
        raise ImageDecodeError(f"{name}: cannot be read ({err.strerror or err})") from None
    except Exception:  # noqa: BLE001 - hostile headers make PIL raise almost anything
        raise ImageDecodeError(f"{name} is corrupt: its image header cannot be read") from None
    w, h = im.size
    if w <= 0 or h <= 0:
        im.close()
        raise ImageDecodeError(f"{name} is corrupt: it claims a size of {w}x{h} pixels")
    if w * h > max_pixels:
        im.close()
        raise ImageDecodeError(
            f"{name} is too large to decode safely: {w}x{h} pixels exceeds the limit of "
            f"{max_pixels:,} pixels (possible decompression bomb)"
        )
    return im


def image_problem(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """None when ``path`` is an image ``decode_image`` will open, else the sentence why not.

    Reads the header only (cheap even for thousands of photos); corrupt pixel data past a
    good header is caught later by ``decode_image``.
    """
    path = Path(path)
    try:
        _check_file(path)
        with open(path, "rb") as fh:
            _open_checked(fh, path.name, max_pixels).close()
    except ImageDecodeError as err:
        return str(err)
    except OSError as err:
        return f"{path.name}: cannot be read ({err.strerror or err})"
    return None


def is_image_file(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> bool:
    """True when the file's content is a usable image, whatever its name or extension."""
    return image_problem(path, max_pixels) is None


@dataclass
class FolderScan:
    """One folder's entries sorted by the image rule (hidden entries are left out)."""

    images: list[Path] = field(default_factory=list)
    rejected: list[tuple[Path, str]] = field(default_factory=list)  # (file, why it is not an image)
    folders: list[Path] = field(default_factory=list)


def scan_folder(folder: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> FolderScan:
    """Sort ``folder``'s visible entries into images, rejected files and sub-folders."""
    folder = Path(folder)
    try:
        entries = sorted(folder.iterdir())
    except OSError as err:
        raise DatasetError(f"cannot list {folder}: {err.strerror or err}") from None
    scan = FolderScan()
    for p in entries:
        if is_hidden(p):
            continue
        if p.is_dir():
            scan.folders.append(p)
            continue
        reason = image_problem(p, max_pixels)
        if reason is None:
            scan.images.append(p)
        else:
            scan.rejected.append((p, reason))
    return scan


def list_images(folder: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Path]:
    """The images directly in ``folder``, sorted; hidden entries, folders and non-images
    (by content) are left out. ``DatasetError`` when the folder cannot be listed."""
    return scan_folder(folder, max_pixels).images


# ---------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------


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


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode as RGB: transparency on white, 16-bit/float gray rescaled, not clipped."""
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
    im = _open_checked(io.BytesIO(data), name, max_pixels)
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
        rgb = to_rgb(upright if upright is not None else im)
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
    if rgb.mode != "RGB":  # pragma: no cover - defensive, to_rgb always returns RGB
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
