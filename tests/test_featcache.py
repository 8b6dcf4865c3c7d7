"""The on-disk frozen-feature cache (hotdog.featcache) and the bounded decoded-photo store."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from hotdog import featcache
from hotdog.data import Preprocess
from hotdog.featcache import FeatureGroup, FeatureStore

from conftest import kill_9_when_ready, make_image

PRE = Preprocess(input_size=224, resize=256, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def group(**kw) -> FeatureGroup:
    return dataclasses.replace(FeatureGroup.of("a" * 40, PRE, "cpu"), **kw)


def rows(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def hashes(n: int, tag: str = "p") -> list[str]:
    return [f"{tag}{i:039d}" for i in range(n)]


def entry(store: FeatureStore, g: FeatureGroup, hs) -> Path:
    return store.root / g.digest() / (featcache.block_name(g, hs) + ".npy")


# ------------------------------------------------------------------------------------ keys

def test_every_part_of_the_key_changes_it(tmp_path):
    base = group()
    variants = [group(weights_sha1="b" * 40), group(input_size=160), group(resize=300), group(mean=(0.4, 0.5, 0.5)),
                group(std=(0.5, 0.5, 0.6)), group(device="gpu"), base.augmented(1, 0), base.augmented(2, 0),
                base.augmented(1, 1), group(format=featcache.FORMAT + 1)]
    digests = {g.digest() for g in [base, *variants]}
    assert len(digests) == len(variants) + 1
    assert FeatureGroup.of("a" * 40, PRE, "cpu") == base  # the same parts give the same key
    hs = hashes(3)
    names = {featcache.block_name(base, hs), featcache.block_name(base, hs[::-1]),
             featcache.block_name(base, hs[:2]), featcache.block_name(variants[0], hs)}
    assert len(names) == 4
    # a photo's content, not its name or place, is its key
    a = make_image(tmp_path / "a.png", (10, 20, 30))
    b = tmp_path / "sub" / "renamed.png"
    b.parent.mkdir()
    b.write_bytes(a.read_bytes())
    assert featcache.content_hash(a) == featcache.content_hash(b)
    data = bytearray(b.read_bytes())
    data[-5] ^= 1
    b.write_bytes(bytes(data))
    assert featcache.content_hash(a) != featcache.content_hash(b)
    assert featcache.content_hash(tmp_path / "missing.png") is None


def test_weights_hash_follows_the_values():
    w = {"a": np.ones((2, 2), np.float32), "b": np.zeros(3, np.float32)}
    h = featcache.weights_hash(w)
    assert featcache.weights_hash({"b": w["b"], "a": w["a"].copy()}) == h
    w2 = {**w, "a": w["a"].copy()}
    w2["a"][0, 0] = 1.0000001
    assert featcache.weights_hash(w2) != h


# ------------------------------------------------------------------------- store, damage

def test_round_trip_is_memory_mapped_and_exact(tmp_path):
    store, g, hs, x = FeatureStore(tmp_path, 2**20), group(), hashes(5), rows(5)
    assert store.load(g, hs) is None
    assert store.save(g, hs, x)
    got = store.load(g, hs)
    assert isinstance(got, np.memmap)
    np.testing.assert_array_equal(got, x)
    assert store.load(g, hs[:4]) is None and store.load(group(device="gpu"), hs) is None


@pytest.mark.parametrize("damage", ["truncate", "flip", "json", "shape", "empty"])
def test_damaged_entry_is_recomputed_never_used(tmp_path, damage):
    store, g, x = FeatureStore(tmp_path / "cache", 2**20), group(), rows(6)
    paths = [make_image(tmp_path / f"{i}.png", (i * 30, 0, 0), seed=i) for i in range(6)]
    calls = []

    def compute(positions):
        calls.append(list(positions))
        return x[positions], list(positions)

    featcache.plain_rows(store, g, paths, compute)
    hs = [featcache.content_hash(p) for p in paths]
    assert store.load(g, hs) is not None
    data = entry(store, g, hs)
    meta = data.with_suffix(".json")
    if damage == "truncate":
        os.truncate(data, data.stat().st_size - 7)
    elif damage == "flip":
        raw = bytearray(data.read_bytes())
        raw[-3] ^= 0x40
        data.write_bytes(bytes(raw))
    elif damage == "json":
        meta.write_text(meta.read_text()[:40])
    elif damage == "shape":
        np.save(data, x[:5])
    else:
        data.write_bytes(b"")
    assert store.load(g, hs) is None
    got = featcache.plain_rows(store, g, paths, compute)  # recomputed, stored again...
    assert calls == [list(range(6))] * 2 and got.computed == 6
    np.testing.assert_array_equal(got.array, x)
    again = featcache.plain_rows(store, g, paths, compute)  # ...and then read back intact
    assert len(calls) == 2 and again.computed == 0
    np.testing.assert_array_equal(again.array, x)


def test_one_changed_photo_is_the_only_one_recomputed(tmp_path):
    store, g = FeatureStore(tmp_path / "cache", 2**20), group()
    paths = [make_image(tmp_path / f"{i}.png", (i * 20, 50, 50), seed=i) for i in range(5)]
    table = {}

    def compute(positions):
        out = []
        for i in positions:
            h = featcache.content_hash(paths[i])
            table.setdefault(h, rows(1, seed=len(table) + 1)[0])
            out.append(table[h])
        calls.append(list(positions))
        return np.stack(out), list(positions)

    calls: list = []
    first = featcache.plain_rows(store, g, paths, compute)
    make_image(paths[2], (1, 2, 3), seed=99)  # the photo is replaced
    second = featcache.plain_rows(store, g, paths, compute)
    assert calls == [[0, 1, 2, 3, 4], [2]] and second.computed == 1
    np.testing.assert_array_equal(second.array[[0, 1, 3, 4]], first.array[[0, 1, 3, 4]])
    assert not np.array_equal(second.array[2], first.array[2])
    # an unreadable photo is dropped (and never becomes a cache hit)
    paths[4].unlink()
    third = featcache.plain_rows(store, g, paths, lambda pos: (np.zeros((0, 8), np.float32), []))
    assert third.kept == [0, 1, 2, 3]


def test_leftovers_of_a_killed_writer_are_ignored_then_removed(tmp_path):
    store, g, hs, x = FeatureStore(tmp_path, 2**20), group(), hashes(4), rows(4)
    gdir = store.root / g.digest()
    gdir.mkdir(parents=True)
    name = featcache.block_name(g, hs)
    (gdir / f".{name}.npy.4242.deadbeef.tmp").write_bytes(b"\x93NUMPY half")  # killed mid-write
    np.save(gdir / (name + ".npy"), x)  # killed between the data and its description
    assert store.load(g, hs) is None
    store.save(g, hashes(2, "q"), rows(2))  # any later write sweeps them
    assert not list(gdir.glob(".*.tmp"))
    assert not (gdir / (name + ".npy")).exists()
    assert store.load(g, hashes(2, "q")) is not None


def _half_write_then_hang(root: str, ready) -> None:
    """In a child: start a real save, stop halfway through the data file, wait to be killed."""
    import time

    store = FeatureStore(root, 2**30)
    real_save = np.save

    def half(fh, arr, allow_pickle=False):
        real_save(fh, arr[: len(arr) // 2], allow_pickle=allow_pickle)
        fh.flush()
        ready.set()
        while True:
            time.sleep(0.05)

    np.save = half
    store.save(group(), hashes(64), rows(64))


def test_kill_9_mid_write_leaves_nothing_usable_and_no_stuck_lock(tmp_path):
    kill_9_when_ready(_half_write_then_hang, str(tmp_path))
    store, g, hs = FeatureStore(tmp_path, 2**30), group(), hashes(64)
    assert list((tmp_path / g.digest()).glob(".*.tmp"))  # the half-written temp file is there...
    assert store.load(g, hs) is None  # ...and never read
    assert store.save(g, hs, rows(64))  # the dead writer's lock is gone; the leftover is swept
    assert not list((tmp_path / g.digest()).glob(".*.tmp"))
    np.testing.assert_array_equal(store.load(g, hs), rows(64))


def _writer(root: str, n_rounds: int) -> None:
    store = FeatureStore(root, 2**30)
    for _ in range(n_rounds):
        store.save(group(), hashes(300), rows(300))


def test_concurrent_writers_of_one_key(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), 5)) for _ in range(2)]
    threads = [threading.Thread(target=_writer, args=(str(tmp_path), 5)) for _ in range(2)]
    for w in [*procs, *threads]:
        w.start()
    store = FeatureStore(tmp_path, 2**30)
    seen = 0
    while any(p.is_alive() for p in procs) or any(t.is_alive() for t in threads):
        got = store.load(group(), hashes(300))  # readers take no lock: whole entry or none
        if got is not None:
            np.testing.assert_array_equal(got, rows(300))
            seen += 1
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    for t in threads:
        t.join(60)
    np.testing.assert_array_equal(store.load(group(), hashes(300)), rows(300))
    assert store.stats().entries == 1
    assert not list(tmp_path.glob("*/.*.tmp"))


def test_cap_evicts_the_least_recently_used(tmp_path):
    block = rows(64, dim=32)  # 8 KiB of data (+ header and description)
    store = FeatureStore(tmp_path, 3 * block.nbytes + 3 * 6000)
    keys = [hashes(64, t) for t in "abcd"]
    for i, hs in enumerate(keys[:3]):
        assert store.save(group(), hs, rows(64, 32, seed=i))
        meta = entry(store, group(), hs).with_suffix(".json")
        os.utime(meta, (1000 + i, 1000 + i))  # a, b, c in the order written
    assert store.load(group(), keys[0]) is not None  # a is used again: b is now the oldest
    store.save(group(), keys[3], rows(64, 32, seed=3))
    assert store.load(group(), keys[1]) is None
    for hs in (keys[0], keys[2], keys[3]):
        assert store.load(group(), hs) is not None
    stats = store.stats()
    assert stats.entries == 3 and stats.bytes <= stats.cap_bytes
    # larger than the whole cap: not stored; cap 0 from the environment turns the cache off
    assert not FeatureStore(tmp_path / "tiny", 100).save(group(), keys[0], rows(64, 32))


def test_cap_and_folder_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(featcache.CAP_ENV, "0")
    assert featcache.open_store() is None
    monkeypatch.setenv(featcache.CAP_ENV, "12.5")
    monkeypatch.setenv(featcache.DIR_ENV, str(tmp_path / "elsewhere"))
    store = featcache.open_store()
    assert store.cap_bytes == int(12.5 * 2**20) and store.root == tmp_path / "elsewhere"
    monkeypatch.setenv(featcache.CAP_ENV, "lots")
    assert featcache.open_store().cap_bytes == featcache.DEFAULT_CAP_MB * 2**20
    with featcache.using_root(tmp_path / "bench"):
        assert featcache.open_store().root == tmp_path / "bench"


# ------------------------------------------------------------------- decoded-photo store

def test_decoded_photos_stay_under_the_cap(tmp_path):
    from hotdog.data import ImageListDataset
    from hotdog.data.decoded import DecodedCache

    items = [(make_image(tmp_path / f"{i}.png", (i, 100, 200), size=(40, 30), seed=i), i % 2) for i in range(60)]
    one = 40 * 30 * 3
    cache = DecodedCache(cap_bytes=10 * one)
    ds = ImageListDataset(items, cache=cache)
    unbounded = ImageListDataset(items, cache=DecodedCache(cap_bytes=10**9))
    for _ in range(2):
        for i in range(len(ds)):
            np.testing.assert_array_equal(ds[i][0].asnumpy(), unbounded[i][0].asnumpy())
            assert cache.nbytes <= 10 * one
    s = cache.stats()
    # a set past the cap goes to the on-disk spill (tests/test_decoded_spill.py), not memory
    assert s["spilling"] and s["spilled"] >= 50 and cache.nbytes < 10 * one
    assert unbounded.decoded_cache.nbytes == 60 * one  # a set that fits is decoded once, as before


def test_decoded_cache_cap_from_the_environment(monkeypatch):
    from hotdog.data.decoded import CAP_ENV, DEFAULT_CAP_MB, DecodedCache

    monkeypatch.setenv(CAP_ENV, "3")
    assert DecodedCache().cap_bytes == 3 * 2**20
    for bad in ("-1", "nan", "much"):
        monkeypatch.setenv(CAP_ENV, bad)
        assert DecodedCache().cap_bytes == DEFAULT_CAP_MB * 2**20
    monkeypatch.setenv(CAP_ENV, "0")
    c = DecodedCache()
    c.put("k", np.zeros(10, np.uint8))
    assert len(c) == 0 and c.get("k") is None


def test_memory_estimate_counts_decoded_photos_up_to_the_cap(tmp_path, monkeypatch):
    from hotdog import memory
    from hotdog.data.decoded import CAP_ENV
    from hotdog.settings import config_for

    monkeypatch.setenv(CAP_ENV, "100")
    cfg = config_for(tmp_path, freeze=True)
    small = memory.estimate_mb(cfg, 32, 100)
    assert memory.estimate_mb(cfg, 32, 100_000) == memory.estimate_mb(cfg, 32, 10_000_000) < small + 101


def test_head_init_reads_a_bounded_evenly_spread_sample():
    from hotdog.train import HEAD_INIT_PHOTOS, _head_init_sample

    small = [(f"{i}.jpg", i % 2) for i in range(HEAD_INIT_PHOTOS)]
    assert _head_init_sample(small) is small
    big = [(f"a{i}.jpg", 0) for i in range(15_000)] + [(f"b{i}.jpg", 1) for i in range(5_000)]
    got = _head_init_sample(big)
    assert len(got) == HEAD_INIT_PHOTOS and len(set(got)) == len(got)
    assert sum(label for _, label in got) == HEAD_INIT_PHOTOS // 4  # each class keeps its share
