"""Runs tab: every run in the workspace; pick one to test, export or resume, and
overlay the step-loss curves of several.
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

from ...jobs.registry import active_jobs, room_for_another, set_owner
from ...store.run_folder import LIVE_STATUSES, RunFolder, list_runs
from ..access import owner_id
from ..common import ENGINE_ERRORS, failure, md, this_tab
from ..fields import FIELD_NAMES, values_from_config
from ..run_names import dataset_name, run_label, run_title

COLUMNS = ["run", "dataset", "model", "rank", "targets", "best val acc", "training time", "status", "folder"]
RESUMABLE = ("stopped", "failed", "interrupted")
MAX_CURVE_POINTS = 4000


def _duration(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return ""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s // 60 % 60:02d} min"


def _live_paths() -> set[str]:
    return {str(Path(j.run.path).resolve()) for j in active_jobs()}


def runs_with_status(workspace) -> list[dict]:
    """list_runs, with 'interrupted' for a run whose file says live but that no job here is running."""
    live = _live_paths()
    rows = list_runs(workspace)
    for r in rows:
        if r["status"] in LIVE_STATUSES and str(Path(r["path"]).resolve()) not in live:
            # a CLI (or another app) may be training it; if nobody holds it, it was killed
            r["status"] = "running elsewhere" if RunFolder(r["path"]).in_use() else "interrupted"
    return rows


def _status(r: dict) -> str:
    """'damaged: config.json is not valid JSON ...' says what to do; 'damaged' alone does not."""
    return f"damaged: {r['damaged']}" if r["status"] == "damaged" and r.get("damaged") else r["status"]


def runs_table(rows: list[dict]) -> pd.DataFrame:
    data_rows = [[run_label(r, with_model=False), dataset_name(r.get("source")), r["model"], r["rank"] if r["rank"] is not None else "",
                  r["targets"] or "",
                  f"{r['best_val_acc']:.1%}" if isinstance(r["best_val_acc"], (int, float)) else "",
                  _duration(r["duration_s"]), _status(r), r["run"]] for r in rows]
    return pd.DataFrame(data_rows, columns=COLUMNS)


def has_rows(df) -> bool:
    """Gradio hands an empty table back as one blank row."""
    return df is not None and any(str(v).strip() for row in df.values.tolist() for v in row)


def _choices(rows: list[dict]) -> list[tuple[str, str]]:
    return [(f"{run_label(r)} · {dataset_name(r.get('source')) or '?'} · {r['status']}", r["path"]) for r in rows]


def pick_after_refresh(picked: str | None, paths: list[str], session) -> str | None:
    """The run the list selects: the person's pick stays across refreshes, except that a run newer
    than any listed before (one just started or finished) is selected."""
    newest = paths[0] if paths else None
    if picked not in paths or newest != session.newest_run_listed:
        picked = newest
    session.newest_run_listed = newest
    return picked


def loss_overlay_figure(paths: list[str]) -> go.Figure:
    """One step-loss line per run (thinned to at most MAX_CURVE_POINTS points each)."""
    fig = go.Figure()
    for path in paths or []:
        rows = [r for r in RunFolder(path).read_metrics() if r["kind"] == "step" and r["loss"] is not None]
        stride = max(1, len(rows) // MAX_CURVE_POINTS)
        rows = rows[::stride]
        fig.add_scatter(x=[r["step"] for r in rows], y=[r["loss"] for r in rows], mode="lines",
                        name=Path(path).name, line=dict(width=1.6))
    title = "Step loss" if paths else "Step loss — choose runs above to compare"
    fig.update_layout(title=title, xaxis_title="step", yaxis_title="loss", height=360, template="plotly_white",
                      margin=dict(l=50, r=20, t=40, b=80), legend=dict(orientation="h", y=-0.25))
    return fig


def _picked(path: str | None, workspace: Path, visible=lambda p: True) -> RunFolder:
    if not path:
        raise gr.Error("Pick a run in the list first")
    run = RunFolder(path)
    if not run.exists() or Path(path).resolve().parent != workspace.resolve() or not visible(str(run.path)):
        raise gr.Error(f"{Path(path).name} is not one of your runs in this workspace (deleted?); press Refresh")
    return run


class RunsActions:
    """The Runs tab's event handlers over plain values (the picked run's path, the session). In
    multi-user mode a person lists, tests, exports and resumes only their own runs."""

    def __init__(self, ctx):
        self.workspace, self.policy = Path(ctx.workspace), ctx.policy

    def _sees(self, session, request):
        who = owner_id(session, request)
        return lambda path: self.policy.sees_run(path, who)

    def visible_rows(self, session, request) -> list[dict]:
        sees = self._sees(session, request)
        return [r for r in runs_with_status(self.workspace) if sees(r["path"])]

    def refresh(self, picked, chosen, session, request: gr.Request):
        rows = self.visible_rows(session, request)
        paths = [r["path"] for r in rows]
        picked = pick_after_refresh(picked, paths, session)
        chosen = [c for c in (chosen or []) if c in paths]
        choices = _choices(rows)
        return (runs_table(rows), gr.Dropdown(choices=choices, value=picked),
                gr.Dropdown(choices=choices, value=chosen))

    def pick_from_table(self, session, evt: gr.SelectData, request: gr.Request):
        row = evt.row_value or []
        match = [r["path"] for r in self.visible_rows(session, request) if row and r["run"] == row[-1]]  # folder
        return match[0] if match else gr.skip()

    def _use(self, path, session, request, what: str):
        run = _picked(path, self.workspace, self._sees(session, request))
        session.set_model(str(run.path))
        return session, f"{what} **{md(run_title(run.path))}**."

    def use_for_testing(self, path, session, request: gr.Request):
        return self._use(path, session, request, "Testing")

    def use_for_export(self, path, session, request: gr.Request):
        return self._use(path, session, request, "Exporting")

    def curves_of(self, paths, session, request: gr.Request):
        seen = self._sees(session, request)   # only runs of this workspace the caller may see
        ok = [p for p in (paths or []) if isinstance(p, str) and RunFolder(p).exists()
              and Path(p).resolve().parent == self.workspace.resolve() and seen(p)]
        return loss_overlay_figure(ok)

    def resume(self, path, session, request: gr.Request):
        run = _picked(path, self.workspace, self._sees(session, request))
        if str(run.path.resolve()) in _live_paths():
            raise gr.Error(f"{run.path.name} is already training; follow it in the Train tab")
        rows = runs_with_status(self.workspace)
        status = next((r["status"] for r in rows if r["path"] == str(run.path)), "unknown")
        if status not in RESUMABLE:
            raise gr.Error(f"{run.path.name} is {status}: only stopped, failed or interrupted runs can be resumed")
        if not run.checkpoint_file.is_file():
            raise gr.Error(f"{run.path.name} has no checkpoint to resume from (it stopped before saving one); "
                           "start a new training in the Train tab")
        previous = session.job()
        if previous is not None and previous.status in LIVE_STATUSES:
            gr.Info("Your other training keeps running in the background; the resumed run waits for the device.",
                    title="Queued")
        from ...jobs.training_job import (
            TrainingJob,  # the training stack loads on first use (issue #15.3)
        )
        full = room_for_another(owner_id(session, request))
        if full:
            raise gr.Error(f"Not resumed: {full}.")
        try:
            job = TrainingJob.resume_run(str(run.path), interactive=True).start()
        except ENGINE_ERRORS as exc:
            raise failure(exc) from None
        except Exception as exc:
            raise failure(exc, "resuming") from None
        session.owner_id = owner_id(session, request)
        set_owner(job, session.owner_id, session.tab_id)
        session.started(job)
        session.resumed_job = job.id
        return session, gr.Tabs(selected="train"), f"Resumed **{md(run_title(run.path))}**."


def resumed_settings(session, names: list[str]):
    """The Train and Model tabs' fields after a resume: the resumed run's own settings (they showed
    whatever the form held before, and Start would have used those)."""
    job = session.job() if session.resumed_job else None
    if job is None or job.id != session.resumed_job:
        return session, *[gr.skip()] * len(names)
    session.resumed_job = ""
    session.base_config = job.config        # settings no field shows come from the run too
    values = values_from_config(job.config)
    return session, *[values[n] for n in names]


def build_runs_tab(ctx) -> None:
    tab = this_tab()
    workspace = Path(ctx.workspace)
    gr.Markdown(f"Runs in `{workspace}`, newest first. Pick one to test, export or resume.",
                elem_classes=["lg-hint"])
    empty_note = gr.Markdown("**No runs yet.** Train one in **3 · Train**; it appears here with its accuracy.",
                             elem_id="lg-runs-empty")
    table = gr.Dataframe(headers=COLUMNS, interactive=False, wrap=True, label="Runs", max_height=420,
                         elem_id="lg-runs-table", visible=False)
    with gr.Row():
        pick = gr.Dropdown([], label="Run", scale=3, elem_id="lg-runs-pick")
        refresh_btn = gr.Button("Refresh", scale=1, size="sm")
    with gr.Row():
        test_btn = gr.Button("Use for testing", variant="primary")
        export_btn = gr.Button("Export")
        resume_btn = gr.Button("Resume training")
    status_md = gr.Markdown()
    gr.Markdown("### Compare loss curves")
    compare = gr.Dropdown([], multiselect=True, label="Runs to overlay", elem_id="lg-runs-compare")
    curves = gr.Plot(label="Step loss", elem_id="lg-runs-curves", visible=False)   # shown once runs are chosen

    act = RunsActions(ctx)
    session = ctx.session
    refresh_args = dict(fn=act.refresh, inputs=[pick, compare, session], outputs=[table, pick, compare],
                        show_progress="hidden")
    refresh_btn.click(api_name="list_runs", **refresh_args)
    if tab is not None:
        tab.select(api_visibility="private", **refresh_args)
    ctx.shared.setdefault("on_load", []).append(lambda demo: demo.load(api_visibility="private", **refresh_args))
    table.select(act.pick_from_table, session, pick, api_visibility="private", show_progress="hidden")
    compare.change(act.curves_of, [compare, session], curves, api_name="loss_curves", show_progress="hidden")
    # no empty table or axes: a change listener (the API's outputs stay plain values)
    compare.change(lambda chosen: gr.update(visible=bool(chosen)), compare, curves, api_visibility="private",
                   show_progress="hidden")
    table.change(lambda df: (gr.update(visible=has_rows(df)), gr.update(visible=not has_rows(df))), table,
                 [table, empty_note], api_visibility="private", show_progress="hidden")

    for btn, target in ((test_btn, "test"), (export_btn, "export")):
        use = act.use_for_testing if target == "test" else act.use_for_export
        event = btn.click(use, [pick, session], [session, status_md], api_name=f"use_run_for_{target}")
        for sync in (ctx.shared.get("test_sync"), ctx.shared.get("export_sync")):
            if sync is not None:   # both tabs name the new model and drop what the old one made...
                event = event.then(**sync)
        # ...before the tab is shown: it never shows the old model's results under the new name
        event.then(lambda t=target: gr.Tabs(selected=t), None, ctx.tabs, api_visibility="private",
                   show_progress="hidden")
    names = [n for n in FIELD_NAMES if n in ctx.fields]
    resumed = resume_btn.click(act.resume, [pick, session], [session, ctx.tabs, status_md], api_name="resume_run").then(
        lambda s: resumed_settings(s, names), [session], [session, *[ctx.fields[n] for n in names]],
        api_visibility="private", show_progress="hidden")
    if "test_follow" in ctx.shared:   # a Test tab opened earlier follows the resumed run (test_tab.py)
        resumed.then(**ctx.shared["test_follow"])
