"""The app imports Gradio without Gradio regenerating its type stubs (issue 15.3, ui/gradio_stubs.py),
and serves the same page as with them; and it is served with 8 events of a kind at once.

Each check runs in a fresh interpreter: the import hook acts only on the first ``import gradio``.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A component subclass defined the ordinary way, in a real file: Gradio's metaclass writes a stub
# beside such a file (widget.pyi) whenever its stub writer runs.
WIDGET = """
import gradio as gr

class Widget(gr.Textbox):
    EVENTS = ["change"]
"""

PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import lora_gui.ui
import gradio as gr
import gradio.component_meta as meta
import widget
print(json.dumps({"writer": meta.create_or_modify_pyi.__module__ + "." + meta.create_or_modify_pyi.__name__,
                  "events": [callable(getattr(gr.Button, "click", None)), callable(getattr(gr.Image, "upload", None)),
                             callable(getattr(widget.Widget, "change", None))]}))
"""

CONFIG = """
import json, sys
from lora_gui.ui.app import build_app
print(json.dumps(build_app(sys.argv[1]).config, sort_keys=True, default=str))
"""


def _run(code: str, *args: str, stubs: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), GRADIO_ANALYTICS_ENABLED="False", HF_HUB_DISABLE_TELEMETRY="1")
    env.pop("LORA_GUI_GRADIO_STUBS", None)
    if stubs:
        env["LORA_GUI_GRADIO_STUBS"] = "1"
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300)


def test_gradio_imported_by_the_app_writes_no_stub_and_keeps_every_event(tmp_path):
    (tmp_path / "widget.py").write_text(WIDGET)
    proc = _run(PROBE, str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["writer"] == "lora_gui.ui.gradio_stubs._no_stub"
    assert out["events"] == [True, True, True], "a component lost its event listeners"
    assert not (tmp_path / "widget.pyi").exists(), "Gradio's stub writer still ran"


def test_with_the_switch_gradio_writes_its_stubs_as_before(tmp_path):
    """LORA_GUI_GRADIO_STUBS=1 leaves Gradio alone; also shows the check above can see the writer run."""
    (tmp_path / "widget.py").write_text(WIDGET)
    proc = _run(PROBE, str(tmp_path), stubs=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["writer"] == "gradio.component_meta.create_or_modify_pyi"
    assert (tmp_path / "widget.pyi").exists()


def test_the_page_is_the_same_with_and_without_the_stubs(tmp_path):
    """The whole page description the browser gets (components, events, layout) is unchanged."""
    configs = []
    for stubs in (False, True):
        proc = _run(CONFIG, str(tmp_path / f"ws-{stubs}"), stubs=stubs)
        assert proc.returncode == 0, proc.stderr[-3000:]
        configs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert len(configs[0]["components"]) > 100 and len(configs[0]["dependencies"]) > 50
    texts = []
    for stubs, config in zip((False, True), configs):
        config.pop("app_id")   # a random number per app
        text = json.dumps(config, sort_keys=True).replace(f"ws-{stubs}", "ws")
        text = re.sub(r" at 0x[0-9a-f]+>", ">", text)   # a Python function's address in memory
        texts.append(re.sub(r'"secret": "[0-9a-f]+"', '"secret": ""', text))   # BrowserState's, random per app
    assert texts[0] == texts[1]


def test_the_served_app_handles_eight_events_of_a_kind_at_once(tmp_path, monkeypatch):
    """main() builds the app through served_app: Gradio's queue then runs up to 8 events of one kind
    at once (its default is 1), without a second build of its web app by demo.queue()."""
    # set, then removed: monkeypatch puts back the variable's absence afterwards (served_app sets it)
    monkeypatch.setenv("GRADIO_DEFAULT_CONCURRENCY_LIMIT", "")
    monkeypatch.delenv("GRADIO_DEFAULT_CONCURRENCY_LIMIT")
    from lora_gui.ui.access import AccessPolicy
    from lora_gui.ui.launch import CONCURRENCY, served_app
    demo = served_app(tmp_path / "ws", None, AccessPolicy())
    assert CONCURRENCY == 8 and demo._queue.default_concurrency_limit == 8
