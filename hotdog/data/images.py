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
from typing import Any, BinaryIO, Sequence

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from hotdog.data.access import link_bounds, within
from hotdog.data.names import display_name, name_problem
from hotdog.errors import DatasetError, ImageDecodeError, RequestBudgetError

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
    name = display_name(path.name)
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
            return path.read_bytes(), display_name(path.name)
        except OSError as err:  # vanished or unreadable since the check
            raise ImageDecodeError(f"{display_name(path.name)}: cannot be read ({os_reason(err)})") from None
    if hasattr(src, "read"):  # file-like, e.g. an upload widget's buffer
        name = display_name(Path(str(getattr(src, "name", "image"))).name)
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
            _open_checked(fh, display_name(path.name), max_pixels).close()
    except ImageDecodeError as err:
        return str(err)
    except OSError as err:
        return f"{display_name(path.name)}: cannot be read ({os_reason(err)})"
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


class FolderUnreadable(DatasetError):
    """A folder cannot be listed; ``reason`` is the system's word for why (no path in it)."""

    def __init__(self, folder: Path, reason: str):
        super().__init__(f"the folder '{display_name(folder.name)}' cannot be read ({reason})")
        self.folder = folder
        self.reason = reason


def os_reason(err: OSError) -> str:
    """An OSError as a short phrase without the path Python puts in ``str(err)``."""
    return (err.strerror or type(err).__name__).lower()


def list_entries(folder: Path) -> list[Path]:
    """``folder``'s visible entries, sorted; ``FolderUnreadable`` when it cannot be listed."""
    try:
        return sorted(p for p in folder.iterdir() if not is_hidden(p))
    except OSError as err:
        raise FolderUnreadable(folder, os_reason(err)) from None


LINK_OUTSIDE = "it is a symbolic link to a place outside the shared data folders; not followed"


def entry_kind(p: Path, bounds: list[Path]) -> tuple[str, str | None]:
    """('dir' | 'file' | 'skip', reason) of one visible entry, never raising.

    A name that is not UTF-8 or holds control characters is skipped (it would break
    whatever shows or stores it later); a symlink leading outside ``bounds`` is skipped
    without looking at what it points to.
    """
    problem = name_problem(p.name)
    if problem is not None:
        return "skip", f"{problem}; rename it"
    try:
        if p.is_symlink() and not within(p, bounds):
            return "skip", LINK_OUTSIDE
        return ("dir" if p.is_dir() else "file"), None
    except OSError as err:  # is_dir re-raises EACCES (e.g. /proc/1/cwd)
        return "skip", f"cannot be read ({os_reason(err)})"


def scan_folder(folder: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS,
                bounds: list[Path] | None = None) -> FolderScan:
    """Sort ``folder``'s visible entries into images, rejected files and sub-folders.

    ``bounds``: where symlinks may lead (default: the allowed roots and ``folder`` itself,
    see ``hotdog.data.access.link_bounds``). ``FolderUnreadable`` when ``folder`` cannot be
    listed; an entry that cannot be read is rejected with the reason.
    """
    folder = Path(folder)
    if bounds is None:
        bounds = link_bounds(folder)
    scan = FolderScan()
    for p in list_entries(folder):
        kind, why = entry_kind(p, bounds)
        if kind == "dir":
            scan.folders.append(p)
            continue
        reason = why if kind == "skip" else image_problem(p, max_pixels)
        if reason is None:
            scan.images.append(p)
        else:
            scan.rejected.append((p, reason))
    return scan


def list_images(folder: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Path]:
    """The images directly in ``folder``, sorted; hidden entries, folders, non-images (by
    content), undecodable names and links leading outside the shared data folders are
    left out. ``DatasetError`` when the folder cannot be listed."""
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

    ``min_side`` (optional) shrinks the image so its shorter side is about ``min_side``
    pixels, as early as the format allows: JPEGs are decoded at reduced scale (DCT
    scaling, never materialised at full size); other formats are decoded once, reduced
    by box averaging (``Image.reduce``) in their own mode and the full-size pixels freed
    before any conversion, rotation or resampling. Peak memory is then about one
    full-size decode, instead of the four or five copies the full-size path makes.
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


