"""The Train tab's "Use all N GPUs (torchrun, DDP)" choice, shown only where more than one process is offered.

The number comes from ``processes.offered_processes()``: one per GPU, or ``$LORA_GUI_PROCESSES``
(a way to try a multi-process run on a CPU machine). Checked, Start launches a ``TorchrunJob``
instead of a one-process ``TrainingJob``; the tab follows both the same way.
"""
from __future__ import annotations

import gradio as gr

from ..jobs.processes import PROCESSES_ENV, requested_processes

PAUSE_NOTE = ("Pause is not available for these runs (the processes run in lock-step); Stop saves the adapter "
              "so far and a checkpoint, and the Runs tab resumes it.")


def checkbox() -> gr.Checkbox:
    """The box as laid out: shown at once when $LORA_GUI_PROCESSES asks for processes; otherwise hidden until
    ``offer`` (a page-load event) has counted the GPUs, which needs torch, loaded after the page is served."""
    n = requested_processes()
    return gr.Checkbox(False, elem_id="lg-torchrun", **(_props(n) if n is not None else {"visible": False}))


def _props(n: int) -> dict:
    overridden = requested_processes() is not None
    label = f"Use {n} processes (torchrun, DDP; set by {PROCESSES_ENV})" if overridden \
        else f"Use all {n} GPUs (torchrun, DDP)"
    return {"label": label, "visible": n > 1,
            "info": ("" if overridden else "One process per GPU. ") + "The batch size is per process "
                    f"(global batch = {n} × batch size). {PAUSE_NOTE}"}


def offer():
    """Page load: the box for this machine's GPU count (skipped when the environment already decided)."""
    if requested_processes() is not None:
        return gr.skip()
    from ..jobs.processes import offered_processes
    n = offered_processes()
    return gr.Checkbox(**_props(n)) if n > 1 else gr.skip()


def start(cfg, workspace):
    from ..jobs.torchrun_job import TorchrunJob, offered_processes
    n = offered_processes()
    if n < 2:
        raise gr.Error(f"This machine has {n} GPU(s): a torchrun run needs at least 2 (or set {PROCESSES_ENV} "
                       "before starting the app). Untick the option to train in one process.")
    try:
        return TorchrunJob(cfg, workspace=str(workspace), processes=n).start()
    except (ValueError, OSError) as exc:
        raise gr.Error(f"Could not start the {n}-process run: {exc}") from None


def control(job, action: str) -> None:
    """Pause / Resume / Stop on either kind of job; a torchrun job refuses pause with its reason."""
    from ..jobs.torchrun_job import PauseUnsupported
    try:
        getattr(job, action)()
    except PauseUnsupported as exc:
        raise gr.Error(str(exc)) from None


def can_pause(job) -> bool:
    return getattr(job, "can_pause", True)
