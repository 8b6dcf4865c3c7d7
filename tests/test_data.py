"""Discovery, validation, transforms, the cached Gluon dataset and the data CLI."""

from __future__ import annotations

import argparse
import json
import os

import mxnet as mx
import numpy as np
import pytest
from PIL import Image

from conftest import make_dataset, make_image
from hotdog import data as data_mod
from hotdog.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetReport,
    ImageListDataset,
    Preprocess,
    load_splits,
    test_transform,
    train_transform,
    validate_dataset,
)
from hotdog.errors import DatasetError, HotdogError

SMALL = Preprocess(32, 37)


# --- Preprocess and transforms ---------------------------------------------------------------


def test_preprocess_defaults_and_scaling():
    pre = Preprocess()
    assert (pre.input_size, pre.resize) == (224, 256)
    assert pre.mean == IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert pre.std == IMAGENET_STD == (0.229, 0.224, 0.225)
    assert pre.scaled(224) == pre
    assert (pre.scaled(192).input_size, pre.scaled(192).resize) == (192, 219)
    custom = Preprocess(240, 274, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)).scaled(112)
    assert custom.mean == (0.5, 0.5, 0.5) and custom.resize == 128
    with pytest.raises(Exception):
        pre.input_size = 3  # frozen: shared by every caller
    from_json = Preprocess(**json.loads(json.dumps(pre.to_dict())))
    assert from_json == pre and hash(from_json) == hash(pre)


