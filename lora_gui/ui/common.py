"""Small helpers the tabs share: turning engine errors into gr.Error, finding the current tab."""
from __future__ import annotations

import gradio as gr
from gradio.context import Context

from ..errors import BAD_INPUT, ExportError
from ..store.run_folder import RunBusy

ENGINE_ERRORS = BAD_INPUT + (ExportError, RunBusy)
# Internal UI events stay out of the public API (gradio_client, the 'Use via API' page).
PRIVATE = {"api_visibility": "private"}


def this_tab() -> gr.Tab | None:
    """The gr.Tab a builder is running inside (to refresh on its select event), if any."""
    block = Context.block
    return block if isinstance(block, gr.Tab) else None


def failure(exc: BaseException, what: str = "") -> gr.Error:
    """An engine error as a gr.Error with its own message (unexpected ones named, never a traceback)."""
    if isinstance(exc, ENGINE_ERRORS):
        message = str(exc).strip("'\"") or type(exc).__name__
    else:
        message = f"{what or 'that'} failed unexpectedly: {type(exc).__name__}: {exc}"
    return gr.Error(message[:1000])
