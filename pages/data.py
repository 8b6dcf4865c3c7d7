"""Data: get a data set (download, local folder, zip upload) and look at it."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import streamlit as st

from hotdog import data
from hotdog.errors import DownloadError, HotdogError
import ui
from i18n import engine, t, verbatim

st.title(t("Data"))
st.write(t(
    "The chapter's hot dog set has 1,400 hot-dog and 1,400 other food photos in "
    "`train/` and `test/` folders with one sub-folder per class. Any folder laid out the same "
    "way (or just one sub-folder per class, split for you) works, with any number of classes."
))

# ------------------------------------------------------------------ choose
FLASH = "data_flash"


def use_now(root: str, message: str) -> None:
    """Select the new data set and redraw, so the picker above already shows it."""
    ui.set_dataset(root)
    st.session_state[FLASH] = message
    st.rerun()


current = ui.dataset_picker()
if current is None:
    st.info(t("No data set yet: download the chapter's set, point to a folder, or upload a zip below."),
            icon=":material/info:")

if st.session_state.get(FLASH):
    st.success(st.session_state.pop(FLASH), icon=":material/check_circle:")

# A segmented control kept in session state, not st.tabs: a tab strip opens its first tab
# again whenever the elements above it change (the success message after "Use this folder").
# Values stay English (kept in session state), shown through t: t("Download the chapter's set"),
# t("Use a local folder"), t("Upload a zip")
GET_DL, GET_FOLDER, GET_ZIP = "Download the chapter's set", "Use a local folder", "Upload a zip"
get = st.segmented_control(t("Get a data set"), [GET_DL, GET_FOLDER, GET_ZIP], key="data_get", default=GET_DL,
                           format_func=t,
                           required=True, persist_state="session", label_visibility="collapsed")

if get == GET_DL:
    st.write(t("Downloads `hotdog.zip` (about 260 MB) from the d2l.ai data server, checks its "
               "SHA-1 and unpacks it into `$HOTDOG_HOME/data/hotdog`."))
    if st.button(t("Download"), icon=":material/download:", key="download"):
        bar = st.progress(0.0, text=t("Connecting…"))

        def _progress(done: int, total: int | None) -> None:
            if total:
                bar.progress(min(done / total, 1.0),
                             text=t("{done} of {total} MB", done=f"{done / 1e6:.1f}", total=f"{total / 1e6:.1f}"))
            else:
                bar.progress(0.0, text=f"{done / 1e6:.1f} MB")

        try:
            root = data.download_hotdog(progress=_progress)
        except DownloadError as err:
            bar.empty()
            ui.show_error(err)
            st.info(t("No internet here? Copy the chapter's `hotdog` folder onto this machine and "
                      "use **Use a local folder**, or upload a zip of it."), icon=":material/wifi_off:")
        except HotdogError as err:
            bar.empty()
            ui.show_error(err)
        else:
            bar.progress(1.0, text=t("Done"))
            use_now(str(root), t("Downloaded and checked; now in use."))

if get == GET_FOLDER:
    st.write(t("A folder inside the app's shared data folders: `$HOTDOG_HOME/data`, `$HOTDOG_DATA` "
               "and the folders listed in `$HOTDOG_DATA_ROOTS` (set by whoever runs the server). "
               "A name alone means a folder in `$HOTDOG_HOME/data`."))
    folder = st.text_input(t("Folder on the server"), key="folder_path",
                           placeholder=t("hotdog, or /srv/photos/chairs (holding train/ and test/, or class folders)"))
    if st.button(t("Use this folder"), key="use_folder", disabled=not folder.strip()):
        path = ui.or_error(data.resolve_user_folder, folder.strip())
        if path is not None and ui.or_error(data.validate_dataset, path) is not None:
            ui.remember_folder(str(path))
            use_now(str(path), t("Folder checked; now in use."))

if get == GET_ZIP:
    st.write(t("A zip holding `train/<class>/…` and `test/<class>/…`, or just `<class>/…`. "
               "It is checked before anything is written (no paths outside the target, no links, "
               "no zip bombs). Uploads are limited to 25 MB: for a bigger set, unpack it on the "
               "server and use a local folder."))
    upload = st.file_uploader(t("Data set zip"), type=["zip"], key="zip_upload")
    default_name = data.dataset_name_from_file(upload.name) if upload is not None else ""
    typed = st.text_input(t("Install as"), key="zip_name", placeholder=default_name or t("name of the data set"),
                          help=t("Folder name under $HOTDOG_HOME/data (letters, digits, '.', '_', '-'); "
                                 "empty: taken from the zip's file name"))
    name = typed.strip() or default_name
    replace = False
    if name and ui.installed_name_exists(name):
        replace = st.checkbox(
            t("Replace the installed data set '{name}'", name=name), key="zip_replace",
            help=t("Unticked, the zip is installed under a new name (e.g. name-2). Runs trained on "
                   "the old set keep their results and will say that their data changed."))
    if st.button(t("Install"), key="install_zip", disabled=upload is None or not name):
        try:
            with st.spinner(t("Checking and unpacking…")):
                root = data.install_zip(upload.getvalue(), name, replace=replace)
            data.validate_dataset(root)
        except HotdogError as err:
            ui.show_error(err)
        else:
            use_now(str(root), t("Installed and checked; now in use.") if root.name == name else
                    t("Installed as '{new}' ('{name}' is taken) and checked; now in use.", new=root.name, name=name))

# ------------------------------------------------------------------ explore
def explore(current: str) -> None:
    st.divider()
    st.subheader(t("What is in it"))
    st.text(verbatim(current))
    report = ui.or_error(ui.dataset_report, current)
    splits = ui.or_error(ui.dataset_splits, current) if report is not None else None
    if splits is None:
        return

    counts = ui.counts_frame(report)
    cols = st.columns(4)
    cols[0].metric(t("Classes"), len(report["classes"]))
    totals = ui.split_totals(report)
    cols[1].metric(t("Train images"), totals["train"])
    cols[2].metric(t("Test images"), totals["test"])
    cols[3].metric(t("Skipped files"), len(report.get("skipped") or []))
    if report.get("layout") == "flat":
        st.caption(t("No train/test folders: a seeded 20 % of each class is held out for testing."))
    for w in report.get("warnings") or []:
        st.warning(ui.md_escape(engine(w)), icon=":material/warning:")
    if report.get("skipped"):
        with st.expander(t("{n} files skipped", n=len(report['skipped']))):
            st.dataframe(report["skipped"], hide_index=True)

    left, right = st.columns(2)
    with left:
        st.markdown(f"**{t('Images per class')}**")
        chart = (
            alt.Chart(counts.assign(split=counts["split"].map(t)))  # the split folders in words
            .mark_bar()
            .encode(
                x=alt.X("images:Q", title=t("images")),
                y=alt.Y("class:N", title=None, sort=list(report["classes"])),
                color=alt.Color("split:N", title=t("split"), scale=alt.Scale(range=["#d9480f", "#74c0fc"])),
                yOffset="split:N",
                tooltip=["split", "class", "images"],
            )
            .properties(height=max(200, 40 * len(report["classes"])))
        )
        st.altair_chart(chart, width="stretch")
    with right:
        sizes = ui.image_sizes(current)
        st.markdown(t("**Image sizes** (width × height, pixels)"))
        if sizes.empty:
            st.caption(t("No readable images."))
        else:
            chart = (
                alt.Chart(sizes)
                .mark_circle(opacity=0.6, color="#d9480f")
                .encode(
                    x=alt.X("width:Q", title=t("width"),
                            scale=alt.Scale(domain=[0, int(sizes.width.max() * 1.1) + 1])),
                    y=alt.Y("height:Q", title=t("height"),
                            scale=alt.Scale(domain=[0, int(sizes.height.max() * 1.1) + 1])),
                    size=alt.Size("images:Q", title=t("images"), scale=alt.Scale(range=[20, 400])),
                    tooltip=["width", "height", "images"],
                )
                .properties(height=max(200, 40 * len(report["classes"])))
            )
            st.altair_chart(chart, width="stretch")

    st.subheader(t("Examples from the training set"))
    st.caption(t("As in the chapter: the first 8 images of the first class and the last 8 of each other class. "
                 "Photos vary a lot in size and aspect ratio."))
    for cls, paths in ui.sample_grid(splits.classes, splits.train, per_class=8):
        st.text(cls)
        if not paths:
            st.caption(t("no images"))
            continue
        images = []
        for p in paths:
            try:
                images.append(ui.thumbnail(p))
            except HotdogError:
                continue
        row = st.columns(8)
        for col, im in zip(row, images):
            col.image(im, width="stretch")

    # ------------------------------------------------------------------ augmentation
    st.subheader(t("Augmentation preview"))
    st.caption(t("One photo through the training transform (random crop of 8–100 % of the area with "
                 "aspect 3/4–4/3, resized, random horizontal flip) several times, and through the test "
                 "transform (resize, centre crop). Shown un-normalised."))
    train_items = splits.train
    names = [f"{splits.classes[label]} / {Path(p).name}" for p, label in train_items]
    c1, c2, c3 = st.columns([3, 1, 1], vertical_alignment="bottom")
    idx = c1.selectbox(t("Photo"), range(len(train_items)), format_func=lambda i: names[i], key="aug_photo")
    size = c2.select_slider(t("Image size"), options=[32, 64, 96, 128, 160, 192, 224], value=224, key="aug_size")
    c3.button(t("New samples"), icon=":material/shuffle:", key="aug_again")
    if idx is not None and train_items:
        pre = data.Preprocess().scaled(size)
        image = ui.or_error(data.decode_image, train_items[idx][0])
        if image is not None:
            views, test_view = ui.augmentation_views(image, pre, 6)
            cols = st.columns(8)
            cols[0].image(image, caption=t("original"), width="stretch")
            for i, (col, v) in enumerate(zip(cols[1:7], views)):
                col.image(v, caption=t("train #{n}", n=i + 1), width="stretch")
            cols[7].image(test_view, caption=t("test"), width="stretch")


if current:
    explore(current)
