"""The Gradio app: one tab per step, in the order a person goes.

Each tab module has a ``build_*_tab(ctx)`` that lays out its widgets and
wires its own events; ``AppContext`` carries what tabs share (the session
state, the config fields, the tab strip). Handlers turn widget values into
the engine's config objects and call the engine; no training code lives here.
"""
from __future__ import annotations

import os
import secrets
import uuid
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402

from ..data.bundled import logo_path
from .access import AccessPolicy
from .common import PRIVATE, guard_events
from .context import MAX_UPLOAD_MB, AppContext
from .session import SESSION_TTL_S, Session, remember
from .session import close as close_session
from .tabs import (
    data_tab,
    demo_tab,
    export_tab,
    model_tab,
    presets_tab,
    runs_tab,
    test_tab,
    train_tab,
)

LOGO = logo_path()   # assets/logo.svg of the checkout, or its copy inside an installed package
UI_DIR = Path(__file__).resolve().parent

CSS = """
.gradio-container {max-width: 1180px !important; margin: auto;}
#lg-header {display: flex; align-items: center; gap: 14px;}
#lg-header img {height: 44px; width: 44px;}
#lg-header h1 {margin: 0; font-size: 1.6em;}
#lg-header p {margin: 0; opacity: .75;}
.lg-hint {opacity: .8; font-size: .92em;}
#lg-progress .lg-bar {height: 12px; border-radius: 6px; background: var(--neutral-200); overflow: hidden;}
.lg-hidden {display: none !important;}
#lg-progress .lg-fill {height: 100%; background: var(--color-accent); transition: width .4s;}
/* table headers and cells break between words, never inside one ("ra nk", "finishe d") */
#lg-runs-table th *, #lg-runs-table td * {word-break: normal !important; overflow-wrap: normal !important;}
"""




def theme() -> gr.themes.Base:
    # System fonts only: the stock themes load Google Fonts, and nothing may reach
    # the internet unless the user asks.
    return gr.themes.Soft(primary_hue="indigo", secondary_hue="sky", neutral_hue="slate",
                          font=["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "sans-serif"],
                          font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"])


def head_html() -> str:
    """Scripts passed to launch(head=...): the folder-drop helper keeps sub-folder names."""
    script = (UI_DIR / "folder_paths.js").read_text()
    return f"<script>{script}</script>"


def header_html() -> str:
    img = f"<img src='/gradio_api/file={LOGO}' alt='lora_gui logo'>" if LOGO.is_file() else ""
    return (f"<div id='lg-header'>{img}<div><h1>lora_gui</h1>"
            "<p>Teach a pretrained vision model your own image categories with LoRA: "
            "pick data, train, test, download.</p></div></div>")


# This tab's id: kept in sessionStorage, so it survives a reload of the tab and differs between tabs.
TAB_JS = """() => { let id = sessionStorage.getItem('lora_gui_tab');
  if (!id) { id = (crypto.randomUUID ? crypto.randomUUID() : String(Math.random()).slice(2) + Date.now());
             sessionStorage.setItem('lora_gui_tab', id); }
  return id; }"""


def browser_secret(workspace: Path) -> str:
    """The key of the browser-kept owner id: stable per workspace, so a restart does not forget whose runs are whose."""
    path = workspace / ".browser_secret"
    try:
        return path.read_text().strip() or _new_secret(path)
    except OSError:
        return _new_secret(path)


def _new_secret(path: Path) -> str:
    secret = secrets.token_hex(16)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret)
    except OSError:
        pass   # a read-only workspace: owner ids then last until the next restart
    return secret


def identify(tab_id, stored, session: Session, request: gr.Request):
    """Page load: who this is (login name, else this browser's random id) and which tab."""
    owner = stored.get("owner") if isinstance(stored, dict) else None
    if not isinstance(owner, str) or len(owner) < 16:
        owner = uuid.uuid4().hex
    session.owner_id = f"user:{request.username}" if request.username else f"browser:{owner}"
    session.tab_id = str(tab_id or "")[:64]
    remember(request.session_hash, session)
    return session, {"owner": owner}


def forget_session(request: gr.Request):
    close_session(request.session_hash)


def build_app(workspace: str | os.PathLike = "runs", data_path: str | None = None,
              policy: AccessPolicy | None = None) -> gr.Blocks:
    workspace = Path(workspace).resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    # the cache (uploads, handed-out downloads) is swept hourly of files older than a day: handlers copy
    # what they keep into the workspace at once, and a download link older than a day has been used or lost
    with gr.Blocks(title="lora_gui — LoRA for vision models", delete_cache=(3600, 24 * 3600)) as demo:
        gr.HTML(header_html())
        # a Session, not a function making one: each page gets a fresh copy (Session.__deepcopy__ says why)
        session = gr.State(Session(), time_to_live=SESSION_TTL_S, delete_callback=lambda s: s.close())
        browser = gr.BrowserState({"owner": ""}, storage_key="lora_gui_owner", secret=browser_secret(workspace))
        tab_id = gr.Textbox(visible="hidden", elem_id="lg-tab-id")
        with gr.Tabs() as tabs:
            ctx = AppContext(workspace, session, browser, tabs, tab_id, policy or AccessPolicy())
            ctx.shared["data_path"] = data_path
            with gr.Tab("1 · Data", id="data") as ctx.shared["tab:data"]:
                data_tab.build_data_tab(ctx, data_path)
            with gr.Tab("2 · Model & LoRA", id="model") as ctx.shared["tab:model"]:
                model_tab.build_model_tab(ctx)
            with gr.Tab("3 · Train", id="train") as ctx.shared["tab:train"]:
                train_tab.build_train_tab(ctx)
            with gr.Tab("4 · Test", id="test") as ctx.shared["tab:test"]:
                test_tab.build_test_tab(ctx)
            with gr.Tab("5 · Export", id="export") as ctx.shared["tab:export"]:
                export_tab.build_export_tab(ctx)
            with gr.Tab("Demo", id="demo") as ctx.shared["tab:demo"]:
                demo_tab.build_demo_tab(ctx)
            with gr.Tab("Runs", id="runs") as ctx.shared["tab:runs"]:
                runs_tab.build_runs_tab(ctx)
            with gr.Tab("Presets", id="presets") as ctx.shared["tab:presets"]:
                presets_tab.build_presets_tab(ctx)
        # who this is first; then each tab's own page-load steps (the Train tab re-attaches its job)
        identified = demo.load(None, None, tab_id, js=TAB_JS, **PRIVATE).then(
            identify, [tab_id, browser, session], [session, browser], **PRIVATE)
        for hook in ctx.shared.get("after_identify", []):
            hook(identified)
        for hook in ctx.shared.get("on_load", []):
            hook(demo)
        demo.unload(forget_session)
        # last, when every event exists: no handler lets an exception reach the browser (ui/common.py says why)
        guard_events(demo)
    demo.lora_ctx = ctx
    return demo


def launch_kwargs(workspace: Path) -> dict:
    return {"theme": theme(), "css": CSS, "head": head_html(),
            # only the logo and icons: everything else the app shows goes through a handler (Gradio copies it
            # into its cache under a content-hash name and sends the link only to the caller)
            "allowed_paths": [str(LOGO)], "run_history": False,
            "max_file_size": f"{MAX_UPLOAD_MB}mb", "show_error": False}
