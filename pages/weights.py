"""Weights: ImageNet's 'hotdog' output row of the source model, and what fine-tuning made of it."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from hotdog import imagenet
from i18n import t
import ui

st.title(t("Weights"))

source = ui.source_select()
with st.sidebar:
    class_name = st.text_input(t("ImageNet class"), value="hotdog", key="weights_class",
                               help=t("Any ImageNet class name or index; spelling is forgiving."))
    k = st.slider(t("Nearest classes"), 3, 30, 10, key="weights_k")

cw = ui.or_error(ui.class_weights, source, class_name.strip() or "hotdog", k)

if cw is not None:
    names = imagenet.class_names()
    st.write(t(
        "The chapter reads `pretrained_net.output.weight.data()[713]` as the 'hotdog' row. "
        "In the ImageNet class order the models here use, the row is found by name instead:"
    ))
    hot = imagenet.class_index("hotdog")
    c1, c2 = st.columns(2)
    c1.info(ui.md_escape(t("Row {index} is '{name}'", index=cw.index, name=names[cw.index])),
            icon=":material/check_circle:")
    c2.warning(ui.md_escape(t("Row 713 is '{name}', not a hot dog ('hotdog' is row {hot})",
                              name=names[713], hot=hot)),
               icon=":material/warning:")

    m = st.columns(6)
    m[0].metric(t("Index"), cw.index)
    m[1].metric(t("Length"), cw.length)
    m[2].metric(t("L2 norm"), f"{cw.norm:.3f}")
    m[3].metric(t("Bias"), f"{cw.bias:.4f}")
    m[4].metric(t("Mean"), f"{cw.mean:.4f}")
    m[5].metric(t("Std"), f"{cw.std:.4f}")

    vec = pd.DataFrame({"dimension": range(len(cw.vector)), "weight": cw.vector})
    left, right = st.columns(2)
    with left:
        st.markdown(t("**Histogram of the row's weights**"))
        st.altair_chart(
            alt.Chart(vec).mark_bar(color="#d9480f")
            .encode(x=alt.X("weight:Q", bin=alt.Bin(maxbins=60), title=t("weight")),
                    y=alt.Y("count():Q", title=t("dimensions")))
            .properties(height=260),
            width="stretch",
        )
    with right:
        st.markdown(t("**Weight per feature dimension**"))
        st.altair_chart(
            alt.Chart(vec).mark_bar(color="#d9480f", width=1)
            .encode(x=alt.X("dimension:Q", title=t("feature dimension"),
                          scale=alt.Scale(domain=[0, len(cw.vector)], nice=False)),
                    y=alt.Y("weight:Q", title=t("weight")),
                    tooltip=["dimension", alt.Tooltip("weight:Q", format=".4f")])
            .properties(height=260),
            width="stretch",
        )

    st.markdown(t("**Nearest ImageNet classes** (cosine similarity of output rows)"))
    near = pd.DataFrame(cw.nearest)
    st.altair_chart(
        alt.Chart(near).mark_bar(color="#d9480f")
        .encode(x=alt.X("cosine:Q", title=t("cosine similarity")),
                y=alt.Y("name:N", sort="-x", title=None, axis=alt.Axis(labelLimit=260)),
                tooltip=["index", "name", alt.Tooltip("cosine:Q", format=".3f")])
        .properties(height=max(120, 30 * len(near))),
        width="stretch",
    )

    st.subheader(t("What drives the '{name}' score for a photo", name=imagenet.short_name(cw.index)))
    st.caption(t("The row's score for a photo is its bias plus, over every feature dimension, the row's "
                 "weight times the photo's pooled feature. The bars are the dimensions that add or take "
                 "away the most."))
    c_up, c_pick = st.columns(2)
    upload = c_up.file_uploader(t("A photo"), key="weights_photo",
                                type=["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"])
    root = ui.current_dataset()
    samples = []
    if root:
        splits = ui.or_error(ui.dataset_splits, root)
        samples = [str(p) for p, _ in (splits.test or splits.train)[:100]] if splits else []
    sample = c_pick.selectbox(t("…or a photo of the data set"), [""] + samples, key="weights_sample",
                              format_func=lambda p: Path(p).name if p else "—") if samples else ""
    photo = None
    if upload is not None:
        from hotdog.data import decode_image

        photo = ui.or_error(decode_image, upload.getvalue())
    elif sample:
        photo = ui.or_error(ui.thumbnail, sample, 512)
    if photo is not None:
        ex = ui.or_error(ui.imagenet_explainer, source)
        contrib = ui.or_error(ex.contributions, photo, cw.index, 15) if ex is not None else None
        if contrib is not None:
            c_img, c_chart = st.columns([1, 3])
            c_img.image(photo, width="stretch")
            m = c_img.columns(2)
            m[0].metric(t("Score"), f"{contrib['score']:.2f}", help=t("the row's logit for this photo"))
            m[1].metric(t("Bias"), f"{contrib['bias']:.2f}")
            c_img.caption(t("all dimensions: +{positive} / {negative}", positive=f"{contrib['positive']:.2f}",
                            negative=f"{contrib['negative']:.2f}"))
            df = ui.contributions_frame(contrib)
            df["sign"] = df["sign"].map(t)  # the legend's words (ui.py names them in English)
            raises, lowers = t("raises the score"), t("lowers the score")
            c_chart.altair_chart(
                alt.Chart(df).mark_bar()
                .encode(x=alt.X("contribution:Q", title=t("weight × feature")),
                        y=alt.Y("dimension:N", sort=alt.EncodingSortField("contribution", op="sum", order="descending"),
                                title=t("feature dimension")),
                        color=alt.Color("sign:N", scale=alt.Scale(domain=[raises, lowers],
                                                                  range=["#d9480f", "#1c7ed6"]), title=None),
                        tooltip=["dimension", alt.Tooltip("weight:Q", format=".4f"),
                                 alt.Tooltip("feature:Q", format=".4f"),
                                 alt.Tooltip("contribution:Q", format=".4f")])
                .properties(height=max(200, 22 * len(df))),
                width="stretch",
            )

    st.subheader(t("After fine-tuning"))
    runs = [r for r in ui.finished_runs() if r.mode == "finetune" and r.source == source]
    if not runs:
        st.caption(t("No finished fine-tuning run of this source model yet: train one to compare its "
                     "learned output row with ImageNet's."))
    else:
        run = ui.pick_run(runs, key="weights_run", label=t("Fine-tuned run"))
        rows = ui.or_error(ui.run_output_rows, run.run_dir)
        if rows:
            table = []
            for cls, row in rows.items():
                table.append({
                    t("run class"): cls,
                    t("cosine with ImageNet '{name}'", name=names[cw.index]): round(ui.cosine(row, cw.vector), 4),
                    t("norm"): round(float((row ** 2).sum() ** 0.5), 3),
                })
            st.dataframe(table, hide_index=True)
            st.caption(t("A head initialised from ImageNet starts at cosine 1 for the matching class; "
                         "a random (Xavier) head starts near 0. Training moves it from there."))
