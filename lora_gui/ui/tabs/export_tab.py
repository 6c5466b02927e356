"""Export tab: download the session's run as native / PEFT / merged / ONNX / int8 ONNX / OpenVINO /
Core ML / TFLite or as a shareable demo app (a zip with a README and, for formats that run here, a
parity report), with the code that loads or runs it; load an adapter file back for testing.
"""
from __future__ import annotations

import json
import re
import shutil
import uuid
import zipfile
from pathlib import Path

import gradio as gr

from ...store.export_formats import (  # torch-free: the engine loads in the handlers (#15.3)
    FORMATS,
    missing_packages,
)
from ..common import ENGINE_ERRORS, failure, hand_out, this_tab
from .test_tab import _no_adapter_yet, cache_model, describe_source

_FORMAT_NOTES = [
    ("Native — adapter.safetensors + JSON, small; reloads in lora_gui (this app, the CLI, load_adapter)", "native"),
    ("PEFT — adapter_config.json + adapter_model.safetensors for peft.PeftModel.from_pretrained on a timm model", "peft"),
    ("Merged — a plain timm state dict with LoRA folded in: load_state_dict(strict=True), no extra library", "merged"),
    ("ONNX — the merged model for onnxruntime and other ONNX runtimes", "onnx"),
    ("ONNX int8 — quantised on your training images: ~4x smaller, faster on CPUs; refused if it disagrees", "onnx_int8"),
    ("OpenVINO — IR (model.xml + .bin) for Intel CPUs, GPUs and NPUs", "openvino"),
    ("Core ML — .mlpackage for iPhone/iPad/Mac apps (converted here; runs only on Apple systems)", "coreml"),
    ("TFLite / LiteRT — model.tflite for Android and edge devices", "tflite"),
    ("Demo app — a Gradio app to share (top classes, \"not sure\", heatmap): `pip install -r requirements.txt "
     "&& python app.py` anywhere, or upload to a Hugging Face Space; no lora_gui needed", "demo_app"),
]


def format_choices() -> list[tuple[str, str]]:
    """The formats, each saying what it is for; one whose package this install lacks says how to add it."""
    return [(label if (need := missing_packages(value)) is None else f"{label} — not installed: {need}", value)
            for label, value in _FORMAT_NOTES]


FORMAT_CHOICES = format_choices()
assert [v for _, v in FORMAT_CHOICES] == list(FORMATS)
NO_RUN = "Nothing to export yet: train a model first (Train tab) or pick a run in the Runs tab"
_CODE = re.compile(r"```python\n(.*?)```", re.S)
_ANY_CODE = re.compile(r"```[a-z]*\n(.*?)```", re.S)   # the demo app's README shows shell commands


def _export_name(source: str) -> str:
    from ...inference.evaluate import find_run_dir
    p = Path(source)
    run = find_run_dir(p)
    name = run.name if run is not None else (p.parent.name if p.suffix else p.name)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "adapter"


def parity_summary(zip_path: Path) -> str:
    """The parity report inside an export zip, as Markdown ('' for formats that do not run here)."""
    from ...store.parity import PARITY_FILE, parity_markdown
    with zipfile.ZipFile(zip_path) as zf:
        if PARITY_FILE not in zf.namelist():
            return ""
        return parity_markdown(json.loads(zf.read(PARITY_FILE)))


def readme_snippet(zip_path: Path) -> str:
    """The Python block of the README inside an export zip."""
    with zipfile.ZipFile(zip_path) as zf:
        text = zf.read("README.md").decode("utf-8", "replace")
    m = _CODE.search(text) or _ANY_CODE.search(text)
    return m.group(1).rstrip() if m else text


def on_export(fmt: str, session, workspace: Path, progress=gr.Progress()):
    from ...store.exports import export_zip, locate
    source = session.current_model()
    if not source:
        raise gr.Error(NO_RUN)
    if _no_adapter_yet(source):
        raise gr.Error(_no_adapter_yet(source))
    session.stale("export")   # what is built now is of the model under test now
    if fmt not in FORMATS:
        raise gr.Error(f"pick an export format: {', '.join(FORMATS)}")
    try:
        layout, _ = locate(source)
    except ENGINE_ERRORS as exc:
        raise gr.Error(f"{exc}. Wait until the run has saved an adapter, or pick another run in the Runs tab") from None
    if layout != "native":
        raise gr.Error(f"{Path(source).name} is already a {layout} export, not a lora_gui adapter; "
                       "export the run it came from instead (Runs tab)")
    progress(0.1, desc=f"exporting {fmt}")
    zip_path = workspace / "exports" / session.id / f"{_export_name(source)}-{fmt}.zip"   # sessions never share one
    try:
        export_zip(source, fmt, zip_path)
        snippet, parity = readme_snippet(zip_path), parity_summary(zip_path)
    except Exception as exc:
        raise failure(exc, f"the {fmt} export") from None
    size = zip_path.stat().st_size / 2**20
    status = f"Built **{zip_path.name}** ({size:.1f} MB) from {describe_source(session).removeprefix('Model under test: ')}"
    status += f"\n\n{parity}" if parity else ""
    return hand_out(zip_path), snippet, status, session


def _upload_paths(files) -> list[Path]:
    if not files:
        return []
    files = files if isinstance(files, list) else [files]
    return [Path(getattr(f, "name", f)) for f in files]


