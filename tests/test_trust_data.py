"""The "Trust" issue, data side: folders confined to allowed roots, bounded photo decoding,
installs that never silently replace a data set, non-UTF-8 names, leftovers of killed
installs, a read-only HOTDOG_HOME, unreadable folders and the one data set name rule."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_dataset, make_image
from hotdog import data
from hotdog.data import images
from hotdog.errors import AccessError, DatasetError, HotdogError, RequestBudgetError, UnsafeArchiveError
from hotdog.paths import data_root

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """HOTDOG_HOME in tmp, no HOTDOG_DATA / HOTDOG_DATA_ROOTS from the environment."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOTDOG_HOME", str(home))
    monkeypatch.delenv("HOTDOG_DATA", raising=False)
    monkeypatch.delenv("HOTDOG_DATA_ROOTS", raising=False)
    data_root(home).mkdir(parents=True)
    return home


def jpeg(path: Path, color=(200, 60, 40), size=(40, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, "JPEG")
    return path


def secrets_folder(base: Path) -> Path:
    """The issue's folder: class folders 'keys' and 'photos', a JPEG and a secret in each."""
    jpeg(base / "keys" / "a.jpg")
    (base / "keys" / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    jpeg(base / "photos" / "b.jpg", (40, 90, 200))
    (base / "photos" / "db_password.txt").write_text("hunter2\n")
    return base


def no_server_path(text: str, *paths: Path) -> None:
    for p in paths:
        assert str(p) not in text, text
    assert "/tmp" not in text and "/root" not in text and "/etc" not in text, text


# ------------------------------------------------------------------ 1. allowed roots


def test_allowed_roots_from_home_data_and_roots_list(roots, tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    (tmp_path / "link-to-b").symlink_to(b, target_is_directory=True)
    monkeypatch.setenv("HOTDOG_DATA", str(tmp_path / "offered"))
    monkeypatch.setenv("HOTDOG_DATA_ROOTS", os.pathsep.join([str(a), "", "relative/x", str(tmp_path / "link-to-b"), str(a)]))
    assert data.allowed_roots() == [
        Path(os.path.realpath(data_root(roots))), Path(os.path.realpath(tmp_path / "offered")),
        Path(os.path.realpath(a)), Path(os.path.realpath(b)),
    ]


def test_outside_folders_are_refused_alike_and_name_no_path(roots, tmp_path):
    outside = secrets_folder(tmp_path / "server" / "stuff")
    (tmp_path / "server" / ".ssh").mkdir()
    messages = set()
    for typed in (str(outside), "/etc", str(tmp_path / "server" / ".ssh"), str(tmp_path / "server" / "no-such"),
                  "~/.ssh", "/proc", "../../..", "~nosuchuser/x", "a\x00b", str(data_root(roots)) + "/../.."):
        with pytest.raises(AccessError) as err:
            data.resolve_user_folder(typed)
        assert isinstance(err.value, DatasetError) and isinstance(err.value, HotdogError)
        no_server_path(str(err.value), outside, tmp_path)
        messages.add(str(err.value))
    assert len(messages) == 1  # existing or not, a file or a folder: the same sentence


def test_links_out_of_an_allowed_root_are_refused(roots, tmp_path):
    outside = secrets_folder(tmp_path / "outside")
    (data_root(roots) / "sneaky").symlink_to(outside, target_is_directory=True)
    with pytest.raises(AccessError):
        data.resolve_user_folder(str(data_root(roots) / "sneaky"))
    with pytest.raises(AccessError):
        data.resolve_user_folder("sneaky")


def test_folders_inside_allowed_roots_resolve(roots, tmp_path, monkeypatch):
    inside = make_dataset(data_root(roots) / "pets")
    assert data.resolve_user_folder(f"  {inside}  ") == Path(os.path.realpath(inside))
    assert data.resolve_user_folder("pets") == Path(os.path.realpath(inside))  # relative: under data/
    extra = make_dataset(tmp_path / "srv" / "photos" / "set1")
    monkeypatch.setenv("HOTDOG_DATA_ROOTS", str(tmp_path / "srv" / "photos"))
    assert data.resolve_user_folder(str(extra)) == Path(os.path.realpath(extra))
    with pytest.raises(DatasetError) as err:
        data.resolve_user_folder(str(tmp_path / "srv" / "photos" / "missing"))
    assert not isinstance(err.value, AccessError) and "'missing'" in str(err.value)
    no_server_path(str(err.value), tmp_path)
    with pytest.raises(DatasetError, match="type the folder"):
        data.resolve_user_folder("   ")


def test_dataset_errors_name_paths_relative_to_the_dataset(tmp_path):
    cases = []
    one = tmp_path / "one"
    make_image(one / "only" / "a.png", (1, 2, 3))
    cases.append(one)
    empty_class = make_dataset(tmp_path / "empty-class")
    for p in (empty_class / "test" / "hotdog").iterdir():
        p.write_bytes(b"<html></html>")
    cases.append(empty_class)
    test_only = tmp_path / "test-only"
    make_image(test_only / "test" / "a" / "x.png", (1, 2, 3))
    cases += [test_only, tmp_path / "missing"]
    flat_empty = tmp_path / "flat"
    make_image(flat_empty / "a" / "x.png", (1, 2, 3))
    (flat_empty / "b").mkdir()
    cases.append(flat_empty)
    for case in cases:
        with pytest.raises(DatasetError) as err:
            data.validate_dataset(case)
        no_server_path(str(err.value), tmp_path)
    with pytest.raises(DatasetError, match=r"class 'hotdog' has no readable images \(in the folder 'test'\)"):
        data.validate_dataset(empty_class)


def test_links_inside_a_dataset_do_not_lead_out(roots, tmp_path):
    outside = secrets_folder(tmp_path / "outside")
    make_image(outside / "loot" / "c.png", (9, 9, 9))
    root = make_dataset(data_root(roots) / "pets", per_class={"train": 3, "test": 2})
    (root / "train" / "hotdog" / "leak.png").symlink_to(outside / "loot" / "c.png")
    (root / "train" / "hotdog" / "key").symlink_to(outside / "keys" / "id_rsa")
    (root / "train" / "keys").symlink_to(outside / "keys", target_is_directory=True)
    (root / "test" / "keys").symlink_to(outside / "keys", target_is_directory=True)
    shared = make_dataset(data_root(roots) / "other", per_class={"train": 1})
    (root / "train" / "not-hotdog" / "shared.png").symlink_to(next((shared / "train" / "hotdog").iterdir()))
    report = data.validate_dataset(root)
    assert report.classes == ["hotdog", "not-hotdog"]  # the linked 'keys' folder is no class
    assert report.counts["train"] == {"hotdog": 3, "not-hotdog": 4}  # a link inside the roots is followed
    skipped = {s["path"]: s["reason"] for s in report.skipped}
    assert set(skipped) == {"train/hotdog/leak.png", "train/hotdog/key", "train/keys", "test/keys"}
    assert all("outside the shared data folders" in r for r in skipped.values())
    text = json.dumps(report.to_dict())
    assert "id_rsa" not in text and "c.png" not in text and "loot" not in text
    splits = data.load_splits(root)
    assert not any("leak" in str(p) for p, _ in splits.train)
    assert not any(Path(p).name == "leak.png" for p in data.list_images(root / "train" / "hotdog"))
    # A folder given on the command line, outside the roots, keeps its own internal links.
    cli = make_dataset(tmp_path / "anywhere" / "set", per_class={"train": 2, "test": 2})
    (cli / "train" / "hotdog" / "again.png").symlink_to(cli / "test" / "hotdog" / "000.png")
    (cli / "train" / "hotdog" / "out.png").symlink_to(outside / "loot" / "c.png")
    report = data.validate_dataset(cli)
    assert report.counts["train"]["hotdog"] == 3 and [s["path"] for s in report.skipped] == ["train/hotdog/out.png"]


def test_streamlit_binds_to_localhost_by_default():
    import tomllib

    conf = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert conf["server"]["address"] == "localhost"


# ------------------------------------------------------------------ 2. bounded decoding


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def noisy(size, mode="RGB", seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    arr[: size[1] // 2] //= 2
    return Image.fromarray(arr, "RGB")


def _in_mode(base: Image.Image, mode: str) -> tuple[Image.Image, str]:
    if mode == "RGB+tRNS":
        im = base.copy()
        im.info["transparency"] = (0, 0, 0)
        return im, "PNG"
    if mode == "P+tRNS":
        im = base.convert("P")
        im.info["transparency"] = 0
        return im, "PNG"
    if mode == "I;16":
        return Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 200), "PNG"
    if mode in ("I", "F"):
        return base.convert("L").convert(mode), "TIFF"
    if mode == "CMYK":
        return base.convert("CMYK"), "TIFF"
    return base.convert(mode), "PNG"


@pytest.mark.parametrize("mode", ["RGBA", "L", "LA", "P", "P+tRNS", "1", "I;16", "I", "F", "CMYK", "RGB+tRNS"])
def test_reduced_decode_never_converts_at_full_size_and_matches(mode, monkeypatch):
    """Converting a 64-megapixel palette/gray/16-bit photo to RGB(A) before shrinking it
    costs 3-4x its decoded size; the reduced decode converts only reduced pixels."""
    base = noisy((110, 80)).resize((1100, 800), Image.BILINEAR)  # smooth enough to compare
    im, fmt = _in_mode(base, mode)
    raw = encode(im, fmt)
    monkeypatch.setattr(images, "_BAND_ROWS", 16, raising=False)  # bands of 64 rows: several per photo
    converted = []
    real_convert = Image.Image.convert
    monkeypatch.setattr(Image.Image, "convert", lambda self, *a, **k: converted.append(self.size) or real_convert(self, *a, **k))
    small = data.decode_image(raw, min_side=200)
    assert max((w * h for w, h in converted), default=0) < 1100 * 800 // 2, converted
    monkeypatch.setattr(Image.Image, "convert", real_convert)
    full = data.decode_image(raw)
    assert small.mode == "RGB" and small.size == (275, 200)
    ref = np.asarray(full.resize(small.size, Image.BOX), np.float32)
    assert np.abs(np.asarray(small, np.float32) - ref).mean() < 6, mode


def test_reduced_decode_rotates_reduced_pixels_and_keeps_photos_upright(monkeypatch):
    transposed = []
    real_transpose = Image.Image.transpose
    monkeypatch.setattr(Image.Image, "transpose", lambda self, m: transposed.append(self.size) or real_transpose(self, m))
    stored = Image.new("RGB", (1200, 600), (255, 0, 0))
    stored.paste((0, 0, 255), (0, 0, 600, 600))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to view
    for fmt in ("JPEG", "PNG"):
        raw = encode(stored, fmt, exif=exif.tobytes())
        for min_side in (None, 100):
            im = np.asarray(data.decode_image(raw, min_side=min_side), np.float32)
            h, w, _ = im.shape
            assert h > w  # portrait once upright
            top, bottom = im[: h // 4].mean(axis=(0, 1)), im[-h // 4:].mean(axis=(0, 1))
            assert top[2] > 200 and bottom[0] > 200, (fmt, min_side)  # blue half went to the top
            if min_side:  # rotating costs a copy: only ever of the reduced photo
                assert max(min(size) for size in transposed) < 2 * min_side, (fmt, transposed)
            transposed.clear()


def test_request_budget_reads_headers_only(monkeypatch):
    small = encode(Image.new("RGB", (100, 100)), "PNG")
    monkeypatch.setattr(images, "_decode", lambda *a, **k: pytest.fail("the budget must not decode"))
    assert data.check_request_budget([("a.png", small)] * 3) == 30_000
    assert data.check_request_budget([("x", b"not an image"), b"", ("a.png", small)]) == 10_000
    with pytest.raises(RequestBudgetError, match="65 photos at once is more than the limit of 64"):
        data.check_request_budget([("a.png", small)] * 65)
    with pytest.raises(RequestBudgetError, match="megapixels"):
        data.check_request_budget([("a.png", small)] * 3, max_total_pixels=25_000)


def test_classify_photos_budget_and_display_size(monkeypatch):
    from hotdog import models, predict

    seen = []

    def fake_topk(source, imgs, k=5):
        seen.extend(im.size for im in imgs)
        return [[{"index": 934, "name": "hotdog", "probability": 0.9}] for _ in imgs]

    monkeypatch.setattr(models, "imagenet_topk", fake_topk)
    big = encode(noisy((2400, 1600)), "JPEG")
    res = predict.classify_photos([("big.jpg", big), ("bad.txt", b"hello")], "efficientnet_lite0")
    assert seen == [(768, 512)] and res[0].image.size == (768, 512) and res[0].label == "hotdog"
    assert res[1].error and "text file" in res[1].error
    with pytest.raises(RequestBudgetError):
        predict.classify_photos([("big.jpg", big)] * 65, "efficientnet_lite0")


_RSS_CHILD = textwrap.dedent("""
    import io, sys
    sys.path.insert(0, sys.argv[1])
    from PIL import Image
    from hotdog import models, predict

    raw = open(sys.argv[2], "rb").read()

    def peak_mb():
        # VmHWM is this process's own peak RSS. ru_maxrss is not: Linux carries the
        # parent's high-water mark across fork+exec, so pytest's own ~400 MB would hide
        # everything below it.
        with open("/proc/self/status") as fh:
            return next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:")) // 1024
    # The network is not what this measures (and needs weights): top-k is stubbed, its
    # preprocessing input is what classify_photos hands it.
    models.imagenet_topk = lambda source, imgs, k=5: [[{"index": 0, "name": "x", "probability": 1.0}] for _ in imgs]
    small = io.BytesIO(); Image.new("RGB", (64, 64)).save(small, "PNG")
    predict.classify_photos([("warm.png", small.getvalue())], "efficientnet_lite0")
    base = peak_mb()
    res = predict.classify_photos([(f"p{i}.png", raw) for i in range(10)], "efficientnet_lite0")
    peak = peak_mb()
    assert all(r.ok for r in res), [r.error for r in res]
    print(len(raw), base, peak, res[0].image.size[0], res[0].image.size[1])
""")


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc (VmHWM)")
def test_predict_memory_stays_bounded_for_huge_pngs(tmp_path):
    # The upload: a flat 7990x7990 PNG (~200 KB) ten times (~2 MB in all). Built
    # here, not in the child, so building it does not raise the child's high-water mark.
    im = Image.new("RGB", (7990, 7990), (200, 120, 40))
    for y in range(0, 7990, 400):
        im.paste((30, 200, 60), (0, y, 7990, y + 40))
    im.save(tmp_path / "big.png", "PNG", compress_level=9)
    del im
    proc = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(REPO), str(tmp_path / "big.png")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    size, base_mb, peak_mb, w, h = map(int, proc.stdout.split())
    print(f"PNG {size:,} bytes x10: RSS {base_mb} MB -> {peak_mb} MB (+{peak_mb - base_mb} MB), kept {w}x{h}")
    assert size < 400_000
    assert peak_mb - base_mb < 500
    assert (w, h) == (512, 512)


# ------------------------------------------------------------------ 4. installs never silently replace


def pets_zip(classes=("cat", "dog"), n=2, prefix="") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for split in ("train", "test"):
            for ci, cls in enumerate(classes):
                for i in range(n):
                    zf.writestr(f"{prefix}{split}/{cls}/{i}.png", encode(Image.new("RGB", (8, 6), (40 + 80 * ci, 90, 9)), "PNG"))
    return buf.getvalue()


def test_install_zip_keeps_an_existing_set_and_picks_a_new_name(tmp_path):
    first = data.install_zip(pets_zip(("hotdog", "not-hotdog")), "small", home=tmp_path)
    second = data.install_zip(pets_zip(("cat", "dog")), "small", home=tmp_path)
    third = data.install_zip(pets_zip(("ant", "bee")), "small", home=tmp_path)
    assert (first.name, second.name, third.name) == ("small", "small-2", "small-3")
    assert data.validate_dataset(first).classes == ["hotdog", "not-hotdog"]  # untouched
    assert data.validate_dataset(second).classes == ["cat", "dog"]
    replaced = data.install_zip(pets_zip(("ant", "bee")), "small", home=tmp_path, replace=True)
    assert replaced == first and data.validate_dataset(first).classes == ["ant", "bee"]
    long = "x" * 64
    data.install_zip(pets_zip(), long, home=tmp_path)
    again = data.install_zip(pets_zip(), long, home=tmp_path)
    assert again.name == "x" * 62 + "-2" and data.check_dataset_name(again.name) == again.name


def test_cli_install_zip_says_when_it_renamed(tmp_path, capsys, hotdog_home):
    from test_data import run_cli

    (tmp_path / "small.zip").write_bytes(pets_zip())
    assert run_cli(["install-zip", str(tmp_path / "small.zip")], capsys)[0] == 0
    code, out, _ = run_cli(["install-zip", str(tmp_path / "small.zip"), "--json"], capsys)
    doc = json.loads(out)
    assert code == 0 and doc["name"] == "small-2" and doc["requested_name"] == "small" and doc["renamed"]
    code, out, _ = run_cli(["install-zip", str(tmp_path / "small.zip")], capsys)
    assert "already exists" in out and "'small-3'" in out and "--replace" in out
    code, out, _ = run_cli(["install-zip", str(tmp_path / "small.zip"), "--replace", "--json"], capsys)
    assert json.loads(out)["name"] == "small"


def test_fingerprint_follows_content_not_location(tmp_path):
    a = make_dataset(tmp_path / "a", per_class={"train": 3, "test": 2})
    fa = data.fingerprint(data.load_splits(a))
    assert fa.startswith("sha256:") and len(fa) == 7 + 64
    import shutil

    shutil.copytree(a, tmp_path / "elsewhere" / "b")
    assert data.fingerprint(data.load_splits(tmp_path / "elsewhere" / "b")) == fa  # moved, same content
    victim = a / "train" / "hotdog" / "001.png"
    raw = bytearray(victim.read_bytes())
    make_image(victim, (1, 200, 3), seed=99)  # same size and name, other pixels
    assert data.fingerprint(data.load_splits(a)) != fa
    victim.write_bytes(bytes(raw))
    assert data.fingerprint(data.load_splits(a)) == fa
    victim.rename(a / "train" / "hotdog" / "renamed.png")
    assert data.fingerprint(data.load_splits(a)) != fa
    victim.parent.joinpath("renamed.png").rename(a / "train" / "not-hotdog" / "001.png")  # other class
    assert data.fingerprint(data.load_splits(a)) != fa


def test_fingerprint_reads_at_most_one_mib_per_file(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "a", per_class={"train": 2, "test": 1})
    big = root / "train" / "hotdog" / "000.png"
    big.write_bytes(big.read_bytes() + b"\0" * (3 << 20))  # trailing junk: still an image
    splits = data.load_splits(root)
    before = data.fingerprint(splits)
    with open(big, "r+b") as fh:  # a change past the first MiB, same size: not seen (bounded cost)
        fh.seek(2 << 20)
        fh.write(b"\1")
    assert data.fingerprint(splits) == before
    with open(big, "ab") as fh:  # but any change of size is
        fh.write(b"\0")
    assert data.fingerprint(splits) != before


# ------------------------------------------------------------------ 7. names that are not UTF-8


def test_undecodable_class_folder_is_refused_with_an_escaped_name(tmp_path):
    root = make_dataset(tmp_path / "set")
    os.rename(root / "train" / "hotdog", os.fsencode(root / "train") + b"/caf\xe9")
    os.rename(root / "test" / "hotdog", os.fsencode(root / "test") + b"/caf\xe9")
    for fn in (data.validate_dataset, data.load_splits):
        with pytest.raises(DatasetError) as err:
            fn(root)
        msg = str(err.value)
        assert "caf\\xe9" in msg and "UTF-8" in msg
        msg.encode("utf-8")  # showable: no lone surrogates
        no_server_path(msg, tmp_path)


def test_undecodable_and_control_file_names_are_skipped_escaped(tmp_path):
    root = make_dataset(tmp_path / "set")
    cls = os.fsencode(root / "train" / "hotdog")
    os.rename(os.path.join(cls, b"000.png"), os.path.join(cls, b"bad\xff.png"))
    os.rename(os.path.join(cls, b"001.png"), os.path.join(cls, b"new\nline.png"))
    report = data.validate_dataset(root)
    assert report.counts["train"]["hotdog"] == 6
    assert {s["path"] for s in report.skipped} == {"train/hotdog/bad\\xff.png", "train/hotdog/new\\nline.png"}
    json.dumps(report.to_dict(), ensure_ascii=False).encode("utf-8")
    splits = data.load_splits(root)
    assert all(str(p).encode("utf-8") for p, _ in splits.train)


def _zip_with_bad_utf8_name() -> bytes:
    raw = pets_zip(prefix="café/")  # non-ASCII: zipfile sets the UTF-8 flag
    assert b"caf\xc3\xa9" in raw
    return raw.replace(b"caf\xc3\xa9", b"caf\xe9\xe9")  # same length, not UTF-8 any more


def test_zip_with_a_false_utf8_flag_is_refused_cleanly(tmp_path, capsys, hotdog_home):
    from test_data import run_cli

    with pytest.raises(UnsafeArchiveError, match="not valid UTF-8"):
        data.install_zip(_zip_with_bad_utf8_name(), "x", home=tmp_path)
    assert [p.name for p in data_root(tmp_path).iterdir() if p.name != ".hotdog.lock"] == []
    (tmp_path / "bad.zip").write_bytes(_zip_with_bad_utf8_name())
    code, _, err = run_cli(["install-zip", str(tmp_path / "bad.zip")], capsys)
    assert code == 1 and "not valid UTF-8" in err
    # Without the flag names are cp437, always decodable: such a zip installs.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for split in ("train", "test"):
            for cls in ("a", "b"):
                info = zipfile.ZipInfo(f"{split}/{cls}/x.png")
                zf.writestr(info, encode(Image.new("RGB", (8, 6)), "PNG"))
    raw = buf.getvalue().replace(b"train/a/x.png", b"train/a/\xe9.png").replace(b"test/a/x.png", b"test/a/\xe9.png")
    path = data.install_zip(raw, "legacy", home=tmp_path)  # no UTF-8 flag: cp437, always decodable
    assert data.validate_dataset(path).total == 4


# ------------------------------------------------------------------ 9. leftovers, read-only home


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_killed_installs_are_cleaned_on_the_next_install(tmp_path):
    droot = data_root(tmp_path)
    data.install_zip(pets_zip(("a", "b")), "pets", home=tmp_path)
    data.install_zip(pets_zip(("c", "d")), "gone", home=tmp_path)
    dead, me = _dead_pid(), os.getpid()
    (droot / f".install-p{dead}-abc" / "train").mkdir(parents=True)
    (droot / f".old-p{dead}-t1-pets" / "x").mkdir(parents=True)  # after the 2nd rename: delete
    os.rename(droot / "gone", droot / f".old-p{dead}-t2-gone")  # between the renames: restore
    (droot / f".install-p{me}-live").mkdir()  # a running install (ours): kept
    (droot / f".install-p{me}-ancient").mkdir()
    (droot / ".install-legacy-young").mkdir()
    (droot / ".install-legacy-old").mkdir()
    (droot / ".someone-elses").mkdir()
    hour_ago = time.time() - 2 * 3600
    for n in (f".install-p{me}-ancient", ".install-legacy-old"):
        os.utime(droot / n, (hour_ago, hour_ago))
    data.install_zip(pets_zip(("e", "f")), "new", home=tmp_path)
    left = sorted(p.name for p in droot.iterdir())
    assert left == sorted([".hotdog.lock", f".install-p{me}-live", ".install-legacy-young", ".someone-elses",
                           "gone", "new", "pets"])
    assert data.validate_dataset(droot / "gone").classes == ["c", "d"]


def test_install_killed_mid_swap_is_recovered(tmp_path):
    """A real kill -9 between the two renames of a replace: the next install restores the
    old set (instead of losing it) and removes the staging folder."""
    data.install_zip(pets_zip(("a", "b")), "pets", home=tmp_path)
    (tmp_path / "new.zip").write_bytes(pets_zip(("c", "d")))
    child = textwrap.dedent("""
        import os, signal, sys
        sys.path.insert(0, sys.argv[1])
        from hotdog.data import archive
        real, calls = os.rename, []
        def rename(a, b):
            calls.append(1)
            real(a, b)
            if len(calls) == 1:  # the old set moved aside, the new one not yet in place
                os.kill(os.getpid(), signal.SIGKILL)
        archive.os.rename = rename
        archive.install_zip(sys.argv[2], "pets", home=sys.argv[3], replace=True)
    """)
    proc = subprocess.run([sys.executable, "-c", child, str(REPO), str(tmp_path / "new.zip"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    droot = data_root(tmp_path)
    names = sorted(p.name for p in droot.iterdir())
    assert "pets" not in names and any(n.startswith(".old-p") for n in names)
    assert any(n.startswith(".install-p") for n in names)
    data.install_zip(pets_zip(("e", "f")), "other", home=tmp_path)
    assert sorted(p.name for p in droot.iterdir()) == [".hotdog.lock", "other", "pets"]
    assert data.validate_dataset(droot / "pets").classes == ["a", "b"]


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    import tempfile

    t = tmp_path / "systmp"
    t.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(t))
    return t


def test_weights_cache_falls_back_when_home_cannot_be_written(tmp_path, private_tmp, caplog):
    from hotdog import efficientnet as E

    home = tmp_path / "ro-home"
    home.mkdir()
    (home / "cache").write_text("not a folder")  # mkdir fails even for root
    with caplog.at_level("WARNING", logger="hotdog.efficientnet"):
        path = E.cached_params_path(home=home)
    assert path.parent == private_tmp / f"hotdog-cache-{os.getuid()}" and path.is_file()
    assert "cannot write the weights cache" in caplog.text
    assert oct(path.parent.stat().st_mode & 0o777) == oct(0o700)
    mtime = path.stat().st_mtime_ns
    assert E.cached_params_path(home=home) == path and path.stat().st_mtime_ns == mtime  # no reconversion
    net = E.efficientnet_lite0(home=home)
    assert net.output.weight.shape == (1000, E.HEAD_CHANNELS)


def test_weights_cache_fallback_must_be_private(tmp_path, private_tmp):
    from hotdog import efficientnet as E
    from hotdog.errors import ModelError

    shared = private_tmp / f"hotdog-cache-{os.getuid()}"
    shared.mkdir()
    shared.chmod(0o777)
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "cache").write_text("x")
    with pytest.raises(ModelError, match="not a private folder"):
        E.cached_params_path(home=tmp_path / "h")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores folder permissions")
def test_weights_cache_falls_back_on_a_read_only_home(tmp_path, private_tmp):
    from hotdog import efficientnet as E

    home = tmp_path / "ro"
    home.mkdir()
    home.chmod(0o555)
    try:
        assert E.cached_params_path(home=home).parent == private_tmp / f"hotdog-cache-{os.getuid()}"
    finally:
        home.chmod(0o755)


# ------------------------------------------------------------------ 10. unreadable folders, names


def test_unreadable_class_folder_is_a_clear_refusal(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "set")
    locked = root / "train" / "hotdog"
    real_iterdir = Path.iterdir

    def iterdir(self):
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(DatasetError, match=r"the class folder 'train/hotdog' cannot be read \(permission denied\)") as err:
        data.validate_dataset(root)
    no_server_path(str(err.value), tmp_path)


def test_unreadable_entries_are_skipped_not_a_crash(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "set")
    odd = root / "train" / "hotdog" / "000.png"
    real_is_dir = Path.is_dir

    def is_dir(self):
        if self == odd:
            raise PermissionError(13, "Permission denied", str(self))
        return real_is_dir(self)

    monkeypatch.setattr(Path, "is_dir", is_dir)
    report = data.validate_dataset(root)
    assert report.counts["train"]["hotdog"] == 7
    assert report.skipped == [{"path": "train/hotdog/000.png", "reason": "cannot be read (permission denied)"}]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_proc_is_refused_not_a_crash():
    with pytest.raises(DatasetError):
        data.validate_dataset("/proc")
    with pytest.raises(AccessError):
        data.resolve_user_folder("/proc")


@pytest.mark.parametrize("bad", ["abc\n", "abc\r", "a\tb", "\x1b[31mred", "x\u202egnp.exe", "caf\udce9", "",
                                 "x" * 65, ".hidden", "-x", "trail.", "a/b", "..", "nul\x00"])
def test_one_dataset_name_rule_refuses(bad, tmp_path):
    with pytest.raises(DatasetError, match="name") as err:
        data.check_dataset_name(bad)
    str(err.value).encode("utf-8")
    assert "\n" not in str(err.value) and "\x1b" not in str(err.value)
    with pytest.raises(DatasetError, match="name"):
        data.install_zip(pets_zip(), bad, home=tmp_path)
    assert not data_root(tmp_path).exists() or [p.name for p in data_root(tmp_path).iterdir()] == []


def test_control_characters_are_named_as_such():
    with pytest.raises(DatasetError, match=r"'abc\\n' is not allowed: its name contains control characters"):
        data.check_dataset_name("abc\n")


@pytest.mark.parametrize("filename", ["photos (1).zip", "abc\n.zip", "...zip", "é" * 80 + ".zip", "x" * 63 + ".y.zip",
                                      "caf\udce9.zip", "-.zip", "a" * 70 + ".zip"])
def test_names_from_zip_files_obey_the_same_rule(filename):
    name = data.dataset_name_from_file(filename)
    assert data.check_dataset_name(name) == name


def test_cli_name_with_a_newline_is_refused(tmp_path, capsys, hotdog_home):
    from test_data import run_cli

    (tmp_path / "ok.zip").write_bytes(pets_zip())
    code, _, err = run_cli(["install-zip", str(tmp_path / "ok.zip"), "--name", "abc\n"], capsys)
    assert code == 1 and "control characters" in err
    assert not (data_root(hotdog_home) / "abc\n").exists()


def test_the_command_line_follows_links_anywhere_the_app_does_not(tmp_path, hotdog_home):
    """A symlink farm outside the shared folders (a subset made with ln -s) trains from the
    CLI, where the user is local; the app's confinement still skips such links."""
    from conftest import make_dataset

    from hotdog.paths import local_user

    real = make_dataset(tmp_path / "elsewhere")
    farm = tmp_path / "farm"
    for p in sorted(real.rglob("*.png")):
        dst = farm / p.relative_to(real)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(p)
    with pytest.raises(DatasetError, match="no readable images"):
        data.load_splits(farm)  # the app: links lead outside every shared folder
    with local_user():
        splits = data.load_splits(farm)
    assert len(splits.train) == 16 and len(splits.test) == 8
