"""The Data tab's "Class by class" panel: Teachable-Machine style, name a class, then drop its
images or take webcam snapshots. The pictures are kept per session in the workspace
(``data.ClassBuilder``); "Use these classes" makes them the session's dataset."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from ..common import PRIVATE, md
from ..context import AppContext
from ..image_input import ImageInput
from .dataset_view import show_dataset


def builder_state(session, ws: Path, selected: str | None = None):
    """(session, the class list with ``selected`` picked if it exists, the counts line)."""
    found = session.class_builder(ws).classes()
    names = list(found)
    text = ", ".join(f"**{md(k)}**: {v} image(s)" for k, v in found.items()) or "No classes yet."
    pick = selected if selected in names else (names[0] if names else None)
    return session, gr.Dropdown(choices=names, value=pick), text


class ClassBuilderActions:
    """The panel's event handlers over plain values; engine errors (DataError) become toasts
    through the app's event guard (common.friendly)."""

    def __init__(self, ws: Path):
        self.ws = ws

    def add(self, session, name):
        session.class_builder(self.ws).add_class(name)
        return (*builder_state(session, self.ws, name.strip()), "")

    def add_files(self, session, cls, paths):
        if not cls:
            raise gr.Error("Add a class first, then its images.")
        result = session.class_builder(self.ws).add_images(cls, [str(p) for p in (paths or [])])
        session, pick, text = builder_state(session, self.ws, cls)
        return session, pick, f"{text}\n\nTo **{md(cls)}**: {md(result.summary())}.", None

    def add_snapshot(self, session, cls, image):
        if not cls:
            raise gr.Error("Add a class first, then take snapshots for it.")
        if image is None:
            raise gr.Error("Take a snapshot with the webcam (or drop a picture) first.")
        session.class_builder(self.ws).add_image_array(cls, image)
        return builder_state(session, self.ws, cls)

    def rename(self, session, cls, new):
        if not cls:
            raise gr.Error("Pick the class to rename.")
        session.class_builder(self.ws).rename_class(cls, new)
        return (*builder_state(session, self.ws, new.strip()), "")

    def delete(self, session, cls):
        if not cls:
            raise gr.Error("Pick the class to delete.")
        session.class_builder(self.ws).delete_class(cls)
        return builder_state(session, self.ws)

    def use(self, session, vf):
        builder = session.class_builder(self.ws)
        if not builder.classes():
            raise gr.Error("Add at least two classes with a few images each first.")
        return show_dataset(session, builder.dataset(), "Classes made here", vf)


def build_class_builder(ctx: AppContext) -> None:
    gr.Markdown("Make classes one at a time: name one, then add its pictures from files or the webcam.",
                elem_classes="lg-hint")
    with gr.Row():
        new_name = gr.Textbox(label="New class name", placeholder="e.g. mug", scale=3)
        add_btn = gr.Button("Add class", scale=1)
    with gr.Row():
        current = gr.Dropdown(label="Class", choices=[], scale=3, allow_custom_value=False)
        counts = gr.Markdown("No classes yet.")
    with gr.Row():
        files = gr.File(file_count="multiple", label="Add images to this class",   # add_images says what it left out
                        elem_id="lg-cb-files")
        cam = ImageInput(sources=["webcam", "upload", "clipboard"], type="numpy", label="Snapshot")
    snap_btn = gr.Button("Add snapshot to this class")
    with gr.Row():
        rename_to = gr.Textbox(label="Rename selected class to", scale=3)
        rename_btn = gr.Button("Rename", scale=1)
        delete_btn = gr.Button("Delete selected class", variant="stop", scale=1)
    use_btn = gr.Button("Use these classes as the dataset", variant="primary")

    act, session = ClassBuilderActions(ctx.workspace), ctx.session
    add_btn.click(act.add, [session, new_name], [session, current, counts, new_name], api_name="add_class")
    new_name.submit(act.add, [session, new_name], [session, current, counts, new_name], **PRIVATE)
    files.upload(act.add_files, [session, current, files], [session, current, counts, files],
                 api_name="add_class_images")
    snap_btn.click(act.add_snapshot, [session, current, cam], [session, current, counts], api_name="add_snapshot")
    rename_btn.click(act.rename, [session, current, rename_to], [session, current, counts, rename_to],
                     api_name="rename_class")
    delete_btn.click(act.delete, [session, current], [session, current, counts], api_name="delete_class")

    def wire_use(demo):   # the Data tab's outputs exist once the whole tab is built
        _, outputs = ctx.shared["show_dataset"]
        use_btn.click(act.use, [session, ctx.fields["val_fraction"]], [session, *outputs], api_name="use_classes")
    ctx.shared.setdefault("on_load", []).append(wire_use)