def _orientation(im: Image.Image, name: str) -> int:
    try:
        return int(im.getexif().get(0x0112) or 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block should not reject a good photo
        log.debug("ignoring unreadable EXIF in %s", name)
        return 1


# EXIF orientation -> the transpose that makes the photo upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# Modes Image.reduce averages correctly without a full-size copy (P would average palette
# indices; LA/RGBA are premultiplied by a full-size conversion inside Pillow).
_REDUCE_NATIVE = frozenset({"L", "RGB", "I", "F", "CMYK", "YCbCr"})
# Rows converted at a time when a mode must be converted before it can be averaged.
_BAND_ROWS = 512


def _reduced(im: Image.Image, factor: int) -> Image.Image:
    """``im`` shrunk ``factor`` times by box averaging, never converting it whole."""
    transparent = "transparency" in im.info
    if im.mode in _REDUCE_NATIVE and not (transparent and im.mode in ("L", "RGB")):
        return im.reduce(factor)
    if im.mode.startswith("I;16"):
        target = "I"
    elif transparent or im.mode in ("PA", "LA", "RGBA", "La", "RGBa"):
        target = "RGBA"
    elif im.mode in ("1", "L"):
        target = "L"
    else:
        target = "RGB"
    w, h = im.size
    out = Image.new(target, (-(-w // factor), -(-h // factor)))
    band = _BAND_ROWS * factor
    for top in range(0, h, band):
        piece = im.crop((0, top, w, min(h, top + band))).convert(target)
        out.paste(piece.reduce(factor), (0, top // factor))
    return out


def _decode(data: bytes, name: str, max_pixels: int, min_side: int | None) -> Image.Image:
    im = _open_checked(io.BytesIO(data), name, max_pixels)
    work = im
    try:
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
            orientation = _orientation(im, name)
            if min_side:
                factor = min(im.size) // min_side
                if factor >= 2:
                    work = _reduced(im, factor)
                    im.close()  # free the full-size pixels before anything else is allocated
            if orientation in _UPRIGHT:
                work = work.transpose(_UPRIGHT[orientation])
            rgb = to_rgb(work)
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


# ---------------------------------------------------------------------------------------
# Per-request budget
# ---------------------------------------------------------------------------------------

# One prediction request (an upload of photos) may ask for at most this much work. Decoding
# is sequential and shrinks as it goes (``min_side``), so memory is bounded by one photo;
# these bound the *time* one client can take: ~20 s of PNG decoding on one core at the
# pixel limit (measured: a 64-megapixel PNG takes about 1 s), phone photos (12 Mpx) are
# far below it.
MAX_PHOTOS_PER_REQUEST = 64
MAX_REQUEST_PIXELS = 1_000_000_000


def _header_pixels(src: Any) -> int:
    """Pixels the header of one photo claims (0 when it is not a readable image: the
    decoder then refuses it on its own)."""
    try:
        if isinstance(src, (bytes, bytearray, memoryview)):
            fh: Any = io.BytesIO(bytes(src))
        elif isinstance(src, (str, os.PathLike)):
            _check_file(Path(src))
            fh = open(src, "rb")  # noqa: SIM115 - closed below
        else:
            return 0
        with fh:
            im = _open_checked(fh, "image", DEFAULT_MAX_PIXELS)
            w, h = im.size
            im.close()
            return w * h
    except (ImageDecodeError, OSError):
        return 0


def check_request_budget(files: Sequence[Any], max_photos: int = MAX_PHOTOS_PER_REQUEST,
                         max_total_pixels: int = MAX_REQUEST_PIXELS) -> int:
    """Refuse (``RequestBudgetError``) a request of more than ``max_photos`` photos or more
    than ``max_total_pixels`` pixels in all, reading headers only; return the total.

    ``files``: ``(name, bytes)`` pairs (uploads) or bare bytes / paths.
    """
    files = list(files)
    if len(files) > max_photos:
        raise RequestBudgetError(
            f"{len(files)} photos at once is more than the limit of {max_photos}; classify them in smaller groups"
        )
    total = 0
    for f in files:
        total += _header_pixels(f[1] if isinstance(f, tuple) else f)
        if total > max_total_pixels:
            raise RequestBudgetError(
                f"these photos hold more than {max_total_pixels / 1e6:,.0f} megapixels in all, the limit for "
                "one request; send fewer or smaller photos (a phone photo is about 12 megapixels)"
            )
    return total
