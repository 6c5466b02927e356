"""The Train tab's "Use all N GPUs (torchrun, DDP)" choice, shown only where more than one process is offered.

The number comes from ``torchrun_job.offered_processes()``: one per GPU, or ``$LORA_GUI_PROCESSES``
(a way to try a multi-process run on a CPU machine). Checked, Start launches a ``TorchrunJob``
instead of a one-process ``TrainingJob``; the tab follows both the same way.
"""
from __future__ import annotations

import os

import gradio as gr

from ..jobs.torchrun_job import (
    PROCESSES_ENV,
    PauseUnsupported,
    TorchrunJob,
    offered_processes,
)

PAUSE_NOTE = ("Pause is not available for these runs (the processes run in lock-step); Stop saves the adapter "
              "so far and a checkpoint, and the Runs tab resumes it.")


def checkbox() -> gr.Checkbox:
    n = offered_processes()
    overridden = bool(os.environ.get(PROCESSES_ENV))
    label = f"Use {n} processes (torchrun, DDP; set by {PROCESSES_ENV})" if overridden \
        else f"Use all {n} GPUs (torchrun, DDP)"
    return gr.Checkbox(False, label=label, visible=n > 1, elem_id="lg-torchrun",
                       info=("" if overridden else "One process per GPU. ") + "The batch size is per process "
                            f"(global batch = {n} × batch size). {PAUSE_NOTE}")


def start(cfg, workspace) -> TorchrunJob:
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
    try:
        getattr(job, action)()
    except PauseUnsupported as exc:
        raise gr.Error(str(exc)) from None


def can_pause(job) -> bool:
    return getattr(job, "can_pause", True)
