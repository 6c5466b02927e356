"""The Data tab's Health check: run the audit, list each kind of finding, fix each in place.

A fix (relabel / remove from training / keep) is written to the workspace's record
(``data.fixes``); the user's files are never touched. The session's dataset is re-derived from
the record at once, so the Data tab's counts and report, and the next training, follow it.
"""
from __future__ import annotations

import os

import gradio as gr
from PIL import Image

from ..config import DataConfig
from ..data import DataError, load_rgb
from ..data.fixes import apply_fixes, read_fixes, relative_path, write_fix
from .context import AppContext
from .health_charts import embedding_map_figure, learning_curve_figure
from .tabs.dataset_view import show_dataset

TABLE_HEADERS = {
    "labels": ["#", "file", "given label", "suggested label", "confidence", "decision"],
    "pairs": ["#", "kind", "file", "near-identical to", "labels", "similarity", "decision"],
    "outliers": ["#", "file", "label", "why", "score", "decision"],
}
ACTION_WORDS = {"relabel": "relabelled to {label}", "exclude": "removed from training", "keep": "kept"}
PAIR_KINDS = ("leak", "label conflict", "duplicate", "exact duplicate")
THUMB = 220


def _short(path: str, parts: int = 2) -> str:
    return "/".join(path.split(os.sep)[-parts:])


def _decision(record: dict, ds, path: str) -> str:
    entry = record.get(relative_path(ds.unfixed or ds, path))
    return ACTION_WORDS[entry["action"]].format(label=entry.get("label")) if entry else "—"


def finding_tables(result, ds, workspace) -> tuple[list, list, list]:
    """(label rows, pair rows, outlier rows); column 0 is the finding's index in ``result.findings``."""
    record = read_fixes(workspace, ds.unfixed or ds)
    labels, pairs, outliers = [], [], []
    for i, f in enumerate(result.findings):
        decided = _decision(record, ds, f.paths[0])
        if f.kind == "label":
            labels.append([i, _short(f.paths[0]), f.labels[0], f.suggested, f"{f.score:.0%}", decided])
        elif f.kind in PAIR_KINDS:
            other = _short(f.paths[1]) if len(f.paths) > 1 else "—"
            pairs.append([i, f.kind, _short(f.paths[0]), other, " / ".join(f.labels), f"{f.score:.3f}", decided])
        else:
            outliers.append([i, _short(f.paths[0]), f.labels[0], f.note, f"{f.score:.2f}", decided])
    return labels, pairs, outliers


def curve_rows(result) -> list[list]:
    rows = []
    for c in result.curves:
        rows.append([c.name, c.n_train, f"{c.recall[-1]:.0%}",
                     "—" if c.recall_at_double is None else f"{c.recall_at_double:.0%}",
                     "—" if c.more_needed is None else f"~{c.more_needed}", c.method])
    return rows


def summary_text(result) -> str:
    n = {k: len(result.of_kind(k)) for k in ("label", "leak", "label conflict", "duplicate", "exact duplicate",
                                             "outlier")}
    lines = [f"**Checked {len(result.paths)} images** in {sum(result.seconds.values()):.0f} s: "
             f"{n['label']} suspected wrong label(s), {n['leak']} train/validation leak(s), "
             f"{n['label conflict']} near-identical pair(s) with different labels, "
             f"{n['duplicate'] + n['exact duplicate']} duplicate(s), {n['outlier']} outlier(s)."]
    if any(n.values()):
        lines.append("Click a row to see the image(s) and decide: **Relabel**, **Remove from training** or "
                     "**Keep**. Decisions are saved in the workspace; your files are never changed.")
    return "\n\n".join(lines)


def _thumb(path: str) -> Image.Image:
    im = load_rgb(path, max_side=THUMB * 2)
    im.thumbnail((THUMB, THUMB))
    return im


def pick_finding(result, session, evt: gr.SelectData):
    """A row clicked in one of the lists: its images, what is suspected, the file to fix and a label."""
    row = evt.row_value or []
    if result is None or not row:
        return None, [], "Select a row in a list above.", gr.Radio(choices=[]), gr.Dropdown(choices=[])
    i = int(row[0])
    f = result.findings[i]
    items = [(_thumb(p), f"{lbl} · {_short(p)}") for p, lbl in zip(f.paths, f.labels) if os.path.isfile(p)]
    text = f"**{f.kind}** — {f.note}"
    if f.kind == "label":
        text += f"  \nGiven **{f.labels[0]}**; the other images suggest **{f.suggested}** ({f.score:.0%})."
    classes = (session.dataset.unfixed or session.dataset).classes if session.dataset else result.classes
    choices = [(_short(p, 3), p) for p in f.paths if os.path.isfile(p)]
    return (i, items, text, gr.Radio(choices=choices, value=choices[0][1] if choices else None),
            gr.Dropdown(choices=classes, value=f.suggested or f.labels[0]))


