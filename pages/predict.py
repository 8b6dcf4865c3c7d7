"""Predict: classify your own photos with a finished run, ImageNet itself, or the zero-shot head."""

from __future__ import annotations

import altair as alt
import streamlit as st

from hotdog import models, runpick
import ui
from i18n import engine, t

# The radio's values (English, the tests pick them), shown through t: t("A finished training run"),
# t("Pretrained ImageNet classifier"), t("Zero-shot ImageNet 'hotdog' head")
RUN, IMAGENET, ZERO_SHOT = "A finished training run", "Pretrained ImageNet classifier", "Zero-shot ImageNet 'hotdog' head"

st.title(t("Predict"))
st.write(t("Upload photos (or take one) and see what a model makes of them. A file that is not a "
           "usable image gets its own message; the others are still classified."))

c_kind, c_pick = st.columns([1, 1.2])
kind = c_kind.radio(t("Model"), [RUN, IMAGENET, ZERO_SHOT], key="predict_kind", format_func=t,
                    help=t("Zero-shot: the new output layer starts from ImageNet's 'hotdog' row (and a "
                           "'not-hotdog' row built from the others, its bias fitted on a few training "
                           "photos) with no training at all."))

predictor = None  # None: the ImageNet classifier itself
source = ui.current_source()
if kind == RUN:
    # Best first (the current data set's, by recorded test accuracy), not newest first: after
    # the chapter's comparison the newest run is the from-scratch one.
    runs = runpick.ranked(ui.finished_runs(), ui.current_dataset())
    if not runs:
        c_pick.info(t("No finished run yet: train one on the Train page, or pick another model."),
                    icon=":material/info:")
    else:
        run = ui.pick_run(runs, key="predict_run", container=c_pick, label=t("Run (best first)"))
        source = run.source or source
        weights = "last"
        if run.best_epoch:
            weights = c_pick.radio(t("Weights"), ["best", "last"], key="predict_weights", horizontal=True,
                                   format_func=lambda w: ui.weights_title(run, w),
                                   help=t("Best: the epoch with the highest validation accuracy; last: after "
                                          "the final epoch (the chapter's)."))
        predictor = ui.or_error(ui.predictor, run.run_dir, weights)
else:
    source = ui.source_select(c_pick)
    if kind == ZERO_SHOT:
        root = ui.current_dataset()
        if not root:
            c_pick.info(t("The zero-shot head takes its classes from a data set: choose one on the Data page."),
                        icon=":material/info:")
        elif (predictor := ui.or_error(ui.zero_shot, source, root)) is not None:
            c_pick.caption(ui.md_escape(models.head_note(predictor.classes)))

uploads = st.file_uploader(
    t("Photos (jpg, png, webp, gif, bmp, tiff…)"), accept_multiple_files=True, key="photos",
    help=t("Anything goes: files that are not images are reported one by one."),
)
use_camera = st.toggle(t("Use the camera"), key="use_camera")
show_heat = st.toggle(t("Show heatmaps"), key="show_heatmaps",
                      help=t("Grad-CAM: where in the photo the model found evidence for the class it "
                             "predicted (brighter = more), from the gradients at its last feature map."))
shot = st.camera_input(t("Take a photo"), key="camera") if use_camera else None

files: list[tuple[str, bytes]] = [(f.name, f.getvalue()) for f in (uploads or [])]
if shot is not None:
    files.append((t("camera photo"), shot.getvalue()))
files, repeats = ui.unique_photos(files)
if repeats:
    st.caption(ui.md_escape(t("Classified once:") + " "
                            + "; ".join(t("{a} is the same photo as {b}", a=a, b=b) for a, b in repeats)))

ready = predictor is not None or kind == IMAGENET
if files and ready:
    # A request over the photo budget (count, total pixels) is one sentence, nothing decoded.
    results = ui.or_error(ui.classify, files, source, predictor=predictor) or []
    heat = {}
    if show_heat and any(r.ok for r in results):
        ex = ui.or_error(ui.explainer, run_dir=predictor.run_dir if kind == RUN and predictor else None,
                         source=source, zero_shot_root=ui.current_dataset() if kind == ZERO_SHOT else None)
        if ex is not None:
            good = [r for r in results if r.ok]
            heat = {id(r): e for r, e in zip(good, ui.or_error(ui.heatmaps, ex, [r.image for r in good]) or [])}
    for r in results:
        with st.container(border=True):
            st.text(r.name)
            if r.error:
                st.error(ui.md_escape(r.error), icon=":material/broken_image:")
                continue
            e = heat.get(id(r))
            # photo | heatmap (when shown) | class bars | ImageNet top-5 (not for ImageNet itself,
            # whose bars already are its top-5)
            widths = [1] + ([1] if e is not None else []) + ([2.8] if kind == IMAGENET else [1.4, 1.4])
            cols = list(st.columns(widths))
            c_img = cols.pop(0)
            c_heat = cols.pop(0) if e is not None else None
            c_prob, c_top = cols[0], (cols[1] if len(cols) > 1 else None)
            c_img.image(r.image, width="stretch")
            if e is not None and e.ok:
                c_heat.image(e.overlay, width="stretch")
                c_heat.caption(ui.md_escape(t("heatmap: {name}", name=e.class_name)))
            elif e is not None:
                c_heat.caption(ui.md_escape(engine(e.error)))
            with c_prob:
                if r.label is not None:
                    st.text(f"→ {r.label}")
                df = ui.probabilities_frame(r.probabilities)
                base = alt.Chart(df).encode(
                    x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), title=None,
                            axis=alt.Axis(format="%", tickCount=5)),
                    y=alt.Y("class:N", sort="-x", title=None, axis=alt.Axis(labelLimit=200)),
                    tooltip=["class", alt.Tooltip("probability:Q", format=".3f")],
                )
                # A long bar carries its number inside (white), a short one beside it: never
                # past the right edge, where the chart would cut it.
                inside = alt.datum.probability > 0.75
                chart = (base.mark_bar(color="#d9480f")
                         + base.transform_filter(inside).mark_text(align="right", dx=-4, color="white").encode(
                             text=alt.Text("probability:Q", format=".1%"))
                         + base.transform_filter(~inside).mark_text(align="left", dx=4).encode(
                             text=alt.Text("probability:Q", format=".1%"))
                         ).properties(height=36 * len(df) + 30)
                st.altair_chart(chart, width="stretch")
            if c_top is None:
                continue
            with c_top:
                st.caption(t("ImageNet top-5 ({source})", source=ui.md_escape(t(ui.source_titles().get(source, source)))))
                st.dataframe(
                    [{"class": top["name"], "probability": round(float(top["probability"]), 3)} for top in r.top5],
                    hide_index=True, width="stretch",
                    # Fixed widths: a long class name ("American lobster, Northern lobster, ...")
                    # must not push the probability out of the table.
                    column_config={"class": st.column_config.TextColumn(t("class"), width=150),
                                   "probability": st.column_config.ProgressColumn(
                                       t("probability"), min_value=0.0, max_value=1.0, format="%.3f", width=110)},
                )
elif files and not ready:
    st.caption(t("Choose a model first."))
