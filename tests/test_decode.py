"""The shared decoder against every hostile photo of issue 7 item 1 (files generated here)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from hotdog.data import Preprocess, decode_image, test_transform, train_transform
from hotdog.errors import ImageDecodeError

SMALL = Preprocess(32, 37)

# Strings that would mean PIL internals leaked into a user-facing message.
PIL_LEAKS = ("cannot identify image file", "PIL", "Traceback", "<_io.", "BytesIO", "decoder error", "errno")


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def noisy(size=(64, 48), mode="RGB", seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    chans = {"RGB": 3, "L": 1}[mode]
    arr = rng.integers(0, 256, (size[1], size[0], chans), dtype=np.uint8)
    return Image.fromarray(arr[:, :, 0] if chans == 1 else arr, mode)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def png_claiming(width: int, height: int) -> bytes:
    """A structurally valid PNG (correct CRCs) whose IHDR claims width x height RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)  # nowhere near enough data: only the header matters
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def assert_clean_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg
    for leak in PIL_LEAKS:
        assert leak not in msg, f"PIL internals leak into {msg!r}"
    assert excinfo.value.__cause__ is None or isinstance(excinfo.value.__cause__, ImageDecodeError)
    return msg


def assert_rgb(im: Image.Image, size=None) -> None:
    assert isinstance(im, Image.Image) and im.mode == "RGB"
    if size is not None:
        assert im.size == size


# --- inputs that must decode correctly ------------------------------------------------------


def test_sixteen_bit_grayscale_png_is_scaled_not_clipped():
    ramp = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    src = Image.fromarray(ramp, "I;16")
    data = encode(src, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I"), "the fixture must really be 16-bit"
    im = decode_image(data)
    assert_rgb(im, (4, 4))
    row = np.asarray(im)[0, :, 0].astype(int)
    # A plain .convert("RGB") clips everything above 255 to white.
    assert abs(row[0] - 0) <= 1 and abs(row[1] - 64) <= 2 and abs(row[2] - 128) <= 2 and row[3] == 255
    px = np.asarray(im)
    assert (px[..., 0] == px[..., 1]).all() and (px[..., 1] == px[..., 2]).all()


def test_32_bit_and_float_grayscale():
    arr = np.array([[0, 1000, 40000, 65535]], dtype=np.int32)
    im = decode_image(encode(Image.fromarray(arr, "I"), "TIFF"))
    vals = np.asarray(im)[0, :, 0].astype(int)
    assert vals[0] == 0 and vals[-1] == 255 and 100 < vals[2] < 200
    farr = np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32)
    im = decode_image(encode(Image.fromarray(farr, "F"), "TIFF"))
    vals = np.asarray(im)[0, :, 0].astype(int)
    assert vals[0] == 0 and abs(vals[2] - 128) <= 1 and vals[3] == 255


def test_cmyk_jpeg_becomes_rgb():
    data = encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95)
    im = decode_image(data)
    assert_rgb(im, (32, 32))
    r, g, b = np.asarray(im).reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 60 and b < 60  # pure red in CMYK


def test_palette_png_with_transparency_is_white_where_transparent():
    im = Image.new("P", (16, 16), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))  # index 0 black, 1 red
    im.paste(1, (8, 0, 16, 16))
    data = encode(im, "PNG", transparency=0)
    out = np.asarray(decode_image(data))
    assert (out[:, :8] == 255).all(), "transparent palette entries must be composited on white, not black"
    assert (out[:, 8:] == (255, 0, 0)).all()


def test_rgba_transparent_areas_become_white():
    arr = np.zeros((16, 16, 4), dtype=np.uint8)
    arr[:, 8:] = (0, 0, 255, 255)           # opaque blue
    arr[:, :8] = (0, 0, 0, 0)               # fully transparent black
    arr[0, 0] = (0, 0, 0, 128)              # half-transparent black -> mid grey
    out = np.asarray(decode_image(encode(Image.fromarray(arr, "RGBA"), "PNG")))
    assert (out[1:, :8] == 255).all()
    assert (out[:, 8:] == (0, 0, 255)).all()
    assert 120 <= out[0, 0, 0] <= 135


def test_grayscale_with_alpha_la():
    arr = np.zeros((8, 8, 2), dtype=np.uint8)
    arr[:, :4] = (50, 255)
    arr[:, 4:] = (50, 0)
    out = np.asarray(decode_image(encode(Image.fromarray(arr, "LA"), "PNG")))
    assert (out[:, :4] == 50).all() and (out[:, 4:] == 255).all()


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    out = np.asarray(decode_image(data)).reshape(-1, 3).mean(axis=0)
    assert out[0] > 200 and out[2] < 60


