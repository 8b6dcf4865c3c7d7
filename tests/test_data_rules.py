"""The one-rule-per-concept guarantees of hotdog.data: what an image is (content, not
extension), where a data set sits inside wrapper folders, one header check for discovery
and decoding, and installs that refuse to run without their lock."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import filelock
import pytest
from PIL import Image

from conftest import make_dataset
from hotdog import data
from hotdog.errors import ImageDecodeError, StorageError
from hotdog.paths import data_root


def jpeg_bytes(color=(200, 60, 40), size=(24, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def zip_of(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, blob in entries.items():
            zf.writestr(name, blob)
    return buf.getvalue()


# --- what counts as an image ----------------------------------------------------------------------


def test_content_decides_not_the_extension(tmp_path):
    (tmp_path / "photo").write_bytes(jpeg_bytes())
    (tmp_path / "x.jpg").write_text("not a photo at all")
    (tmp_path / "b.png").write_bytes(jpeg_bytes())  # misnamed, still an image
    (tmp_path / ".hidden.jpg").write_bytes(jpeg_bytes())
    (tmp_path / "sub").mkdir()
    assert data.is_image_file(tmp_path / "photo")
    assert not data.is_image_file(tmp_path / "x.jpg")
    assert not data.is_image_file(tmp_path / "sub")
    assert not data.is_image_file(tmp_path / "missing.jpg")
    assert data.list_images(tmp_path) == [tmp_path / "b.png", tmp_path / "photo"]


def test_jpeg_without_extension_is_discovered(tiny_dataset):
    (tiny_dataset / "train" / "hotdog" / "photo").write_bytes(jpeg_bytes())
    (tiny_dataset / "test" / "hotdog" / "photo").write_bytes(jpeg_bytes())
    (tiny_dataset / "test" / "hotdog" / "x.jpg").write_text("notes")
    report = data.validate_dataset(tiny_dataset)
    assert report.counts["train"]["hotdog"] == 9 and report.counts["test"]["hotdog"] == 5
    assert [s["path"] for s in report.skipped] == ["test/hotdog/x.jpg"]
    splits = data.load_splits(tiny_dataset)
    test_paths = [p for p, _ in splits.test]
    assert tiny_dataset / "test" / "hotdog" / "photo" in test_paths
    # what discovery found is exactly what listing the folder gives
    assert data.list_images(tiny_dataset / "test" / "hotdog") == sorted(p for p, y in splits.test if y == 0)


def test_zip_of_extensionless_photos_installs(tmp_path):
    entries = {f"{split}/{cls}/{i}": jpeg_bytes(color) for split in ("train", "test")
               for cls, color in (("a", (250, 0, 0)), ("b", (0, 0, 250))) for i in range(2)}
    path = data.install_zip(zip_of(entries), "noext", home=tmp_path)
    assert data.validate_dataset(path).counts == {"train": {"a": 2, "b": 2}, "test": {"a": 2, "b": 2}}


# --- one header check -----------------------------------------------------------------------------


def _bomb_header_png(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels (no real pixel data needed for the check)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("name, blob", [
    ("empty.jpg", b""),
    ("page.jpg", b"<html><body>hi</body></html>"),
    ("notes.png", b"just text\n"),
    ("huge.png", _bomb_header_png(9000, 9000)),
    ("zero.png", _bomb_header_png(0, 10)),
])
def test_discovery_skips_for_the_reason_the_decoder_refuses(tiny_dataset, name, blob):
    bad = tiny_dataset / "train" / "hotdog" / name
    bad.write_bytes(blob)
    with pytest.raises(ImageDecodeError) as ei:
        data.decode_image(bad)
    report = data.validate_dataset(tiny_dataset)
    assert report.skipped == [{"path": f"train/hotdog/{name}", "reason": str(ei.value)}]
    assert data.image_problem(bad) == str(ei.value)


def test_pixel_limit_is_the_same_for_header_check_and_decoder(tmp_path):
    p = tmp_path / "p.png"
    Image.new("RGB", (40, 30)).save(p)
    assert data.image_problem(p, max_pixels=1200) is None
    with pytest.raises(ImageDecodeError) as ei:
        data.decode_image(p, max_pixels=1200 - 1)
    assert data.image_problem(p, max_pixels=1200 - 1) == str(ei.value)


# --- the wrapper-folder rule ------------------------------------------------------------------------


def test_find_dataset_root(tmp_path):
    inner = make_dataset(tmp_path / "w" / "outer" / "inner", per_class={"train": 1, "test": 1})
    assert data.find_dataset_root(tmp_path / "w") == inner
    assert data.find_dataset_root(inner) == inner  # stops at train/ + test/
    train_only = tmp_path / "t"
    make_dataset(train_only, per_class={"train": 1})
    assert data.find_dataset_root(train_only) == train_only  # train/ is the set's own level
    lone = tmp_path / "lone"
    (lone / "cat").mkdir(parents=True)
    (lone / "cat" / "0.jpg").write_bytes(jpeg_bytes())
    assert data.find_dataset_root(lone) == lone  # one class of files is not a wrapper
    (tmp_path / "w" / "README.txt").write_text("about")
    assert data.find_dataset_root(tmp_path / "w") == tmp_path / "w"  # not a lone folder any more


def test_discovery_looks_through_a_wrapper_like_install_does(tmp_path):
    make_dataset(tmp_path / "unzipped" / "hotdog", per_class={"train": 2, "test": 1})
    (tmp_path / "unzipped" / "__MACOSX").mkdir()
    report = data.validate_dataset(tmp_path / "unzipped")
    assert report.layout == "split" and report.root == str(tmp_path / "unzipped" / "hotdog")
    assert any("hotdog/" in w for w in report.warnings)
    installed = data.install_zip(zip_of({f"hotdog/{p.relative_to(tmp_path / 'unzipped' / 'hotdog')}": p.read_bytes()
                                         for p in (tmp_path / "unzipped").rglob("*.png")}), "w", home=tmp_path)
    assert data.validate_dataset(installed).counts == report.counts


# --- locks ------------------------------------------------------------------------------------------


def test_install_refuses_to_run_without_its_lock(tmp_path):
    (data_root(tmp_path) / ".hotdog.lock").mkdir(parents=True)  # the lock file cannot be opened
    zbytes = zip_of({f"{s}/{c}/0.jpg": jpeg_bytes() for s in ("train", "test") for c in ("a", "b")})
    with pytest.raises(StorageError):
        data.install_zip(zbytes, "locked", home=tmp_path)
    assert not (data_root(tmp_path) / "locked").exists()


def test_download_refuses_to_run_without_its_lock(tmp_path):
    (data_root(tmp_path) / ".hotdog.lock").mkdir(parents=True)
    with pytest.raises(StorageError):
        data.download_hotdog(home=tmp_path, url="http://127.0.0.1:9/never-fetched.zip", timeout=1)


def test_install_swaps_while_holding_the_lock(tmp_path, monkeypatch):
    from hotdog.data import archive

    seen = []
    real_swap = archive.swap_into_place

    def probing_swap(new, target):
        def other():
            try:
                filelock.FileLock(str(target.parent / ".hotdog.lock"), timeout=0).acquire()
                seen.append("free")
            except filelock.Timeout:
                seen.append("held")

        t = threading.Thread(target=other)
        t.start()
        t.join()
        real_swap(new, target)

    monkeypatch.setattr(archive, "swap_into_place", probing_swap)
    zbytes = zip_of({f"{s}/{c}/0.jpg": jpeg_bytes() for s in ("train", "test") for c in ("a", "b")})
    data.install_zip(zbytes, "x", home=tmp_path)
    assert seen == ["held"]


# --- layering ---------------------------------------------------------------------------------------


def test_data_does_not_import_the_engine():
    code = ("import sys, hotdog.data; "
            "print(sorted(m for m in sys.modules if m in "
            "('hotdog.train', 'hotdog.models', 'hotdog.jobs', 'hotdog.runs')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.strip() == "[]"
