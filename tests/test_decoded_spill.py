"""Decoded photos past the memory cap: spilled to disk once, read back exactly, memory flat;
damaged entries decoded again; the spill's cap, leftovers of killed writers, concurrent writers."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import threading

import numpy as np
import pytest
from conftest import kill_9_when_ready, make_image

from hotdog.data import ImageListDataset
from hotdog.data import transforms as transforms_mod
from hotdog.data.decoded import SAMPLE_PHOTOS, DecodedCache
from hotdog.data.spill import CAP_ENV, DIR_ENV, HEADER, SpillStore, entry_key, open_spill

ONE = 40 * 30 * 3  # bytes of one decoded 40x30 photo


@pytest.fixture
def photos(tmp_path):
    return [(make_image(tmp_path / "photos" / f"{i}.png", (i * 4, 100, 200), size=(40, 30), seed=i), i % 2)
            for i in range(40)]


@pytest.fixture
def decodes(monkeypatch):
    """Counts the real decodes ImageListDataset makes."""
    calls = []
    real = transforms_mod.decode_image

    def counting(path, *a, **kw):
        calls.append(str(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(transforms_mod, "decode_image", counting)
    return calls


def fresh(items, i, min_side=None):
    """What a decode without any store gives."""
    return ImageListDataset(items, cache_decoded=False, min_side=min_side)._decoded(i)


def assert_same(a, b):
    assert a.dtype == b.dtype == np.uint8 and a.shape == b.shape and a.flags.c_contiguous
    np.testing.assert_array_equal(a, b)


def test_a_set_past_the_cap_is_spilled_once_and_memory_stays_flat(tmp_path, photos, decodes):
    refs = [fresh(photos, i) for i in range(40)]
    decodes.clear()
    spill = SpillStore(tmp_path / "spill", 2**30)
    cache = DecodedCache(cap_bytes=10 * ONE, spill=spill)
    ds = ImageListDataset(photos, cache=cache)
    assert ds.preload() == []
    assert len(decodes) == 40
    # decided after a few photos: the rest never entered memory (an LRU would hold 10)
    assert cache.spilling and cache.nbytes < SAMPLE_PHOTOS * ONE and cache.stats()["spilled"] >= 40 - SAMPLE_PHOTOS
    for _ in range(2):  # two epochs: nothing decoded again, memory unchanged
        for i in range(len(ds)):
            assert_same(ds._decoded(i), refs[i])
    assert len(decodes) == 40
    assert cache.nbytes < SAMPLE_PHOTOS * ONE and spill.stats()["reads"] >= 2 * (40 - SAMPLE_PHOTOS)


def test_a_set_that_fits_stays_in_memory_as_before(tmp_path, photos):
    spill = SpillStore(tmp_path / "spill", 2**30)
    cache = DecodedCache(cap_bytes=40 * ONE, spill=spill)
    ds = ImageListDataset(photos, cache=cache)
    ds.preload()
    assert not cache.spilling and cache.nbytes == 40 * ONE and not (tmp_path / "spill").exists()


def test_spilled_jpeg_reads_back_exactly_as_a_fresh_decode_also_in_the_next_run(tmp_path, decodes):
    from PIL import Image

    rng = np.random.default_rng(0)
    items = []
    for i, (w, h) in enumerate([(300, 200), (97, 301), (640, 480), (50, 50)] * 4):
        arr = np.clip(rng.normal(128, 60, (h, w, 3)), 0, 255).astype(np.uint8)
        path = tmp_path / "jpg" / f"{i}.jpg"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(arr).save(path, quality=80)
        items.append((path, 0))
    root = tmp_path / "spill"
    run1 = ImageListDataset(items, min_side=73, cache=DecodedCache(cap_bytes=1, spill=SpillStore(root, 2**30)))
    run1.preload()
    assert run1.decoded_cache.stats()["spilled"] == 16
    decodes.clear()
    # the next run (a new store, as in a new process) reads every photo from disk, decodes none
    run2 = ImageListDataset(items, min_side=73, cache=DecodedCache(cap_bytes=1, spill=SpillStore(root, 2**30)))
    run2.preload()
    got = [run2._decoded(i) for i in range(16)]
    assert decodes == [] and run2.decoded_cache.stats()["spill_hits"] >= 16
    for i in range(16):
        assert_same(got[i], fresh(items, i, min_side=73))
    # another min_side is another entry, not a wrong-size read
    other = ImageListDataset(items, min_side=50, cache=DecodedCache(cap_bytes=1, spill=SpillStore(root, 2**30)))
    assert_same(other._decoded(2), fresh(items, 2, min_side=50))


def test_an_edited_photo_is_another_entry(tmp_path, photos):
    path = photos[0][0]
    before = entry_key(path, None, 10**8)
    make_image(path, (0, 0, 0), size=(41, 30), seed=99)
    assert entry_key(path, None, 10**8) != before
    assert entry_key(path, 64, 10**8) != entry_key(path, None, 10**8) != entry_key(path, None, 10**7)
    assert entry_key(tmp_path / "missing.png", None, 10**8) is None


@pytest.mark.parametrize("damage", ["flip_pixel", "other_key", "flip_header", "zero_header", "truncate"])
def test_damaged_spill_records_are_decoded_again_never_used(tmp_path, photos, decodes, damage):
    root = tmp_path / "spill"
    ds = ImageListDataset(photos, cache=DecodedCache(cap_bytes=1, spill=SpillStore(root, 2**30)))
    ds.preload()
    store = SpillStore(root, 2**30)
    key = entry_key(photos[5][0], None, ds.max_pixels)
    seg, off = store.locate(key)
    raw = bytearray(seg.read_bytes())
    if damage == "flip_pixel":
        raw[off + HEADER.size + 100] ^= 0xFF
    elif damage == "other_key":  # a whole, valid-looking record of another photo in its place
        seg6, off6 = store.locate(entry_key(photos[6][0], None, ds.max_pixels))
        raw[off:off + HEADER.size + ONE] = seg6.read_bytes()[off6:off6 + HEADER.size + ONE]
    elif damage == "flip_header":
        raw[off + 8] ^= 0x01  # the height
    elif damage == "zero_header":
        raw[off:off + HEADER.size] = bytes(HEADER.size)
    else:
        raw = raw[:off + HEADER.size + 50]
    seg.write_bytes(bytes(raw))
    assert store.read(key) is None and store.stats()["damaged"] == 1
    assert store.read(key) is None  # forgotten: not read again
    decodes.clear()
    again = ImageListDataset(photos, cache=DecodedCache(cap_bytes=1, spill=SpillStore(root, 2**30)))
    again.preload()
    if damage in ("flip_pixel", "other_key"):
        assert decodes == [str(photos[5][0])]  # only the damaged one is decoded again
    else:  # a bad header hides the rest of its segment too: those are decoded again as well
        assert str(photos[5][0]) in decodes
    for i in range(40):
        assert_same(again._decoded(i), fresh(photos, i))
    assert_same(SpillStore(root, 2**30).read(key), fresh(photos, 5))  # and appended anew


def test_spilling_off_keeps_a_fixed_subset_without_churn(tmp_path, photos, decodes, monkeypatch):
    monkeypatch.setenv(CAP_ENV, "0")
    assert open_spill() is None
    cache = DecodedCache(cap_bytes=10 * ONE)
    ds = ImageListDataset(photos, cache=cache)
    ds.preload()
    held = {k for k in range(40) if ds._key(photos[k][0]) in cache}
    assert len(held) == 10 and cache.nbytes == 10 * ONE
    decodes.clear()
    for _ in range(2):
        for i in range(40):
            assert_same(ds._decoded(i), fresh(photos, i))
    # the same 10 photos stay (no eviction), the other 30 are decoded at each use
    assert {k for k in range(40) if ds._key(photos[k][0]) in cache} == held
    assert len(decodes) == 2 * (30 + 40)
    assert not (tmp_path / "decoded-spill").exists()


def test_the_spill_cap_evicts_other_runs_segments_first_never_its_own(tmp_path, photos):
    root = tmp_path / "spill"
    entry = HEADER.size + ONE
    old = ImageListDataset(photos[:20], cache=DecodedCache(cap_bytes=1, spill=SpillStore(root, 2**30, 5 * entry)))
    old.preload(threads=1)  # in order: photos 0-4 fill the first segment
    segs = sorted(root.glob("*.seg"))
    assert len(segs) == 4
    for n, f in enumerate(segs):  # an earlier run's, last used long ago
        os.utime(f, (1e9 + n, 1e9 + n))
    first = {entry_key(p, None, old.max_pixels) for p, _ in photos[:5]}
    oldest = {SpillStore(root).locate(k)[0] for k in first}
    assert oldest == {segs[0]}  # the photos the new run also uses are in the oldest segment
    spill = SpillStore(root, 22 * entry, 5 * entry)
    items = photos[:5] + photos[20:]
    new = ImageListDataset(items, cache=DecodedCache(cap_bytes=1, spill=spill))
    new.preload(threads=1)  # reads those 5 first, then writes
    s = spill.stats()
    # room for the new run's photos: every old segment went except the one this run read
    # from, and what still does not fit is not spilled (it never removes what it uses)
    assert s["reads"] == 5 and s["evicted"] == 3 and s["written"] == 17 and s["full"]
    left = set(root.glob("*.seg"))
    assert segs[0] in left and not set(segs[1:]) & left
    for i in range(25):
        assert_same(new._decoded(i), fresh(items, i))
    # a run larger than the cap stops spilling rather than remove what it wrote
    small = SpillStore(tmp_path / "small", 12 * entry, 5 * entry)
    cache = DecodedCache(cap_bytes=5 * ONE, spill=small)
    ds = ImageListDataset(photos, cache=cache)
    ds.preload()
    s = small.stats()
    assert s["written"] == 12 and s["full"] and s["evicted"] == 0
    assert sum(f.stat().st_size for f in (tmp_path / "small").glob("*.seg")) == 12 * entry
    assert cache.nbytes <= 5 * ONE  # what the disk refused is kept in memory only while it fits
    for i in range(40):
        assert_same(ds._decoded(i), fresh(photos, i))


def test_cap_and_folder_from_the_environment(tmp_path, monkeypatch, hotdog_home):
    monkeypatch.delenv(DIR_ENV, raising=False)
    monkeypatch.setenv(CAP_ENV, "1.5")
    store = open_spill()
    assert store.cap_bytes == int(1.5 * 2**20) and store.root == hotdog_home / "cache" / "decoded"
    for bad in ("-3", "nan", "lots"):
        monkeypatch.setenv(CAP_ENV, bad)
        assert open_spill().cap_bytes == 4096 * 2**20
    monkeypatch.setenv(DIR_ENV, str(tmp_path / "big-disk"))
    assert open_spill().root == tmp_path / "big-disk"


def test_a_spilling_store_pickled_into_a_worker_reads_the_same_folder(tmp_path, photos):
    cache = DecodedCache(cap_bytes=1, spill=SpillStore(tmp_path / "spill", 2**30))
    ds = ImageListDataset(photos, cache=cache)
    ds.preload()
    copy = pickle.loads(pickle.dumps(ds))
    assert copy.decoded_cache.spilling and len(copy.decoded_cache) == 0
    assert_same(copy._decoded(7), fresh(photos, 7))
    assert copy.decoded_cache.stats()["spill_hits"] == 1


def _write_three_then_hang_in_the_fourth(root: str, ready) -> None:
    """In a child: three whole records, then half of the fourth, then wait to be killed."""
    import time

    store = SpillStore(root, 2**30)
    for k in range(3):
        store.write(bytes([k]) * 20, np.full((30, 40, 3), k, np.uint8))
    real = os.pwritev

    def half(fd, buffers, offset):
        real(fd, [bytes(buffers[0]), bytes(buffers[1])[:100]], offset)
        ready.set()
        while True:
            time.sleep(0.05)

    os.pwritev = half
    store.write(bytes([3]) * 20, np.full((30, 40, 3), 3, np.uint8))


def test_kill_9_mid_write_leaves_no_record_and_the_whole_ones_stay(tmp_path):
    root = tmp_path / "spill"
    kill_9_when_ready(_write_three_then_hang_in_the_fourth, str(root))
    store = SpillStore(root, 2**30)
    for k in range(3):
        assert_same(store.read(bytes([k]) * 20), np.full((30, 40, 3), k, np.uint8))
    assert store.read(bytes([3]) * 20) is None and store.stats()["damaged"] == 0  # never indexed
    assert store.write(bytes([3]) * 20, np.full((30, 40, 3), 3, np.uint8))
    assert_same(SpillStore(root, 2**30).read(bytes([3]) * 20), np.full((30, 40, 3), 3, np.uint8))


def _spill_writer(root: str, rounds: int) -> None:
    store = SpillStore(root, 2**30)
    for r in range(rounds):
        for k in range(20):
            store.write(bytes([k]) * 20, np.full((30 + k, 40, 3), k, np.uint8))


def test_concurrent_writers_of_the_same_photos(tmp_path):
    root = tmp_path / "spill"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_spill_writer, args=(str(root), 3)) for _ in range(2)]
    threads = [threading.Thread(target=_spill_writer, args=(str(root), 3)) for _ in range(2)]
    for w in [*procs, *threads]:
        w.start()
    while any(p.is_alive() for p in procs) or any(t.is_alive() for t in threads):
        reader = SpillStore(root, 2**30)  # a new reader sees the records written so far
        for k in range(20):
            got = reader.read(bytes([k]) * 20)  # readers take no lock: a whole record or none
            if got is not None:
                assert_same(got, np.full((30 + k, 40, 3), k, np.uint8))
        assert reader.stats()["damaged"] == 0
        reader.close()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    for t in threads:
        t.join(60)
    reader = SpillStore(root, 2**30)
    for k in range(20):
        assert_same(reader.read(bytes([k]) * 20), np.full((30 + k, 40, 3), k, np.uint8))
    assert len(list(root.glob("*.seg"))) == 4  # one per writer: writers never share a file


def test_an_unusable_spill_folder_costs_decodes_not_the_run(tmp_path, photos, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the spill folder should be")
    spill = SpillStore(blocker / "spill", 2**30)
    cache = DecodedCache(cap_bytes=10 * ONE, spill=spill)
    ds = ImageListDataset(photos, cache=cache)
    assert ds.preload() == []
    assert spill.stats()["full"] and spill.stats()["written"] == 0
    assert cache.nbytes <= 10 * ONE and "decoding photos again instead" in caplog.text
    for i in range(40):
        assert_same(ds._decoded(i), fresh(photos, i))


def test_a_run_whose_photos_are_all_spilled_trains_bitwise_the_same(tiny_dataset, tmp_path, monkeypatch):
    import mxnet as mx

    from hotdog import train as train_mod
    from hotdog.data import decoded
    from hotdog.settings import TrainConfig

    stores = []
    real_init = decoded.DecodedCache.__init__

    def recording(self, *a, **kw):
        real_init(self, *a, **kw)
        stores.append(self)

    monkeypatch.setattr(decoded.DecodedCache, "__init__", recording)
    cfg = TrainConfig(str(tiny_dataset), input_size=32, batch_size=6, epochs=2, freeze=True, feature_cache=False)

    def run():
        stores.clear()
        done = train_mod.train(cfg, runs_dir=tmp_path / "runs", prepared=train_mod.prepare(cfg, check_memory=False))
        # the run's store for both splits (others, e.g. a test-set evaluation, see fewer photos)
        main = max((st.stats() for st in stores), key=lambda st: st["misses"] + st["hits"] + st["spill_hits"])
        return main, mx.nd.load(os.path.join(done.run_dir, "model.params"))

    in_memory, params = run()
    monkeypatch.setenv(decoded.CAP_ENV, "0.001")  # 1 KB: not one photo fits
    spilled, params_spilled = run()
    assert not in_memory["spilling"] and spilled["spilling"] and spilled["spilled"] == 24
    assert spilled["spill_hits"] >= 16 and spilled["held_mb"] == 0
    assert params.keys() == params_spilled.keys()
    for k in params:
        np.testing.assert_array_equal(params[k].asnumpy(), params_spilled[k].asnumpy())
