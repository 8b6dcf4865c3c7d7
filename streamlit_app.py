"""Hotdog Lab: the d2l.ai Fine-Tuning chapter as an app.  Run: ``streamlit run streamlit_app.py``.

This file is only the router and the sidebar status shared by every page; each page lives
in ``pages/`` and is a thin UI over the ``hotdog`` package.

Environment: ``HOTDOG_HOME`` (where data sets, runs and caches live, default ``~/.hotdog``),
``HOTDOG_DATA`` (a data set folder to select by default).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import streamlit as st

# `streamlit run` puts this folder on sys.path, AppTest and other launchers may not.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from hotdog.errors import HotdogError  # noqa: E402
from pages import ui  # noqa: E402

st.set_page_config(page_title="Hotdog Lab", page_icon=":material/lunch_dining:", layout="wide")

page = st.navigation(ui.app_pages())
st.session_state[ui.ROUTED_KEY] = True
status_box = st.sidebar.container()
try:
    page.run()
except HotdogError as err:  # an engine error a page did not expect is still a sentence for people
    ui.show_error(err)
except Exception:  # a bug: keep the app up, keep the traceback for the server log only
    logging.getLogger("hotdog.app").exception("page %r failed", page.title)
    st.error(f"The {page.title} page hit an unexpected error; the details are in the server log. "
             "The other pages keep working.", icon=":material/bug_report:")
# Drawn after the page so it reflects what the page just did (new data set, new job).
with status_box:
    ui.sidebar_status(page.title)
