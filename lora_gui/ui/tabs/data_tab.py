"""Data tab: every way to bring labelled images, and what was found in them."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import gradio as gr

from ... import data
from ...data.archives import ArchiveLimits
from ..charts import class_distribution_figure
from ..common import PRIVATE, caller_host, md, thumbnails
from ..context import MAX_UPLOAD_MB, AppContext
from ..fields import DEFAULTS, field_problem, lenient
from ..image_input import ImageInput

LIMITS = ArchiveLimits()
LIMITS_TEXT = (f"Uploads up to {MAX_UPLOAD_MB} MB each. Archives: at most {LIMITS.max_members:,} files and "
               f"{LIMITS.max_total_bytes // 2**30} GB unpacked; images up to {data.MAX_IMAGE_PIXELS // 10**6} "
               f"megapixels. Formats: jpg, png, webp, bmp, gif, tiff.")


REPORT_SHOWS = [("skipped files", "skipped"), ("used files", "used"), ("all files", "all")]
MAX_REPORT_ROWS = 2000


def _report_rows(ds: data.Dataset | None, show: str = "all") -> list[list[str]]:
    # Skipped files first: they are what a person needs to act on.
    rows = ds.report.as_rows() if ds is not None else []
    rows = [r for r in rows if show == "all" or r[2] == show]
    return sorted(rows, key=lambda r: (r[2] == "used", r[0]))[:MAX_REPORT_ROWS]


def _group(path: str, reason: str) -> str:
    if reason == "not an image":   # thousands of .txt/.json/.DS_Store read better as one line each
        return f"not an image ({Path(path).suffix.lower() or 'no extension'})"
    return reason.split(" (")[0].split(" of ")[0].split(":")[0]


def report_groups(ds: data.Dataset | None) -> str:
    """What happened to the files, one line per kind ('not an image' per extension)."""
    if ds is None:
        return ""
    used = sum(1 for f in ds.report.files if f.status == "used")
    skipped = Counter(_group(f.path, f.reason) for f in ds.report.files if f.status == "skipped")
    lines = [f"- used for training: {used:,} files"] + [f"- {md(k)}: {n:,} files" for k, n in skipped.most_common()]
    total = len(ds.report.files)
    more = f" The table shows the first {MAX_REPORT_ROWS:,} of each choice." if total > MAX_REPORT_ROWS else ""
    return "\n".join(lines) + more


def dataset_outputs(ds: data.Dataset | None, label: str, val_fraction: float, split_seed: int = 0):
    """(summary markdown, report rows, split rows, chart, gallery) for a dataset or none."""
    if ds is None:
        return ("No dataset yet. Click **Use the example dataset**, or bring your own below.",
                [], [], None, [], "", "all")
    # The report's summary ends with its errors and warnings; they are shown once, below it.
    counts = [line for line in ds.report.summary().splitlines() if not line.startswith(("Error: ", "Warning: "))]
    lines = [f"**{md(label)}** — " + "  \n".join(md(line) for line in counts)]
    lines += [f"\nNote: {md(w)}" for w in ds.report.warnings]
    if ds.report.errors:
        lines.append("\n**Fix before training:**\n" + "\n".join(f"- {md(e)}" for e in ds.report.errors))
    else:
        lines.append("\nReady: go to **2 · Model & LoRA** to check the settings, or straight to **3 · Train**.")
    split_rows = []
    problem = field_problem("val_fraction", val_fraction)
    if problem:
        lines.append(f"\n**Held out for validation:** {md(problem)}.")
    elif not ds.report.errors:
        train, val = data.split_dataset(ds, val_fraction, split_seed)
        split_rows = data.split_counts(train, val, ds.classes)
    chart = class_distribution_figure(split_rows if split_rows else ds.class_counts())
    return ("\n".join(lines), _report_rows(ds), split_rows, chart, thumbnails(data.gallery_items(ds, per_class=4)),
            report_groups(ds), "all")


def has_split(ds) -> bool:
    return ds is not None and not ds.report.errors


def folder_meta(raw: str | None) -> tuple[list[str], str, str]:
    """What folder_paths.js sends beside a folder upload: (relative paths in upload order, the folder's
    name, 'N other files left out: .txt 3, ...' for the files the browser did not send)."""
    try:
        meta = json.loads(raw) if raw else []
    except json.JSONDecodeError:
        meta = []
    if isinstance(meta, list):   # older pages sent the paths alone
        return [str(p) for p in meta], "", ""
    if not isinstance(meta, dict):
        return [], "", ""
    skipped = meta.get("skipped") if isinstance(meta.get("skipped"), dict) else {}
    counts = sorted(((str(k), int(v)) for k, v in skipped.items() if isinstance(v, int)), key=lambda kv: -kv[1])
    total = sum(n for _, n in counts)
    left_out = (f"{total:,} other files left out in the browser: " + ", ".join(f"{k} {n:,}" for k, n in counts[:6])
                + (", …" if len(counts) > 6 else "")) if total else ""
    return [str(p) for p in meta.get("paths") or []], str(meta.get("folder") or ""), left_out


def build_data_tab(ctx: AppContext, data_path: str | None = None) -> None:
    ws = ctx.workspace
    gr.Markdown("Give the model labelled pictures: **one folder per category** (e.g. `cats/`, `dogs/`). "
                "New here? Start with the example.", elem_classes="lg-hint")
    with gr.Row():
        example_btn = gr.Button("Use the example dataset", variant="primary", scale=0, min_width=260,
                                elem_id="lg-use-example")
        gr.Markdown("120 small Fashion-MNIST photos in 4 classes (t-shirt, trouser, sneaker, bag); "
                    "trains in under a minute on a laptop CPU.", elem_classes="lg-hint")
    with gr.Tabs():
        with gr.Tab("Folder"):
            gr.Markdown("Pick a folder of class folders (click the box), or drag one onto it.",
                        elem_classes="lg-hint")
            folder = gr.File(file_count="directory", label="Folder of class folders", elem_id="lg-folder", height=200)
            relpaths = gr.Textbox(elem_id="lg-relpaths", elem_classes="lg-hidden", show_label=False,
                                  container=False)
        with gr.Tab("Archive or CSV"):
            archive = gr.File(file_types=[".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".csv"],
                              label="A .zip / .tar / .tar.gz of class folders (train/ and val/ splits are kept)")
        with gr.Tab("Path on this computer"):
            path_box = gr.Textbox(label="Folder, archive or CSV path (when the app runs on your own machine)",
                                  placeholder="/home/me/pictures/my_dataset", value=data_path or "")
            path_btn = gr.Button("Load this path")
        with gr.Tab("Class by class (webcam)"):
            build_class_builder(ctx)
    gr.Markdown(LIMITS_TEXT, elem_classes="lg-hint")
    val_fraction = gr.Slider(0.0, 0.5, value=DEFAULTS["val_fraction"], step=0.05, label="Held out for validation",
                             info="This share of each class is never trained on; it measures real accuracy.")
    lenient(val_fraction)
    ctx.fields["val_fraction"] = val_fraction
    summary = gr.Markdown(dataset_outputs(None, "", 0.2)[0], elem_id="lg-data-summary")
    with gr.Row():
        # hidden until there is a dataset to describe
        split_table = gr.Dataframe(headers=["class", "train", "validation"], label="Images per class",
                                   interactive=False, scale=1, visible=False)
        chart = gr.Plot(label="Class distribution", scale=2, visible=False)
    gallery = gr.Gallery(label="A few images per class", columns=8, height=220, object_fit="contain",
                         format="jpeg", elem_id="lg-data-gallery", visible=False)
    with gr.Accordion("Validation report: every file and what happened to it", open=False):
        groups = gr.Markdown(elem_id="lg-report-groups")
        report_show = gr.Radio(REPORT_SHOWS, value="all", label="Show", elem_id="lg-report-show")
        report = gr.Dataframe(headers=["file", "class", "status", "reason"], interactive=False, wrap=True,
                              max_height=420)
    outputs = [summary, report, split_table, chart, gallery, groups, report_show]

    def show(session, ds, label, vf):
        session.dataset, session.dataset_label = ds, label
        return (session, *dataset_outputs(ds, label, vf))

    def load_source(session, source, label, vf):
        try:
            ds = data.load_dataset(source, ws)
        except data.DataError as exc:
            raise gr.Error(str(exc)) from None
        return show(session, ds, label, vf)

    def use_example(session, vf):
        return load_source(session, str(data.example_dataset_path()), "Example dataset", vf)

    def from_folder(session, files, rel_json, vf):
        if not files:
            return (session, *dataset_outputs(session.dataset, session.dataset_label, vf))
        rels, folder_name, left_out = folder_meta(rel_json)
        try:
            ds = data.dataset_from_files([str(f) for f in files], rels, ws)
        except data.DataError as exc:
            raise gr.Error(str(exc)) from None
        top = folder_name or (rels[0].split("/")[0] if rels else "Uploaded folder")
        return show(session, ds, f"Folder '{top}'" + (f" ({left_out})" if left_out else ""), vf)

    def from_archive(session, file, vf):
        if not file:
            return (session, *dataset_outputs(session.dataset, session.dataset_label, vf))
        return load_source(session, str(file), f"Archive '{Path(str(file)).name}'", vf)

    def from_path(session, path, vf, request: gr.Request):
        if not (path or "").strip():
            raise gr.Error("Type the path of a folder, archive or CSV file first.")
        path = path.strip()
        if path != (data_path or "").strip():   # the operator's own --data needs no permission
            try:
                ctx.policy.check_path(path, caller_host(request))
            except PermissionError as exc:
                raise gr.Error(str(exc)) from None
        return load_source(session, path, f"'{path}'", vf)

    def filter_report(session, show):
        return _report_rows(session.dataset, show)

    def resplit(session, vf):
        return (session, *dataset_outputs(session.dataset, session.dataset_label, vf))

    example_btn.click(use_example, [ctx.session, val_fraction], [ctx.session, *outputs], api_name="use_example")
    folder.upload(from_folder, [ctx.session, folder, relpaths, val_fraction], [ctx.session, *outputs],
                  api_name="load_folder")
    archive.upload(from_archive, [ctx.session, archive, val_fraction], [ctx.session, *outputs],
                   api_name="load_archive")
    path_btn.click(from_path, [ctx.session, path_box, val_fraction], [ctx.session, *outputs], api_name="load_path")
    path_box.submit(from_path, [ctx.session, path_box, val_fraction], [ctx.session, *outputs], **PRIVATE)
    val_fraction.change(resplit, [ctx.session, val_fraction], [ctx.session, *outputs], trigger_mode="always_last",
                        **PRIVATE)
    # the tables and charts show once there is a dataset (a change listener keeps the API's outputs plain)
    summary.change(lambda session: (gr.update(visible=has_split(session.dataset)),)
                   + (gr.update(visible=session.dataset is not None),) * 2,
                   ctx.session, [split_table, chart, gallery], show_progress="hidden", **PRIVATE)
    report_show.input(filter_report, [ctx.session, report_show], report, show_progress="hidden", **PRIVATE)
    ctx.shared["show_dataset"] = (show, outputs)
    if data_path:
        ctx.shared.setdefault("on_load", []).append(
            lambda demo: demo.load(from_path, [ctx.session, path_box, val_fraction], [ctx.session, *outputs], **PRIVATE))
    from ..health_panel import (
        build_health_panel,  # issue 17: all of the Health check lives there
    )
    build_health_panel(ctx, val_fraction)


def build_class_builder(ctx: AppContext) -> None:
    """Teachable-Machine style: name a class, then drop its images or take webcam snapshots."""
    ws = ctx.workspace
    gr.Markdown("Make classes one at a time: name one, then add its pictures from files or the webcam.",
                elem_classes="lg-hint")
    with gr.Row():
        new_name = gr.Textbox(label="New class name", placeholder="e.g. mug", scale=3)
        add_btn = gr.Button("Add class", scale=1)
    with gr.Row():
        current = gr.Dropdown(label="Class", choices=[], scale=3, allow_custom_value=False)
        counts = gr.Markdown("No classes yet.")
    with gr.Row():
        files = gr.File(file_count="multiple", file_types=["image"], label="Add images to this class",
                        elem_id="lg-cb-files")
        cam = ImageInput(sources=["webcam", "upload", "clipboard"], type="numpy", label="Snapshot")
    snap_btn = gr.Button("Add snapshot to this class")
    with gr.Row():
        rename_to = gr.Textbox(label="Rename selected class to", scale=3)
        rename_btn = gr.Button("Rename", scale=1)
        delete_btn = gr.Button("Delete selected class", variant="stop", scale=1)
    use_btn = gr.Button("Use these classes as the dataset", variant="primary")

    def state(session, selected=None):
        found = session.class_builder(ws).classes()
        names = list(found)
        text = ", ".join(f"**{md(k)}**: {v} image(s)" for k, v in found.items()) or "No classes yet."
        pick = selected if selected in names else (names[0] if names else None)
        return session, gr.Dropdown(choices=names, value=pick), text

    def guarded(fn):
        def run(session, *args):
            try:
                return fn(session, *args)
            except data.DataError as exc:
                raise gr.Error(str(exc)) from None
        return run

    @guarded
    def add(session, name):
        session.class_builder(ws).add_class(name)
        return (*state(session, name.strip()), "")

    @guarded
    def add_files(session, cls, paths):
        if not cls:
            raise gr.Error("Add a class first, then its images.")
        result = session.class_builder(ws).add_images(cls, [str(p) for p in (paths or [])])
        session_, pick, text = state(session, cls)
        return session_, pick, f"{text}\n\nTo **{md(cls)}**: {md(result.summary())}.", None

    @guarded
    def add_snapshot(session, cls, image):
        if not cls:
            raise gr.Error("Add a class first, then take snapshots for it.")
        if image is None:
            raise gr.Error("Take a snapshot with the webcam (or drop a picture) first.")
        session.class_builder(ws).add_image_array(cls, image)
        return state(session, cls)

    @guarded
    def rename(session, cls, new):
        if not cls:
            raise gr.Error("Pick the class to rename.")
        session.class_builder(ws).rename_class(cls, new)
        return (*state(session, new.strip()), "")

    @guarded
    def delete(session, cls):
        if not cls:
            raise gr.Error("Pick the class to delete.")
        session.class_builder(ws).delete_class(cls)
        return state(session)

    add_btn.click(add, [ctx.session, new_name], [ctx.session, current, counts, new_name], api_name="add_class")
    new_name.submit(add, [ctx.session, new_name], [ctx.session, current, counts, new_name], **PRIVATE)
    files.upload(add_files, [ctx.session, current, files], [ctx.session, current, counts, files],
                 api_name="add_class_images")
    snap_btn.click(add_snapshot, [ctx.session, current, cam], [ctx.session, current, counts], api_name="add_snapshot")
    rename_btn.click(rename, [ctx.session, current, rename_to], [ctx.session, current, counts, rename_to],
                     api_name="rename_class")
    delete_btn.click(delete, [ctx.session, current], [ctx.session, current, counts], api_name="delete_class")

    def use(session, vf):
        show, _ = ctx.shared["show_dataset"]
        builder = session.class_builder(ws)
        if not builder.classes():
            raise gr.Error("Add at least two classes with a few images each first.")
        return show(session, builder.dataset(), "Classes made here", vf)

    def wire_use(demo):
        _, outputs = ctx.shared["show_dataset"]
        use_btn.click(use, [ctx.session, ctx.fields["val_fraction"]], [ctx.session, *outputs], api_name="use_classes")
    ctx.shared.setdefault("on_load", []).append(wire_use)
