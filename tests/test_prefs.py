"""Remembered choices: round trip, damaged files read as nothing, bad keys refused."""

import json
import threading

import pytest

from hotdog import prefs


def test_round_trip_and_forget(tmp_path):
    assert prefs.load(tmp_path) == {}
    prefs.save("data_root", "/data/hotdog", home=tmp_path)
    prefs.save("language", "vi", home=tmp_path)
    assert prefs.load(tmp_path) == {"data_root": "/data/hotdog", "language": "vi"}
    prefs.save("language", None, home=tmp_path)
    assert prefs.get("language", "en", home=tmp_path) == "en"


@pytest.mark.parametrize("content", [b"", b"{", b"\xff\xfe", b"[1, 2]", b'{"language": 3, "x": "y"}'])
def test_damaged_file_reads_as_nothing(tmp_path, content):
    prefs.prefs_path(tmp_path).write_bytes(content)
    assert prefs.load(tmp_path) == {}
    prefs.save("language", "en", home=tmp_path)  # and saving repairs it
    assert json.loads(prefs.prefs_path(tmp_path).read_text()) == {"language": "en"}


def test_unknown_key_or_type_refused(tmp_path):
    with pytest.raises(ValueError):
        prefs.save("nope", "x", home=tmp_path)
    with pytest.raises(ValueError):
        prefs.save("language", 3, home=tmp_path)


def test_concurrent_saves_keep_every_key(tmp_path):
    keys = [("data_root", f"/d{i}") if i % 2 else ("language", f"l{i}") for i in range(20)]
    threads = [threading.Thread(target=prefs.save, args=(k, v), kwargs={"home": tmp_path}) for k, v in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(prefs.load(tmp_path)) == {"data_root", "language"}