def test_normalisation_uses_the_given_mean_and_std():
    img = Image.new("RGB", (50, 40), (255, 0, 128))
    for tf in (train_transform(SMALL), test_transform(SMALL)):
        out = tf(img).asnumpy()
        assert out.shape == (3, 32, 32) and out.dtype == np.float32
        expect = [(v / 255 - m) / s for v, m, s in zip((255, 0, 128), IMAGENET_MEAN, IMAGENET_STD)]
        assert np.allclose(out.reshape(3, -1).mean(axis=1), expect, atol=1e-2)
    other = Preprocess(32, 37, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    out = test_transform(other)(img).asnumpy()
    assert np.allclose(out[0], (1 - 0.5) / 0.25, atol=1e-3)


def test_test_transform_is_resize_then_center_crop():
    # 40 px wide: left 10 px red, rest blue. Resize(37) squashes to 37x37 (the chapter's
    # Resize(256) with an int), CenterCrop(32) cuts 2-3 px per side: the red band stays.
    arr = np.zeros((40, 40, 3), dtype=np.uint8)
    arr[:, :10] = (255, 0, 0)
    arr[:, 10:] = (0, 0, 255)
    out = test_transform(SMALL)(Image.fromarray(arr)).asnumpy()
    red = out[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    assert red[:, 0].mean() > 0.9 and red[:, -1].mean() < 0.1
    again = test_transform(SMALL)(Image.fromarray(arr)).asnumpy()
    assert np.array_equal(out, again), "test transform must be deterministic"


def test_train_transform_is_random_crop_and_flip():
    arr = np.zeros((48, 64, 3), dtype=np.uint8)
    arr[:, :32] = 255
    mx.random.seed(0)
    tf = train_transform(SMALL)
    outs = [tf(Image.fromarray(arr)).asnumpy() for _ in range(12)]
    assert all(o.shape == (3, 32, 32) for o in outs)
    assert len({o.tobytes() for o in outs}) > 1
    left_bright = [o[0][:, :4].mean() > o[0][:, -4:].mean() for o in outs if abs(o[0][:, :4].mean() - o[0][:, -4:].mean()) > 0.5]
    assert True in left_bright and False in left_bright, "RandomFlipLeftRight should flip some crops"


def test_transforms_accept_arrays():
    arr = np.full((20, 30, 3), 200, dtype=np.uint8)
    for src in (arr, mx.nd.array(arr, dtype="uint8"), arr[:, :, 0]):
        assert test_transform(SMALL)(src).shape == (3, 32, 32)
    assert train_transform(SMALL)(Image.new("L", (20, 30))).shape == (3, 32, 32)


# --- discovery and validation ----------------------------------------------------------------


def test_split_layout(tiny_dataset):
    s = load_splits(tiny_dataset)
    assert s.layout == "split" and s.classes == ["hotdog", "not-hotdog"]
    assert len(s.train) == 16 and len(s.test) == 8
    assert sorted({label for _, label in s.train}) == [0, 1]
    assert all(p.parent.name == s.classes[label] for p, label in s.train + s.test)
    assert all(p.parts[-3] == "train" for p, _ in s.train) and all(p.parts[-3] == "test" for p, _ in s.test)


def test_classes_are_sorted_folder_names(tmp_path):
    root = make_dataset(tmp_path / "d", classes={"zebra": (0, 0, 0), "Apple": (9, 9, 9), "mango": (5, 5, 5)},
                        per_class={"train": 1, "test": 1})
    assert load_splits(root).classes == ["Apple", "mango", "zebra"]


def test_flat_layout_is_stratified_and_seeded(tmp_path):
    root = make_dataset(tmp_path / "flat", per_class={".": 10})
    s = load_splits(root, test_ratio=0.2, seed=0)
    assert s.layout == "flat"
    assert [sum(1 for _, l in s.test if l == c) for c in (0, 1)] == [2, 2]
    assert [sum(1 for _, l in s.train if l == c) for c in (0, 1)] == [8, 8]
    assert not set(s.train) & set(s.test)
    assert load_splits(root, 0.2, 0).test == s.test
    assert any(load_splits(root, 0.2, seed).test != s.test for seed in (1, 2, 3))
    assert len(load_splits(root, test_ratio=0.5).test) == 10
    assert load_splits(root, test_ratio=0.0).test == []
    report = validate_dataset(root, 0.3, 1)
    assert report.layout == "flat" and report.counts["test"] == {"hotdog": 3, "not-hotdog": 3}


def test_flat_split_tiny_class_keeps_training_images(tmp_path):
    root = tmp_path / "few"
    make_image(root / "a" / "0.png", (1, 2, 3))
    for i in range(3):
        make_image(root / "b" / f"{i}.png", (9, 9, 9))
    r = validate_dataset(root, test_ratio=0.2)
    assert r.counts == {"train": {"a": 1, "b": 2}, "test": {"a": 0, "b": 1}}
    assert any("'a'" in w for w in r.warnings)


def test_hidden_entries_ignored_and_bad_files_skipped(tiny_dataset):
    (tiny_dataset / "train" / ".cache").mkdir()
    (tiny_dataset / ".git").mkdir()
    (tiny_dataset / "train" / "hotdog" / ".DS_Store").write_bytes(b"\x00\x01junk")
    (tiny_dataset / "train" / "hotdog" / "notes.txt").write_text("not a photo")
    (tiny_dataset / "test" / "not-hotdog" / "empty.jpg").write_bytes(b"")
    (tiny_dataset / "test" / "not-hotdog" / "page.jpg").write_text("<html><body>hi</body></html>")
    (tiny_dataset / "README.md").write_text("about")
    os.mkfifo(tiny_dataset / "train" / "not-hotdog" / "pipe.png")  # must not block the scan
    report = validate_dataset(tiny_dataset)
    assert report.classes == ["hotdog", "not-hotdog"]
    assert report.counts == {"train": {"hotdog": 8, "not-hotdog": 8}, "test": {"hotdog": 4, "not-hotdog": 4}}
    skipped = {s["path"]: s["reason"] for s in report.skipped}
    assert set(skipped) == {"train/hotdog/notes.txt", "test/not-hotdog/empty.jpg", "test/not-hotdog/page.jpg",
                            "train/not-hotdog/pipe.png"}
    assert "empty" in skipped["test/not-hotdog/empty.jpg"] and "HTML" in skipped["test/not-hotdog/page.jpg"]
    s = load_splits(tiny_dataset)
    assert all(p.suffix == ".png" for p, _ in s.train + s.test)


def test_report_to_dict_is_json(tiny_dataset):
    report = validate_dataset(tiny_dataset)
    assert isinstance(report, DatasetReport)
    d = json.loads(json.dumps(report.to_dict()))
    assert set(d) == {"root", "layout", "classes", "counts", "skipped", "warnings"}
    assert d["counts"]["train"]["hotdog"] == 8


def test_error_missing_root(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        validate_dataset(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="not a folder"):
        load_splits(tmp_path / "file")


def test_error_fewer_than_two_classes(tmp_path):
    with pytest.raises(DatasetError, match="at least 2 class"):
        validate_dataset(make_dataset(tmp_path / "one", classes={"only": (1, 1, 1)}))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="at least 2 class"):
        validate_dataset(tmp_path / "empty")


def test_error_empty_class(tiny_dataset):
    for p in (tiny_dataset / "test" / "hotdog").iterdir():
        p.unlink()
    (tiny_dataset / "test" / "hotdog" / "x.txt").write_text("text")
    with pytest.raises(DatasetError, match="'hotdog'.*no readable images"):
        validate_dataset(tiny_dataset)


def test_error_different_class_sets(tiny_dataset):
    (tiny_dataset / "test" / "not-hotdog").rename(tiny_dataset / "test" / "cat")
    with pytest.raises(DatasetError, match="different") as ei:
        load_splits(tiny_dataset)
    assert "not-hotdog" in str(ei.value) and "cat" in str(ei.value)


def test_error_bad_ratio(tiny_dataset):
    with pytest.raises(DatasetError, match="ratio"):
        validate_dataset(tiny_dataset, test_ratio=1.5)


def test_train_only_folder_is_split(tiny_dataset):
    import shutil

    shutil.rmtree(tiny_dataset / "test")
    report = validate_dataset(tiny_dataset, test_ratio=0.25)
    assert report.layout == "flat" and report.counts["test"] == {"hotdog": 2, "not-hotdog": 2}


@pytest.mark.realdata
def test_real_hotdog_mini(hotdog_mini):
    report = validate_dataset(hotdog_mini)
    assert report.layout == "split" and report.classes == ["hotdog", "not-hotdog"]
    assert report.counts == {"train": {"hotdog": 100, "not-hotdog": 100}, "test": {"hotdog": 25, "not-hotdog": 25}}
    assert report.skipped == []
    s = load_splits(hotdog_mini)
    ds = ImageListDataset(s.test[:4], test_transform(SMALL), min_side=SMALL.resize)
    assert all(ds[i][0].shape == (3, 32, 32) for i in range(len(ds)))


# --- ImageListDataset ------------------------------------------------------------------------


def test_dataset_decodes_each_file_once_and_shrinks(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "big", per_class={"train": 2, "test": 1}, size=(120, 80))
    s = load_splits(root)
    calls = []
    real = data_mod.decode_image
    monkeypatch.setattr(data_mod.transforms, "decode_image", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    ds = ImageListDataset(s.train, train_transform(SMALL), min_side=SMALL.resize)
    for _ in range(3):
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape == (3, 32, 32) and x.dtype == np.float32 and y == s.train[i][1]
    assert len(calls) == len(ds) == 4
    assert min(ds.image(0).size) == 37 and ds.image(0).size == (56, 37)
    nocache = ImageListDataset(s.train, test_transform(SMALL), cache_decoded=False)
    nocache[0], nocache[0]
    assert len(calls) == 6 and nocache.image(0).size == (120, 80)


def test_dataset_without_transform_returns_uint8(tiny_dataset):
    ds = ImageListDataset(load_splits(tiny_dataset).test, None)
    x, y = ds[0]
    assert x.shape == (32, 40, 3) and x.dtype == np.uint8 and y == 0


def test_dataloader_with_workers(tiny_dataset):
    s = load_splits(tiny_dataset)
    ds = ImageListDataset(s.train, train_transform(SMALL), min_side=SMALL.resize)
    assert ds.preload() == []
    for workers in (0, 2):
        loader = mx.gluon.data.DataLoader(ds, batch_size=8, shuffle=True, num_workers=workers)
        batches = list(loader)
        assert len(batches) == 2
        assert batches[0][0].shape == (8, 3, 32, 32) and batches[0][1].shape == (8,)
        assert sorted(np.concatenate([b[1].asnumpy() for b in batches]).tolist()) == [0] * 8 + [1] * 8


class _WithRandomDraw(ImageListDataset):
    """Also reports one draw of MXNet's RNG right after the transform ran."""

    def __getitem__(self, idx):
        x, y = super().__getitem__(idx)
        return x, mx.nd.random.uniform(shape=(1,))


def test_workers_get_different_random_streams(tiny_dataset):
    # Forked workers inherit one MXNet RNG state: without reseeding, worker 0 (batches
    # 0, 2, ...) and worker 1 (batches 1, 3, ...) make the same flip decisions pairwise.
    ds = _WithRandomDraw(load_splits(tiny_dataset).train[:8], train_transform(SMALL))
    ds.preload()
    draws = [float(r.asnumpy().ravel()[0]) for _, r in mx.gluon.data.DataLoader(ds, batch_size=1, num_workers=2)]
    assert len(draws) == 8 and len(set(draws)) == 8


def test_preload_drops_undecodable_files(tiny_dataset):
    s = load_splits(tiny_dataset)
    victim = s.train[3][0]
    victim.write_bytes(victim.read_bytes()[:60])  # header intact, pixels gone
    assert validate_dataset(tiny_dataset).counts["train"]["hotdog"] == 8  # header check passes
    ds = ImageListDataset(s.train, test_transform(SMALL))
    bad = ds.preload()
    assert [b["path"] for b in bad] == [str(victim)] and len(ds) == 15
    assert all(ds[i][0].shape == (3, 32, 32) for i in range(len(ds)))
    with pytest.raises(HotdogError, match=victim.name):
        ImageListDataset(s.train, None)[3]


# --- CLI -------------------------------------------------------------------------------------


def run_cli(argv, capsys) -> tuple[int, str, str]:
    from hotdog.commands import data as cmd

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    cmd.register(sub)
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except HotdogError as err:  # what hotdog.cli does
        print(f"error: {err}", file=__import__("sys").stderr)
        code = 1
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_data_table_and_json(tiny_dataset, capsys):
    code, out, _ = run_cli(["data", "--root", str(tiny_dataset)], capsys)
    assert code == 0
    assert "hotdog" in out and "not-hotdog" in out and "split" in out
    assert any(line.split() == ["hotdog", "8", "4"] for line in out.splitlines())
    code, out, _ = run_cli(["data", "--root", str(tiny_dataset), "--json"], capsys)
    assert code == 0 and json.loads(out)["counts"]["test"] == {"hotdog": 4, "not-hotdog": 4}


def test_cli_data_flat_options(tmp_path, capsys):
    root = make_dataset(tmp_path / "flat", per_class={".": 10})
    code, out, _ = run_cli(["data", "--root", str(root), "--json", "--test-ratio", "0.5", "--seed", "3"], capsys)
    assert code == 0 and json.loads(out)["counts"]["test"] == {"hotdog": 5, "not-hotdog": 5}


def test_cli_data_errors(tmp_path, capsys, hotdog_home):
    code, _, err = run_cli(["data", "--root", str(tmp_path / "missing")], capsys)
    assert code == 1 and err.startswith("error: ") and "does not exist" in err
    code, _, err = run_cli(["data"], capsys)
    assert code == 1 and "download" in err


def test_cli_install_zip(tmp_path, capsys, hotdog_home):
    import io
    import zipfile

    buf = io.BytesIO()
    make_dataset(tmp_path / "src")
    with zipfile.ZipFile(buf, "w") as zf:
        for p in (tmp_path / "src").rglob("*.png"):
            zf.write(p, p.relative_to(tmp_path / "src"))
    (tmp_path / "my set.zip").write_bytes(buf.getvalue())
    code, out, _ = run_cli(["install-zip", str(tmp_path / "my set.zip"), "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["counts"]["train"] == {"hotdog": 8, "not-hotdog": 8}
    assert os.path.isdir(doc["path"]) and doc["path"].startswith(str(hotdog_home))
    assert doc["name"] == "my-set"


@pytest.mark.realdata
def test_python_m_hotdog_data_on_real_photos(hotdog_mini, tmp_path):
    # One real subprocess (slow: it imports every command); error exits are checked in-process.
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, HOTDOG_HOME=str(tmp_path / "home"))
    proc = subprocess.run([sys.executable, "-m", "hotdog", "data", "--root", str(hotdog_mini), "--json"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["counts"] == {"train": {"hotdog": 100, "not-hotdog": 100},
                                                 "test": {"hotdog": 25, "not-hotdog": 25}}
