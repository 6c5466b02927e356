"""A real Gradio server with the Demo tab, for the demo-mode tests (the lead wires the tab into
ui/app.py; this launches it on its own so the tests do not depend on that):
``python tests/demo_server.py PORT WORKSPACE RUN_DIR``; the session's model is RUN_DIR."""
from __future__ import annotations

import sys
from pathlib import Path

import gradio as gr

from lora_gui.ui.context import AppContext
from lora_gui.ui.session import Session


def _session_on(run_dir):
    class _OnRun(Session):   # Gradio deep-copies the default per page; Session's copy is blank
        def __deepcopy__(self, memo):
            return _session_on(run_dir)
    session = _OnRun()
    session.set_model(run_dir)
    return session
from lora_gui.ui.tabs.demo_tab import build_demo_tab


def build(workspace: Path, run_dir: str) -> gr.Blocks:
    with gr.Blocks(title="demo test") as demo:
        session = gr.State(lambda: _session_on(run_dir))
        browser = gr.BrowserState({"job_id": None}, storage_key="lora_gui_job")
        with gr.Tabs() as tabs:
            ctx = AppContext(workspace, session, browser, tabs)
            with gr.Tab("Demo", id="demo"):
                build_demo_tab(ctx)
        for hook in ctx.shared.get("on_load", []):
            hook(demo)
    return demo


if __name__ == "__main__":
    port, workspace, run_dir = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    build(workspace, run_dir).queue().launch(server_name="127.0.0.1", server_port=port, show_error=False,
                                             allowed_paths=[str(workspace)], prevent_thread_lock=False)