def test_animated_webp_and_png_use_first_frame():
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    for fmt in ("WEBP", "PNG"):
        data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, lossless=True)
        out = np.asarray(decode_image(data)).reshape(-1, 3).mean(axis=0)
        assert out[0] > 200 and out[2] < 60, fmt


def test_webp():
    src = noisy((40, 30))
    im = decode_image(encode(src, "WEBP", lossless=True))
    assert_rgb(im, (40, 30))
    assert (np.asarray(im) == np.asarray(src)).all()


def test_grayscale_and_bilevel():
    src = noisy((24, 16), "L")
    out = np.asarray(decode_image(encode(src, "PNG")))
    assert out.shape == (16, 24, 3) and (out[..., 0] == np.asarray(src)).all()
    bw = Image.new("1", (8, 8), 1)
    assert (np.asarray(decode_image(encode(bw, "PNG"))) == 255).all()


def test_exif_rotated_jpeg_is_upright():
    # Upright: 20 wide x 40 tall, red on top, blue below.
    upright = Image.new("RGB", (20, 40), (0, 0, 255))
    upright.paste((255, 0, 0), (0, 0, 20, 20))
    # A camera held sideways stores the pixels rotated and says "rotate 90 CW" (orientation 6).
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "JPEG", exif=exif.tobytes(), quality=95)
    assert Image.open(io.BytesIO(data)).size == (40, 20)
    im = decode_image(data)
    assert im.size == (20, 40)
    px = np.asarray(im).astype(int)
    top, bottom = px[5, 10], px[35, 10]
    assert top[0] > 200 and top[2] < 60, f"top should be red, got {top}"
    assert bottom[2] > 200 and bottom[0] < 60, f"bottom should be blue, got {bottom}"


def test_broken_exif_does_not_reject_the_photo():
    data = encode(noisy((16, 16)), "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")
    assert_rgb(decode_image(data), (16, 16))


@pytest.mark.parametrize("size", [(1, 1), (8000, 20), (20, 8000)])
def test_tiny_and_strip_images_decode_and_transform(size):
    im = decode_image(encode(Image.new("RGB", size, (200, 30, 30)), "PNG"))
    assert_rgb(im, size)
    for tf in (train_transform(SMALL), test_transform(SMALL)):
        out = tf(im)
        assert out.shape == (3, 32, 32) and out.dtype == np.float32
        assert np.isfinite(out.asnumpy()).all()


def test_paths_and_file_objects(tmp_path):
    p = tmp_path / "ok.png"
    noisy((10, 10)).save(p)
    assert_rgb(decode_image(p), (10, 10))
    assert_rgb(decode_image(str(p)), (10, 10))
    assert_rgb(decode_image(io.BytesIO(p.read_bytes())), (10, 10))
    with pytest.raises(ImageDecodeError, match="not found"):
        decode_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageDecodeError, match="folder"):
        decode_image(tmp_path)


def test_min_side_shrinks_with_jpeg_draft():
    src = noisy((640, 480))
    for fmt in ("JPEG", "PNG"):
        im = decode_image(encode(src, fmt), min_side=120)
        assert min(im.size) == 120 and im.size == (160, 120), fmt
    small = decode_image(encode(noisy((50, 40)), "PNG"), min_side=120)
    assert small.size == (50, 40), "min_side never upscales"


# --- inputs that must be refused with one readable message ----------------------------------


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(ImageDecodeError) as ei:
        decode_image(p)
    assert "empty" in assert_clean_error(ei) and "empty.jpg" in str(ei.value)
    with pytest.raises(ImageDecodeError):
        decode_image(b"")


def test_html_renamed_jpg(tmp_path):
    p = tmp_path / "photo.jpg"
    p.write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>")
    with pytest.raises(ImageDecodeError) as ei:
        decode_image(p)
    msg = assert_clean_error(ei)
    assert "photo.jpg" in msg and "HTML" in msg


def test_text_renamed_jpg():
    with pytest.raises(ImageDecodeError) as ei:
        decode_image(b"just some notes\nnot a photo\n")
    assert "text" in assert_clean_error(ei)


