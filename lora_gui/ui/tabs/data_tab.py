"""Data tab: every way to bring labelled images, and what was found in them."""
from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

import gradio as gr

from ... import data
from ...data.archives import ArchiveLimits
from ..access import person_key
from ..common import PRIVATE, caller_host, unquoted
from ..context import MAX_UPLOAD_MB, AppContext
from ..fields import DEFAULTS, lenient
from .class_builder_panel import build_class_builder
from .dataset_view import REPORT_SHOWS, dataset_outputs, filter_report, has_split, resplit, show_dataset

LIMITS = ArchiveLimits()
LIMITS_TEXT = (f"Uploads up to {MAX_UPLOAD_MB} MB each. Archives: at most {LIMITS.max_members:,} files and "
               f"{LIMITS.max_total_bytes // 2**30} GB unpacked; images up to {data.MAX_IMAGE_PIXELS // 10**6} "
               f"megapixels. Formats: jpg, png, webp, bmp, gif, tiff.")


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


class DataActions:
    """The Data tab's event handlers, over plain values (the session, a path, the held-out share);
    the workspace, the access policy and the operator's ``--data`` come from the app context."""

    def __init__(self, ctx: AppContext, data_path: str | None = None):
        self.ws, self.policy, self.data_path = ctx.workspace, ctx.policy, (data_path or "").strip()

    def load_source(self, session, source, label, vf):
        ds = data.load_dataset(source, self.ws, fixes_by=person_key(self.policy, session))   # DataError: a toast
        return show_dataset(session, ds, label, vf)

    def use_example(self, session, vf):
        return self.load_source(session, str(data.example_dataset_path()), "Example dataset", vf)

    def from_folder(self, session, files, rel_json, vf):
        if not files:
            return resplit(session, vf)
        rels, folder_name, left_out = folder_meta(rel_json)
        ds = data.dataset_from_files([str(f) for f in files], rels, self.ws, fixes_by=person_key(self.policy, session))
        top = folder_name or (rels[0].split("/")[0] if rels else "Uploaded folder")
        return show_dataset(session, ds, f"Folder '{top}'" + (f" ({left_out})" if left_out else ""), vf)

    def from_archive(self, session, file, vf):
        if not file:
            return resplit(session, vf)
        return self.load_source(session, str(file), f"Archive '{Path(str(file)).name}'", vf)

    def from_path(self, session, path, vf, request: gr.Request):
        path = typed_path(path)
        if not path:
            raise gr.Error("Type the path of a folder, archive or CSV file first.")
        if path != self.data_path:   # the operator's own --data needs no permission
            try:
                self.policy.check_path(path, caller_host(request))
            except PermissionError as exc:
                raise gr.Error(str(exc)) from None
        return self.load_source(session, path, f"'{path}'", vf)


def typed_path(text) -> str:
    """A path as people paste it: "Copy as path" wraps it in quotes, a file manager may give a
    file:// address with %20 for spaces."""
    path = unquoted((text or "").strip()).strip()
    if path.startswith("file://"):
        path = urllib.parse.unquote(urllib.parse.urlparse(path).path)
    return path


def build_data_tab(ctx: AppContext, data_path: str | None = None) -> None:
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
            # no file_types: Gradio's own check of them turns the drop zone into a red "Error" pill;
            # the handler says what a wrong file is instead (data.load_dataset)
            archive = gr.File(label="A .zip / .tar / .tar.gz of class folders, or a .csv of file,label "
                                    "(train/ and val/ splits are kept)", elem_id="lg-archive")
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
                                   interactive=False, scale=1, visible=False, wrap=True,
                                   column_widths=["50%", "22%", "28%"])
        chart = gr.Plot(label="Class distribution", scale=2, visible=False)
    gallery = gr.Gallery(label="A few images per class", columns=8, height=220, object_fit="contain",
                         format="jpeg", elem_id="lg-data-gallery", visible=False)
    with gr.Accordion("Validation report: every file and what happened to it", open=False):
        groups = gr.Markdown(elem_id="lg-report-groups")
        report_show = gr.Radio(REPORT_SHOWS, value="all", label="Show", elem_id="lg-report-show")
        report = gr.Dataframe(headers=["file", "class", "status", "reason"], interactive=False, wrap=True,
                              max_height=420)
    outputs = [summary, report, split_table, chart, gallery, groups, report_show]

    act = DataActions(ctx, data_path)
    example_btn.click(act.use_example, [ctx.session, val_fraction], [ctx.session, *outputs], api_name="use_example")
    folder.upload(act.from_folder, [ctx.session, folder, relpaths, val_fraction], [ctx.session, *outputs],
                  api_name="load_folder")
    archive.upload(act.from_archive, [ctx.session, archive, val_fraction], [ctx.session, *outputs],
                   api_name="load_archive")
    path_btn.click(act.from_path, [ctx.session, path_box, val_fraction], [ctx.session, *outputs],
                   api_name="load_path")
    path_box.submit(act.from_path, [ctx.session, path_box, val_fraction], [ctx.session, *outputs], **PRIVATE)
    val_fraction.change(resplit, [ctx.session, val_fraction], [ctx.session, *outputs], trigger_mode="always_last",
                        **PRIVATE)
    # the tables and charts show once there is a dataset (a change listener keeps the API's outputs plain)
    summary.change(lambda session: (gr.update(visible=has_split(session.dataset)),)
                   + (gr.update(visible=session.dataset is not None),) * 2,
                   ctx.session, [split_table, chart, gallery], show_progress="hidden", **PRIVATE)
    report_show.input(filter_report, [ctx.session, report_show], report, show_progress="hidden", **PRIVATE)
    ctx.shared["show_dataset"] = (show_dataset, outputs)
    if data_path:
        ctx.shared.setdefault("on_load", []).append(
            lambda demo: demo.load(act.from_path, [ctx.session, path_box, val_fraction], [ctx.session, *outputs],
                                   **PRIVATE))
    from ..health_panel import (
        build_health_panel,  # issue 17: all of the Health check lives there
    )
    build_health_panel(ctx, val_fraction)
