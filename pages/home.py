"""Home: what the app does, and where things stand (data, source model, devices, runs)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from hotdog import models
import ui
from i18n import t, tr, verbatim

st.title(":material/lunch_dining: Hotdog Lab")
st.markdown(t(
    "Fine-tune an ImageNet network to tell **hot dogs** from everything else, as in the "
    "[d2l.ai Fine-Tuning chapter](https://d2l.ai/chapter_computer-vision/fine-tuning.html).  \n"
    "**Data** gets and shows the photos, **Train** fine-tunes (or trains from scratch) and plots "
    "the curves, **Predict** classifies your own photos, **Weights** looks inside ImageNet's "
    "'hotdog' output row.  \nEverything runs on this machine, offline."
))

c_data, c_model, c_dev = st.columns([1.3, 1, 0.8])

with c_data.container(border=True, height="stretch"):
    st.markdown(f"**{t('Data set')}**")
    root = ui.current_dataset()
    if not root:
        st.warning(t("None found yet."), icon=":material/warning:")
        st.page_link("pages/data.py", label=t("Get the data"), icon=":material/arrow_forward:")
    else:
        st.text(Path(root).name)
        st.caption(ui.md_escape(verbatim(root)))
        report = ui.or_error(ui.dataset_report, root)
        if report is not None:
            counts = ui.counts_frame(report)
            st.text(t("{n} classes:", n=len(report['classes'])) + " " + ", ".join(report["classes"]))
            per_split = counts.groupby("split")["images"].sum().to_dict()
            # t("train"), t("test"): the split folders' names, in words
            st.text(t("{counts} images", counts=" · ".join(f"{t(split)} {n:,}" for split, n in per_split.items())))

with c_model.container(border=True, height="stretch"):
    st.markdown(f"**{t('Source model')}**")
    spec = ui.or_error(models.get_spec, ui.current_source())
    if spec is not None:
        st.text(t(spec.title))
        st.caption(t("Weights ship with the app (offline)." if spec.offline
                     else "Weights are downloaded once, then cached.")
                   + " " + t("Input {n} px.", n=spec.preprocess.input_size))

with c_dev.container(border=True, height="stretch"):
    st.markdown(f"**{t('Devices')}**")
    n = ui.num_gpus()
    st.text((t("{n} GPU", n=n) if n == 1 else t("{n} GPUs", n=n)) if n else t("CPU only"))
    st.caption(t("Training uses every GPU it finds, else the CPU."))

with st.container(border=True):
    st.markdown(f"**{t('Latest runs')}**")
    runs = (ui.or_error(lambda: ui.run_store().list()) or [])[:5]
    if not runs:
        st.caption(t("No training runs yet."))
        st.page_link("pages/train.py", label=t("Train one"), icon=":material/arrow_forward:")
    else:
        st.dataframe(
            # Column names stay English words in English (tests read them): t("run"), t("mode"), t("status")
            [{t("run"): r.run_id, t("mode"): tr(r.mode), t("status"): tr(r.status),
              ui.acc_header(): ui.acc_text(r.accuracy)} for r in runs],  # 0.500, as Train shows it
            hide_index=True, width="stretch",
            column_config={ui.acc_header(): st.column_config.TextColumn(help=ui.acc_help())},
        )