def test_truncated_jpeg():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False, "nobody may flip this process-wide switch"
    data = encode(noisy((128, 96)), "JPEG", quality=90)
    for cut in (len(data) // 2, len(data) - 20, 400):
        with pytest.raises(ImageDecodeError) as ei:
            decode_image(data[:cut])
        assert_clean_error(ei)
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(data[: len(data) // 2])


def test_no_module_switches_on_truncated_loading():
    import importlib
    import pkgutil

    import hotdog

    for mod in pkgutil.walk_packages(hotdog.__path__, "hotdog."):
        if mod.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(mod.name)
        except ImportError:
            continue  # a module another area has not landed yet
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert Image.MAX_IMAGE_PIXELS is not None, "PIL's own bomb guard must stay on"


def test_truncated_png():
    data = encode(noisy((64, 64)), "PNG")
    with pytest.raises(ImageDecodeError) as ei:
        decode_image(data[: len(data) // 2])
    assert_clean_error(ei)


def test_png_header_claiming_60000_squared_is_refused_before_decoding():
    data = png_claiming(60000, 60000)
    assert len(data) < 200
    with pytest.raises(ImageDecodeError) as ei:
        decode_image(data)
    msg = assert_clean_error(ei)
    assert "too large" in msg


def test_own_pixel_limit_applies_below_pils():
    # 9000x9000 = 81 Mpx: below PIL's own warning threshold, above our 64 Mpx default.
    with pytest.raises(ImageDecodeError, match="too large"):
        decode_image(png_claiming(9000, 9000))
    with pytest.raises(ImageDecodeError, match="too large"):
        decode_image(encode(Image.new("RGB", (100, 100)), "PNG"), max_pixels=5000)


def test_pil_decompression_bomb_warning_becomes_our_error():
    # 10000x10000 = 100 Mpx trips PIL's DecompressionBombWarning; even a caller who raises
    # our limit must get the typed error, never a warning that lets the bomb through.
    with pytest.raises(ImageDecodeError, match="too large"):
        decode_image(png_claiming(10000, 10000), max_pixels=10**12)
    with pytest.raises(ImageDecodeError, match="too large"):
        decode_image(png_claiming(20000, 20000), max_pixels=10**12)  # PIL's hard error


def test_heic_is_unsupported_with_a_clear_message():
    heic = struct.pack(">I", 24) + b"ftypheic" + b"\x00\x00\x00\x00mif1heic" + b"\x00" * 200
    with pytest.raises(ImageDecodeError) as ei:
        decode_image(heic)
    msg = assert_clean_error(ei)
    assert "HEIC" in msg and "not supported" in msg


def test_random_bytes():
    rng = np.random.default_rng(7)
    with pytest.raises(ImageDecodeError) as ei:
        decode_image(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert_clean_error(ei)


def test_other_documents():
    for blob, word in ((b"%PDF-1.7\n...", "PDF"), (b"PK\x03\x04" + b"\x00" * 40, "zip")):
        with pytest.raises(ImageDecodeError, match=word):
            decode_image(blob)


def test_risky_and_exotic_formats_are_refused():
    # EPS would make PIL run Ghostscript; PCX/TGA-style formats have no real magic number.
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"
    with pytest.raises(ImageDecodeError) as ei:
        decode_image(eps)
    assert_clean_error(ei)
    with pytest.raises(ImageDecodeError, match="not a supported image format"):
        decode_image(encode(noisy((8, 8)), "PCX"))


def test_oversized_file_is_refused_before_reading(tmp_path, monkeypatch):
    from hotdog.data import images

    p = tmp_path / "huge.png"
    noisy((32, 32)).save(p)
    monkeypatch.setattr(images, "MAX_IMAGE_FILE_BYTES", 100)
    with pytest.raises(ImageDecodeError, match="too large"):
        decode_image(p)
    with pytest.raises(ImageDecodeError, match="too large"):
        decode_image(io.BytesIO(p.read_bytes()))


def test_fifo_is_refused_not_read(tmp_path):
    import os

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageDecodeError, match="regular file"):
        decode_image(fifo)


def test_unsupported_source_type():
    with pytest.raises(ImageDecodeError):
        decode_image(12345)  # type: ignore[arg-type]


# --- fuzzing --------------------------------------------------------------------------------

SEEDS = [
    encode(noisy((16, 12)), "PNG"),
    encode(noisy((16, 12)), "JPEG", quality=80),
    encode(noisy((16, 12)).convert("P"), "GIF"),
    encode(noisy((12, 8)), "WEBP"),
    encode(noisy((8, 8)), "BMP"),
    encode(noisy((8, 8)), "TIFF"),
]


def _check(data: bytes) -> None:
    try:
        im = decode_image(data, max_pixels=2_000_000)
    except ImageDecodeError as err:
        assert str(err)
        return
    assert im.mode == "RGB" and im.size[0] * im.size[1] <= 2_000_000


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@FUZZ
@given(st.binary(max_size=4096))
def test_fuzz_random_bytes(data):
    _check(data)


@FUZZ
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
    st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_fuzz_mutated_images(seed, flips, cut):
    data = bytearray(seed)
    for pos, val in flips:
        data[pos % len(data)] = val
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    _check(bytes(data))
