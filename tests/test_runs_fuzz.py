"""Fuzz of the run store (Trust issue, item 5): any damage to any file of one run, i.e.
truncation, garbage appended or written over it, a deleted file, JSON of the wrong type for
the whole file or for one field, never breaks the listing, never touches the other runs,
and every reader answers with a value or a RunStoreError sentence. No MXNet in the loop."""

from __future__ import annotations

import contextlib
import io
import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hotdog.cli import main
from hotdog.errors import RunStoreError
from hotdog.predict import run_model_info
from hotdog.runs import STATES, RunStore
from test_runs import fake_run

READ_STATES = STATES + ("damaged",)  # what a reader may see
RUN_FILES = ("config.json", "status.json", "metrics.jsonl", "model.json", "model.params")
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**30, 10**30) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@st.composite
def damaged_bytes(draw, raw: bytes, file: str):
    """One way to damage a file whose good content is ``raw`` (None: delete it)."""
    kind = draw(st.sampled_from(["truncate", "append", "overwrite", "replace", "delete", "json", "field"]))
    if kind == "truncate":
        return raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    if kind == "append":
        return raw + draw(st.binary(min_size=1, max_size=300))
    if kind == "overwrite":
        at = draw(st.integers(0, len(raw)))
        junk = draw(st.binary(min_size=1, max_size=64))
        return raw[:at] + junk + raw[at + len(junk):]
    if kind == "replace":
        return draw(st.binary(max_size=300))
    if kind == "delete":
        return None
    if kind == "json" or file == "model.params":
        return json.dumps(draw(json_values)).encode()
    # One field (or one metrics line) gets a random JSON value of any type.
    if file == "metrics.jsonl":
        lines = raw.splitlines()
        i = draw(st.integers(0, len(lines)))
        row = json.loads(lines[i]) if i < len(lines) else {"epoch": 3}
        key = draw(st.sampled_from(sorted(row)))
        row[key] = draw(json_values)
        new = json.dumps(row).encode()
        return b"\n".join(lines[:i] + [new] + lines[i + 1:]) + b"\n"
    doc = json.loads(raw)
    target = doc
    if file == "model.json" and draw(st.booleans()):
        target = doc["preprocess"]
    key = draw(st.sampled_from(sorted(target)))
    if draw(st.booleans()):
        target[key] = draw(json_values)
    else:
        del target[key]
    return json.dumps(doc).encode()


def make_store(root: Path) -> RunStore:
    fake_run(root, "a-finished", created=1_700_000_000.0)
    b = fake_run(root, "b-stopped", created=1_700_000_100.0)
    status = json.loads((b / "status.json").read_text())
    (b / "status.json").write_text(json.dumps({**status, "state": "stopped", "message": "stopped by the user"}))
    fake_run(root, "victim", created=1_700_000_200.0)
    return RunStore(root)


def cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def strict_json(text: str):
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in --json output"))


@FUZZ
@given(data=st.data(), file=st.sampled_from(RUN_FILES))
def test_any_damage_to_one_run_file(data, file):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = make_store(root)
        before = {s.run_id: s.to_dict() for s in store.list()}
        assert before["victim"]["status"] == "finished"
        path = root / "victim" / file
        new = data.draw(damaged_bytes(path.read_bytes(), file), label="new content")
        if new is None:
            path.unlink()
        else:
            path.write_bytes(new)

        summaries = {s.run_id: s for s in store.list()}  # never raises
        assert set(summaries) == {"a-finished", "b-stopped", "victim"}
        for run_id in ("a-finished", "b-stopped"):  # untouched runs keep everything
            assert summaries[run_id].to_dict() == before[run_id]
        v = summaries["victim"]
        assert v.status in READ_STATES
        assert v.test_acc is None or (isinstance(v.test_acc, float) and 0 <= v.test_acc <= 1)
        assert v.created is None or (isinstance(v.created, (int, float)) and math.isfinite(v.created))
        assert v.lr is None or (isinstance(v.lr, (int, float)) and v.lr > 0)
        if v.status == "damaged":
            assert v.message and "\n" not in v.message and "Traceback" not in v.message and tmp not in v.message

        try:
            rec = store.load("victim")
        except RunStoreError as err:
            assert v.status == "damaged" and str(err) == f"run victim is damaged: {v.message}"
        else:
            assert v.status != "damaged" and rec.state == v.status
            assert [m["epoch"] for m in rec.metrics] == [m["epoch"] for m in rec.metrics if m["epoch"] >= 1]
        try:
            info = run_model_info(root / "victim")
        except RunStoreError as err:
            assert "Traceback" not in str(err) and tmp not in str(err)
        else:
            assert info["classes"] and len(set(info["classes"])) == len(info["classes"])

        code, out, err = cli("runs", "--runs-dir", root, "--json")
        assert code == 0 and "Traceback" not in err
        listed = {r["run_id"]: r["status"] for r in strict_json(out)["runs"]}
        assert listed == {k: s.status for k, s in summaries.items()}
        code, out, err = cli("runs", "--runs-dir", root)
        assert code == 0 and "victim" in out and "Traceback" not in out + err


# ------------------------------------------------------------------ .params files, checked before MXNet

@pytest.fixture(scope="module")
def small_params(tmp_path_factory) -> tuple[bytes, int]:
    """A real (small) Gluon parameter file, and where its names section starts."""
    import mxnet as mx
    from mxnet import gluon

    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(4, 3), gluon.nn.BatchNorm(), gluon.nn.Dense(3))
    net.initialize()
    net(mx.nd.zeros((1, 3, 8, 8)))
    path = tmp_path_factory.mktemp("params") / "small.params"
    net.save_parameters(str(path))
    names = mx.nd.load(str(path)).keys()
    raw = path.read_bytes()
    return raw, len(raw) - 8 - sum(8 + len(k.encode()) for k in names)


@FUZZ
@given(data=st.data())
def test_params_check_refuses_truncation_and_never_crashes(small_params, data):
    from hotdog.weights import ParamsFileError, check_params_file

    raw, names_start = small_params
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.params"
        path.write_bytes(raw)
        check_params_file(path)  # the intact file passes

        cut = data.draw(st.integers(0, names_start - 1), label="cut")
        path.write_bytes(raw[:cut])
        with pytest.raises(ParamsFileError, match="corrupted, truncated"):
            check_params_file(path)

        at = data.draw(st.integers(0, len(raw) - 1), label="at")
        junk = data.draw(st.binary(min_size=1, max_size=32), label="junk")
        path.write_bytes(raw[:at] + junk + raw[at + len(junk):])
        try:
            check_params_file(path)  # may pass (e.g. junk in the data): MXNet then judges
        except ParamsFileError as err:
            assert "Traceback" not in str(err) and tmp not in str(err)


def test_params_check_refuses_a_huge_declared_array(small_params, tmp_path):
    """Garbage after the header made MXNet allocate ~16 GB before failing: refused first."""
    from hotdog.weights import ParamsFileError, check_params_file

    raw, _ = small_params
    path = tmp_path / "model.params"
    path.write_bytes(raw[:100] + b"\xff" * 4000)
    with pytest.raises(ParamsFileError, match="claims 4294967295 dimensions|needs .* bytes"):
        check_params_file(path)
