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


def hand_out(path) -> str:
    """A copy of ``path`` in Gradio's cache (a content-hash folder inside the workspace), to return from a handler.

    Only the cache is served: the workspace itself is not in allowed_paths, so the original
    (and every other run file) stays unreachable by URL; the link goes only to the caller.
    """
    from gradio import processing_utils, utils
    return processing_utils.save_file_to_cache(str(path), utils.get_upload_folder())


def thumbnails(items, side: int = 160) -> list:
    """(PIL thumbnail, caption) for (image path, caption) pairs; unreadable files are left out.

    Pictures are sent as images, not as file paths, so a dataset anywhere on disk can be shown
    without making its folder downloadable."""
    from ..data.images import load_rgb
    out = []
    for path, caption in items:
        try:
            im = load_rgb(path, side)
        except Exception:
            continue
        im.thumbnail((side, side))
        out.append((im, caption))
    return out


def caller_host(request) -> str | None:
    client = getattr(request, "client", None)
    return getattr(client, "host", None)
