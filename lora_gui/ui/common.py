"""Small helpers the tabs share: engine errors as messages, escaping, finding the current tab.

How errors reach people (issue #12.4). A Gradio handler that raises marks its event as failed:
the browser then puts a red "Error" pill over *every* output of the event, and the pill stays
after the toast is gone (the class builder's drop zone lost its label under one). So no error
may reach Gradio from an event the browser fired. ``guard_events(demo)`` wraps every event
handler once the app is built; on any exception the wrapper

* in the browser: shows the message as a toast (``gr.Warning``, HTML-escaped because toasts
  render HTML) and returns ``gr.skip()``, so every output keeps its last usable value;
* for gradio_client / MCP callers (the request carries ``x-gradio-user: api`` or ``mcp``, which
  gradio_client sets on every call): raises ``gr.Error(message)``, because a script has no toast
  to read: it must get an ``AppError`` with the same message, as tests/test_app_client.py checks
  for /start_training, /load_path and /predict.

We tell the two apart per request instead of registering every endpoint twice (a hidden API
twin per UI event): one wiring per event keeps the UI and the API from drifting apart, and
the handlers keep raising ``gr.Error`` (or engine errors) the plain way. Unexpected
exceptions are named ("evaluation failed unexpectedly: ValueError: ..."), never a traceback.
"""
from __future__ import annotations

import functools
import html
import inspect
import re

import gradio as gr
from gradio.context import Context, LocalContext

from .. import openmp_teams
from ..errors import BAD_INPUT, ExportError
from ..store.run_folder import RunBusy
from .image_input import UnusableUpload

ENGINE_ERRORS = BAD_INPUT + (ExportError, RunBusy)
# Internal UI events stay out of the public API (gradio_client, the 'Use via API' page).
PRIVATE = {"api_visibility": "private"}
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~])")


def this_tab() -> gr.Tab | None:
    """The gr.Tab a builder is running inside (to refresh on its select event), if any."""
    block = Context.block
    return block if isinstance(block, gr.Tab) else None


def failure(exc: BaseException, what: str = "") -> gr.Error:
    """An engine error as a gr.Error with its own message (unexpected ones named, never a traceback)."""
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, ENGINE_ERRORS):
        # a KeyError-style message wrapped in quotes, not one that merely starts with one
        message = unquoted(str(exc)) or type(exc).__name__
    else:
        message = f"{what or 'that'} failed unexpectedly: {type(exc).__name__}: {exc}"
    return gr.Error(message[:1000])


def unquoted(text: str) -> str:
    """``text`` without one pair of quotes around the whole of it (and only then)."""
    if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def md(text) -> str:
    """Any text (a class name, a file name, an engine message) as literal Markdown: Gradio's
    Markdown renders HTML, so '<folder>/<class>' would vanish as a tag, and '*' or '_' in a name
    would turn into emphasis."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=False))


def from_api_client() -> bool:
    """True when the running event was called by gradio_client (or MCP), not by the browser."""
    request = LocalContext.request.get(None)
    headers = getattr(request, "headers", None) or {}
    return headers.get("x-gradio-user") in ("api", "mcp")


def _refuse_unusable(args) -> None:
    """An input component that could not decode its upload passes the reason instead of a value
    (``image_input.ImageInput``): raise it here, so it becomes the handler's own message."""
    for value in args:
        if isinstance(value, UnusableUpload):
            raise value


def friendly(fn, what: str = ""):
    """``fn`` that never lets an exception reach Gradio from the browser (see the module docstring)."""
    if getattr(fn, "_lg_guarded", False) or inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        return fn
    what = what or getattr(fn, "__name__", "").strip("_<>") or "that"

    def handle(exc: BaseException):
        err = failure(exc, what)
        if from_api_client():
            raise err from None
        gr.Warning(html.escape(str(err.message)), title="Could not do that")
        return gr.skip()

    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def guarded_async(*args, **kwargs):
            try:
                _refuse_unusable(args)
                return await fn(*args, **kwargs)
            except Exception as exc:
                return handle(exc)
        guarded_async._lg_guarded = True
        return guarded_async

    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        try:
            _refuse_unusable(args)
            return fn(*args, **kwargs)
        except Exception as exc:
            return handle(exc)
        finally:
            # the web server's thread idles now: its torch thread team (a prediction's, an
            # export's) would otherwise slow a training for as long as the thread lives
            openmp_teams.release()
    guarded._lg_guarded = True
    return guarded


def guard_events(demo: gr.Blocks) -> None:
    """Wrap every Python event handler of ``demo`` with ``friendly`` (idempotent)."""
    for block_fn in demo.fns.values():
        if block_fn.fn is not None and not getattr(block_fn, "is_validator_function", False):
            block_fn.fn = friendly(block_fn.fn)


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
