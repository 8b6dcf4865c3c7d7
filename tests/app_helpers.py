"""What every AppTest of the whole app shares: the entry script, one run of it, and the check
that a page rendered without an exception or an "unexpected error" box."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")


def new_app(timeout: float = 300) -> AppTest:  # one script run; generous for a loaded machine
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.run()
    return at


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not [e.value for e in at.error if "unexpected error" in e.value]