def on_upload(files, session, workspace: Path):
    from ...inference.predict import load_adapter
    from ...store.exports import locate
    paths = _upload_paths(files)
    if not paths:
        return gr.update(), session, gr.update()
    weights = [p for p in paths if p.suffix.lower() == ".safetensors"]
    jsons = [p for p in paths if p.suffix.lower() == ".json"]
    if len(weights) != 1 or len(weights) + len(jsons) != len(paths):
        raise gr.Error("Upload one adapter .safetensors file (a PEFT export: adapter_model.safetensors together "
                       "with its adapter_config.json)")
    dest = workspace / "uploaded_adapters" / f"{session.id}-{uuid.uuid4().hex[:6]}"
    dest.mkdir(parents=True, exist_ok=True)
    session.uploads.append(str(dest))
    for p in paths:
        shutil.copyfile(p, dest / p.name)
    file = dest / weights[0].name
    source = dest if (dest / "adapter_config.json").is_file() else file
    try:
        layout, _ = locate(source)
        if layout == "peft" and source == file:
            raise gr.Error(f"{file.name} is the weights half of a PEFT export: upload it together with its "
                           "adapter_config.json")
        loaded = load_adapter(source)
    except gr.Error:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    except Exception as exc:
        shutil.rmtree(dest, ignore_errors=True)
        err = failure(exc, "loading the adapter")
        raise gr.Error(f"{file.name} cannot be used: {err.message}") from None
    m = loaded.meta
    session.set_model(str(source), f"uploaded adapter **{file.name}** ({loaded.layout}) — `{m.model.name}`, "
                                   f"{len(m.classes)} classes, LoRA rank {m.lora.rank}")
    cache_model(session, str(source), loaded)
    for old in dest.parent.glob(f"{session.id}-*"):   # this session's earlier uploads are no longer used
        if old != dest:
            shutil.rmtree(old, ignore_errors=True)
    status = (f"Loaded **{file.name}** ({loaded.layout}): `{m.model.name}`, {len(m.classes)} classes "
              f"({', '.join(m.classes[:8])}{', …' if len(m.classes) > 8 else ''}), LoRA rank {m.lora.rank}. "
              "The Test tab now uses it.")
    return status, session, describe_source(session)


def on_forget_upload(session):
    job = session.job()
    run = str(job.run.path) if job is not None and not session.watching else None
    if run and (Path(run) / "best").is_dir():
        session.set_model(run)
    else:
        session.set_model(None)
        session.pending_run = run
    line = describe_source(session)
    return f"Back to this session's own run. {line}", session, line


def sync_export(sess):
    """The model line; a build of another model is dropped (never offered under this one's name)."""
    line = describe_source(sess)
    if sess.stale("export"):
        return line, None, "", "", sess
    return line, gr.skip(), gr.skip(), gr.skip(), sess


class ExportActions:
    """Build a download of the model under test, or load an adapter file for testing, in the workspace."""

    def __init__(self, workspace: Path):
        self.workspace = workspace

    def export(self, fmt_value, sess, progress=gr.Progress()):
        return on_export(fmt_value, sess, self.workspace, progress)

    def load(self, files, sess):
        return on_upload(files, sess, self.workspace)


def build_export_tab(ctx) -> None:
    tab = this_tab()
    workspace = Path(ctx.workspace)
    source_md = gr.Markdown(NO_RUN + ".", elem_classes=["lg-hint"])
    fmt = gr.Radio(FORMAT_CHOICES, value="native", label="Format", elem_id="lg-export-format")
    build_btn = gr.Button("Build download", variant="primary", elem_id="lg-export-build")
    export_md = gr.Markdown(elem_id="lg-export-status")
    with gr.Row(equal_height=False):
        download = gr.File(label="Download", interactive=False, scale=1, elem_id="lg-export-file")
        code = gr.Code(language="python", label="Load it in Python", interactive=False, scale=2, elem_id="lg-export-code")

    gr.Markdown("### Load an adapter file for testing\nA native `adapter.safetensors`, a merged "
                "`model.safetensors`, or a PEFT export (`adapter_model.safetensors` with its "
                "`adapter_config.json`). It is checked before use; the Test tab then classifies with it.",
                elem_classes=["lg-hint"])
    # no file_types: Gradio's own check turns the zone into a red "Error" pill (on_upload says what is wrong)
    upload = gr.File(file_count="multiple", type="filepath", label="Adapter file (.safetensors, with its .json for PEFT)",
                     elem_id="lg-adapter-upload")
    upload_md = gr.Markdown(elem_id="lg-adapter-status")
    forget_btn = gr.Button("Use this session's own run again", size="sm")

    session = ctx.session

    act = ExportActions(workspace)
    refresh = dict(fn=sync_export, inputs=[session], outputs=[source_md, download, code, export_md, session],
                   show_progress="hidden", api_visibility="private")
    build_btn.click(act.export, [fmt, session], [download, code, export_md, session], api_name="export")
    fmt.change(lambda: (None, "", ""), None, [download, code, export_md], api_visibility="private", show_progress="hidden")
    upload.upload(act.load, [upload, session], [upload_md, session, source_md],
                  api_name="load_adapter").then(**refresh)
    forget_btn.click(on_forget_upload, [session], [upload_md, session, source_md],
                     api_visibility="private").then(**refresh)

    if tab is not None:
        tab.select(**refresh)
    ctx.shared["export_sync"] = refresh
    ctx.shared["export_source_md"] = source_md
    ctx.shared.setdefault("on_load", []).append(lambda demo: demo.load(**refresh))
