"""Finding a session's job again: a reloaded tab re-attaches to its own job, with the job's own settings.

Jobs are found by owner and tab (``jobs.registry``), never by an id the client sends.
After a reload the page's form would show its defaults; re-attaching fills the Train
form and the data summary from the running job, and selects the Train tab.
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from .. import data
from ..jobs.registry import jobs_of
from ..store.run_folder import FINAL_STATUSES
from .access import AccessPolicy
from .common import PRIVATE
from .fields import FIELD_NAMES, values_from_config


def check_weights_path(cfg, session, policy: AccessPolicy, host: str | None) -> None:
    """A 'local file' starting-weights path is read on the server: the session's own upload, or a path the caller may read."""
    if cfg.model.weights != "file" or not cfg.model.weights_file:
        return
    if session.weights_upload and Path(cfg.model.weights_file) == Path(session.weights_upload):
        return
    policy.check_path(cfg.model.weights_file, host)


def other_tab_job(session):
    """A live job of the same person started in another tab (offered to watch, never attached by itself)."""
    if not session.owner_id:
        return None
    for job in jobs_of(session.owner_id, live_only=True):
        if job.id != session.job_id:
            return job
    return None


def own_tab_job(session):
    """The newest job this very tab started (same owner and tab id), if the server still has it."""
    if not session.owner_id or not session.tab_id:
        return None
    found = jobs_of(session.owner_id, session.tab_id)
    return found[0] if found else None


def _job_dataset(job, workspace):
    ds = getattr(job, "dataset", None)
    if ds is not None:
        return ds
    try:
        return data.load_dataset(job.config.data.source, workspace, fixes_by=job.config.data.fixes_by)
    except Exception:
        return None


def wire_reattach(ctx, identified):
    """After the page has said who it is: follow this tab's own job, showing its settings and data.
    Returns the event, for steps that must come after it."""
    fields = [ctx.fields[n] for n in FIELD_NAMES]
    show, data_outputs = ctx.shared["show_dataset"]

    def reattach(session):
        job = own_tab_job(session)
        if job is None or session.job_id == job.id:
            return session, gr.skip(), *[gr.skip()] * (len(fields) + len(data_outputs))
        session.attach(job)
        session.base_config = job.config        # settings no field shows come from the job too
        live = job.status not in FINAL_STATUSES
        run = str(job.run.path)
        if (Path(run) / "best").is_dir():
            session.set_model(run)
        else:
            session.pending_run = run
        values = values_from_config(job.config)
        field_values = [values[n] for n in FIELD_NAMES]
        ds = _job_dataset(job, ctx.workspace)
        if ds is not None:
            _, *shown = show(session, ds, f"Dataset of run {job.id}", job.config.data.val_fraction)
        else:
            shown = [gr.skip()] * len(data_outputs)
        return session, gr.Tabs(selected="train") if live else gr.skip(), *field_values, *shown

    return identified.then(reattach, [ctx.session], [ctx.session, ctx.tabs, *fields, *data_outputs], **PRIVATE)