class HealthActions:
    """The panel's handlers over plain values; the fixes are written to the workspace's record."""

    def __init__(self, ws):
        self.ws = ws

    def run_check(self, session, vf, progress=gr.Progress()):
        from ..health import run_audit  # embeddings need torch and timm: loaded on first use (issue #15.3)
        ds = session.dataset
        if ds is None:
            raise gr.Error("Load a dataset first (e.g. 'Use the example dataset'), then run the health check.")
        if ds.report.errors:
            raise gr.Error("Fix the dataset first: " + " ".join(ds.report.errors))
        try:
            result = run_audit(ds, self.ws, split=DataConfig(val_fraction=vf),
                               progress=lambda f, msg: progress(f, desc=msg))
        except (DataError, ValueError) as exc:
            raise gr.Error(f"The health check could not run: {exc}") from None
        return (result, None, summary_text(result), *finding_tables(result, ds, self.ws), curve_rows(result),
                learning_curve_figure(result.curves), embedding_map_figure(result))

    def _decide(self, action, session, result, index, path, label, vf):
        if result is None or index is None or not path:
            raise gr.Error("Select a finding in one of the lists first.")
        ds = session.dataset
        if ds is None:
            raise gr.Error("The dataset is no longer loaded; load it and run the health check again.")
        try:
            write_fix(self.ws, ds, path, action, label if action == "relabel" else None)
        except DataError as exc:
            raise gr.Error(str(exc)) from None
        fixed = apply_fixes(ds, self.ws)
        word = ACTION_WORDS[action].format(label=label)
        outs = show_dataset(session, fixed, session.dataset_label, vf)
        return (*outs, f"**{_short(path, 3)}**: {word}. Saved; training and the validation report follow it.",
                *finding_tables(result, fixed, self.ws))

    def relabel(self, session, result, index, path, label, vf):
        return self._decide("relabel", session, result, index, path, label, vf)

    def exclude(self, session, result, index, path, label, vf):
        return self._decide("exclude", session, result, index, path, label, vf)

    def keep(self, session, result, index, path, label, vf):
        return self._decide("keep", session, result, index, path, label, vf)


def build_health_panel(ctx: AppContext, val_fraction: gr.Slider | None = None) -> None:
    """The Health check accordion; call at the end of the Data tab."""
    ws = ctx.workspace
    val_fraction = val_fraction or ctx.fields["val_fraction"]
    audit = gr.State(None)
    selected = gr.State(None)   # index into audit.findings
    with gr.Accordion("Health check: wrong labels, duplicates, leaks, outliers", open=False, elem_id="lg-health"):
        gr.Markdown("Looks at every image through the backbone (once; cached in the workspace) and lists what "
                    "is likely wrong: images filed under the wrong class, the same photo twice (in training and "
                    "validation it inflates accuracy), blank or off-topic images, and classes that need more "
                    "images.", elem_classes="lg-hint")
        run_btn = gr.Button("Run health check", variant="primary", elem_id="lg-health-run")
        summary = gr.Markdown("", elem_id="lg-health-summary")
        with gr.Tabs():
            with gr.Tab("Wrong labels"):
                labels_df = gr.Dataframe(headers=TABLE_HEADERS["labels"], interactive=False, wrap=True,
                                         elem_id="lg-health-labels")
            with gr.Tab("Leaks & duplicates"):
                pairs_df = gr.Dataframe(headers=TABLE_HEADERS["pairs"], interactive=False, wrap=True,
                                        elem_id="lg-health-pairs")
            with gr.Tab("Outliers"):
                outliers_df = gr.Dataframe(headers=TABLE_HEADERS["outliers"], interactive=False, wrap=True,
                                           elem_id="lg-health-outliers")
            with gr.Tab("More images"):
                gr.Markdown("Linear heads on the features, trained on 20-100 % of each class and scored on the "
                            "validation images; the curve `recall(n) = a - b·n^-c` (else log-linear) is fitted "
                            "per class to estimate the gain from more images.", elem_classes="lg-hint")
                curve_df = gr.Dataframe(headers=["class", "training images", "recall now", "recall at 2x images",
                                                 "more images to near its best", "fit"], interactive=False)
                curve_plot = gr.Plot(label="Learning curves")
            with gr.Tab("Map"):
                map_plot = gr.Plot(label="Embedding map", elem_id="lg-health-map")
        with gr.Row():
            preview = gr.Gallery(label="Selected finding", columns=2, height=260, object_fit="contain",
                                 format="jpeg", scale=2)
            with gr.Column(scale=3):
                details = gr.Markdown("Select a row in a list above.", elem_id="lg-health-details")
                target = gr.Radio(label="File to fix", choices=[], elem_id="lg-health-target")
                new_label = gr.Dropdown(label="New label", choices=[], elem_id="lg-health-label")
                with gr.Row():
                    relabel_btn = gr.Button("Relabel", elem_id="lg-health-relabel")
                    exclude_btn = gr.Button("Remove from training", variant="stop", elem_id="lg-health-exclude")
                    keep_btn = gr.Button("Keep", elem_id="lg-health-keep")
    tables = [labels_df, pairs_df, outliers_df]

    act = HealthActions(ws)
    for df in tables:
        df.select(pick_finding, [audit, ctx.session], [selected, preview, details, target, new_label],
                  show_progress="hidden")
    _, data_outputs = ctx.shared["show_dataset"]

    inputs = [ctx.session, audit, selected, target, new_label, val_fraction]
    outputs = [ctx.session, *data_outputs, details, *tables]
    for btn, action in ((relabel_btn, "relabel"), (exclude_btn, "exclude"), (keep_btn, "keep")):
        btn.click(getattr(act, action), inputs, outputs, api_name=f"health_{action}", concurrency_id="health-fix")
    run_btn.click(act.run_check, [ctx.session, val_fraction],
                  [audit, selected, summary, *tables, curve_df, curve_plot, map_plot],
                  api_name="health_check", concurrency_limit=1, concurrency_id="health")
