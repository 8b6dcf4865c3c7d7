"""install_zip against every hostile archive of issue 7 item 2 (zips built by the tests).

Each case checks three things: a clear typed error, nothing written outside the target
(the whole tmp tree is snapshotted), and a data set previously installed under the same
name still validates with the same files.
"""

from __future__ import annotations

import hashlib
import io
import stat
import struct
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from hotdog.data import ZipLimits, install_zip, installed_datasets, validate_dataset
from hotdog.errors import DatasetError, UnsafeArchiveError
from hotdog.paths import data_root

NAME = "mine"


def png(color=(200, 50, 40), size=(8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def good_entries(prefix="", classes=("cat", "dog"), n=2, splits=("train", "test")) -> dict[str, bytes]:
    out = {}
    for split in splits:
        for ci, cls in enumerate(classes):
            for i in range(n):
                path = f"{prefix}{split}/{cls}/{i}.png" if split else f"{prefix}{cls}/{i}.png"
                out[path] = png((40 + 80 * ci, 90, 200 - 80 * ci))
    return out


def make_zip(entries: dict[str, bytes] | None = None, extra: list[tuple[zipfile.ZipInfo | str, bytes]] = (),
             compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in (entries or {}).items():
            zf.writestr(name, data)
        for info, data in extra:
            zf.writestr(info, data)
    return buf.getvalue()


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder below root with a content hash (symlinks noted, not followed)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "symlink"
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def env(tmp_path):
    """A home with a good data set already installed as NAME, plus a sentinel folder."""
    home = tmp_path / "home"
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "keep.txt").write_text("untouched")
    target = install_zip(make_zip(good_entries()), NAME, home=home)
    assert validate_dataset(target).total == 8
    return tmp_path, home, snapshot(tmp_path)


def assert_nothing_changed(env) -> None:
    tmp_path, home, before = env
    after = snapshot(tmp_path)
    added = sorted(set(after) - set(before) - {"home/data/.hotdog.lock"})
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    assert (added, removed, changed) == ([], [], [])
    report = validate_dataset(data_root(home) / NAME)
    assert report.counts == {"train": {"cat": 2, "dog": 2}, "test": {"cat": 2, "dog": 2}}


def refused(env, data, exc=UnsafeArchiveError, match=None, limits=ZipLimits()) -> str:
    _, home, _ = env
    with pytest.raises(exc, match=match) as ei:
        install_zip(data, NAME, home=home, limits=limits)
    assert_nothing_changed(env)
    msg = str(ei.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


# --- path tricks ------------------------------------------------------------------------------


@pytest.mark.parametrize("evil", [
    "../evil.png",
    "../../outside/evil.png",
    "train/cat/../../../evil.png",
    "train/../../evil.png",
])
def test_zip_slip_dotdot(env, evil):
    tmp_path = env[0]
    msg = refused(env, make_zip(good_entries(), [(evil, png())]), match="zip-slip")
    assert evil in msg
    assert not list(tmp_path.rglob("evil.png"))


def test_absolute_path(env):
    tmp_path = env[0]
    evil = str(tmp_path / "outside" / "abs-evil.png")
    assert evil.startswith("/")
    refused(env, make_zip(good_entries(), [(evil, png())]), match="absolute")
    assert not (tmp_path / "outside" / "abs-evil.png").exists()


@pytest.mark.parametrize("evil", ["C:/Windows/evil.png", "c:evil.png"])
def test_drive_letter(env, evil):
    refused(env, make_zip(good_entries(), [(evil, png())]), match="absolute")


@pytest.mark.parametrize("evil", ["..\\..\\evil.png", "train\\cat\\x.png"])
def test_backslash_paths(env, evil):
    refused(env, make_zip(good_entries(), [(evil, png())]), match="backslash")


def symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("link_target", ["/etc/passwd", "../../outside"])
def test_symlink_entries(env, link_target):
    tmp_path = env[0]
    data = make_zip(good_entries(), [(symlink_info("train/cat/link.png"), link_target.encode())])
    refused(env, data, match="symbolic link")
    assert not [p for p in tmp_path.rglob("*") if p.is_symlink()]


def test_symlink_dir_then_write_through_it(env):
    # Classic two-step: a symlinked folder, then a file "inside" it.
    data = make_zip(good_entries(), [(symlink_info("train/cat/escape"), b"../../../../outside"),
                                     ("train/cat/escape/owned.txt", b"x")])
    refused(env, data, match="symbolic link")
    assert not (env[0] / "outside" / "owned.txt").exists()


def test_device_file_entry(env):
    info = zipfile.ZipInfo("train/cat/fifo.png")
    info.create_system = 3
    info.external_attr = (stat.S_IFIFO | 0o644) << 16
    refused(env, make_zip(good_entries(), [(info, b"")]), match="regular file")


# --- zip bombs ---------------------------------------------------------------------------------


def test_bomb_total_size_limit(env):
    refused(env, make_zip(good_entries(), [("train/cat/big.png", b"\x01" * 50_000)]),
            match="bytes", limits=ZipLimits(max_total_bytes=20_000))


def test_bomb_entry_count_limit(env):
    many = good_entries(n=6)
    msg = refused(env, make_zip(many), match="entries", limits=ZipLimits(max_entries=10))
    assert "24" in msg


def test_bomb_entry_ratio(env):
    # 40 MB of zeros deflates to ~40 KB: a 1000x entry.
    # The overall-ratio check is switched off so this exercises the per-entry one alone.
    refused(env, make_zip(good_entries(), [("train/cat/zeros.png", bytes(40_000_000))]), match="zeros.png expands",
            limits=ZipLimits(ratio_min_total_bytes=10**15))


def test_bomb_overall_ratio(env):
    # Many entries each under the per-entry threshold, together highly compressible.
    extra = [(f"train/cat/z{i}.png", bytes(600_000)) for i in range(20)]
    refused(env, make_zip(good_entries(), extra), match="overall")


def lie_about_size(data: bytes, entry: str, declared: int) -> bytes:
    """Rewrite the uncompressed size of one entry in its local and central headers."""
    blob = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = zf.getinfo(entry)
    struct.pack_into("<I", blob, info.header_offset + 22, declared)
    name = entry.encode()
    pos = 0
    while True:
        cd = blob.find(b"PK\x01\x02", pos)
        assert cd >= 0
        n = struct.unpack_from("<H", blob, cd + 28)[0]
        if bytes(blob[cd + 46: cd + 46 + n]) == name:
            struct.pack_into("<I", blob, cd + 24, declared)
            return bytes(blob)
        pos = cd + 4


def test_bomb_headers_lie_about_size(env):
    data = make_zip(good_entries(), [("train/cat/liar.png", bytes(3_000_000))])
    liar = lie_about_size(data, "train/cat/liar.png", 1000)
    with zipfile.ZipFile(io.BytesIO(liar)) as zf:
        assert zf.getinfo("train/cat/liar.png").file_size == 1000  # the checks see a tiny file
    refused(env, liar, match="corrupt.*liar.png")
    big = [p for p in env[0].rglob("*") if p.is_file() and p.stat().st_size > 100_000]
    assert big == []


def test_extraction_counts_real_bytes(tmp_path, monkeypatch):
    # Even if the up-front header checks were fooled, the copy loop counts the bytes it
    # really writes and stops at the limit.
    from hotdog.data import archive, safe_extract

    monkeypatch.setattr(archive, "_check_zip", lambda zf, limits: [
        (i, i.filename.split("/")) for i in zf.infolist()])
    zbytes = make_zip({"a/x.png": bytes(3_000_000)})
    with zipfile.ZipFile(io.BytesIO(zbytes)) as zf:
        with pytest.raises(UnsafeArchiveError, match="zip bomb"):
            safe_extract(zf, tmp_path / "out", ZipLimits(max_total_bytes=100_000))
    assert (tmp_path / "out" / "a" / "x.png").stat().st_size <= 100_000


# --- archives that are not data sets ------------------------------------------------------------


def test_nested_zip(env):
    inner = make_zip(good_entries())
    msg = refused(env, make_zip(good_entries(), [("train/cat/more.zip", inner)]), match="nested")
    assert "more.zip" in msg


def test_no_images(env):
    refused(env, make_zip({"train/cat/a.txt": b"x", "train/dog/b.txt": b"y", "readme.md": b"hi"}),
            DatasetError, match="no image")


def test_empty_zip(env):
    refused(env, make_zip({}), DatasetError, match="no image")


def test_one_class_only(env):
    refused(env, make_zip(good_entries(classes=("cat",))), DatasetError, match="at least 2")


def test_flat_one_class_only(env):
    refused(env, make_zip(good_entries(classes=("cat",), splits=(None,))), DatasetError, match="at least 2")


def test_different_classes_in_train_and_test(env):
    entries = good_entries()
    entries = {k.replace("test/dog/", "test/bird/"): v for k, v in entries.items()}
    msg = refused(env, make_zip(entries), DatasetError, match="different")
    assert "bird" in msg and "dog" in msg


def test_empty_class(env):
    entries = {k: v for k, v in good_entries().items() if not k.startswith("test/dog/")}
    extra = [("test/dog/notes.txt", b"no images here")]
    refused(env, make_zip(entries, extra), DatasetError, match="dog")


def test_not_a_zip(env):
    refused(env, b"<html>surprise</html>", DatasetError, match="not a valid zip")


def test_bad_names_refused(tmp_path):
    for bad in ("../x", "", ".hidden", "a/b", "x" * 100, "a\\b", "trail.", "trail ", "..", "-x", "nul\x00"):
        with pytest.raises(DatasetError, match="name"):
            install_zip(make_zip(good_entries()), bad, home=tmp_path)
    assert not data_root(tmp_path).exists() or list(data_root(tmp_path).iterdir()) == []


# --- the happy paths ------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "my-set/", "outer/inner/"])
def test_install_with_or_without_top_folder(tmp_path, prefix):
    path = install_zip(make_zip(good_entries(prefix=prefix)), "pets", home=tmp_path)
    assert path == data_root(tmp_path) / "pets"
    report = validate_dataset(path)
    assert report.layout == "split" and report.classes == ["cat", "dog"] and report.total == 8
    assert installed_datasets(tmp_path) == [path]
    assert sorted(p.name for p in data_root(tmp_path).iterdir() if p.name != ".hotdog.lock") == ["pets"]


def test_install_flat_layout_and_macos_litter(tmp_path):
    entries = good_entries(prefix="pets/", splits=(None,), n=5)
    extra = [("__MACOSX/pets/._0.png", b"junk"), ("pets/.DS_Store", b"junk"), ("pets/cat/._1.png", b"junk")]
    path = install_zip(make_zip(entries, extra), "flat", home=tmp_path)
    report = validate_dataset(path)
    assert report.layout == "flat" and report.skipped == []
    assert report.counts == {"train": {"cat": 4, "dog": 4}, "test": {"cat": 1, "dog": 1}}
    assert not (path / "__MACOSX").exists()


def test_install_from_path_and_replace(tmp_path):
    zpath = tmp_path / "set.zip"
    zpath.write_bytes(make_zip(good_entries()))
    first = install_zip(zpath, "pets", home=tmp_path / "h")
    second = install_zip(make_zip(good_entries(classes=("ant", "bee", "cow"))), "pets", home=tmp_path / "h",
                         replace=True)
    assert first == second
    assert validate_dataset(second).classes == ["ant", "bee", "cow"]
    assert [p.name for p in data_root(tmp_path / "h").iterdir() if p.name != ".hotdog.lock"] == ["pets"]


def test_skipped_files_do_not_block_install(tmp_path):
    path = install_zip(make_zip(good_entries(), [("train/cat/broken.jpg", b"<html></html>")]), "x", home=tmp_path)
    report = validate_dataset(path)
    assert [s["path"] for s in report.skipped] == ["train/cat/broken.jpg"]


def test_friendly_names_allowed(tmp_path):
    for ok in ("Holiday photos (2)", "pets_v1.2", "Café-set"):
        assert install_zip(make_zip(good_entries()), ok, home=tmp_path).name == ok
