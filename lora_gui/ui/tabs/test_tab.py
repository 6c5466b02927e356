"""Test tab: classify an uploaded, pasted or webcam image with the session's model,
and evaluate it on its run's validation split.

The model is ``session.current_run()`` (a run folder or an adapter path), loaded
once and kept in ``session.test_model``; it is reloaded when the source changes
or its adapter file does (a newer best/ adapter after more training).
"""
from __future__ import annotations

import time
from pathlib import Path

import gradio as gr
import pandas as pd

from ...data.images import load_rgb
from ...inference.evaluate import evaluate_run, find_run_dir
from ...inference.predict import LoadedAdapter, load_adapter, predict
from ...store.exports import locate
from ...store.run_folder import RunFolder
from ..charts import confusion_figure
from ..common import ENGINE_ERRORS, failure, this_tab

NO_MODEL = "Train a model first (Train tab) or load an adapter in the Export tab"
GALLERY_MAX = 48
THUMB = 192


def _model_key(source: str) -> tuple:
    layout, file = locate(source)
    return str(source), str(file), file.stat().st_mtime_ns


def cache_model(session, source: str, loaded: LoadedAdapter) -> None:
    session.test_model = loaded
    session.test_model_key = _model_key(source)   # (source, file, mtime): reload after more training


def _no_adapter_yet(source: str) -> str | None:
    run = RunFolder(source)
    if run.exists():
        status = run.read_status().get("status", "")
        if status in ("queued", "running", "paused", "stopping"):
            return (f"Run {run.path.name} has no saved adapter yet: the first one is written at the end of the "
                    "first epoch. Wait for it, or pick a finished run in the Runs tab.")
        return f"Run {run.path.name} ({status or 'unknown status'}) never saved an adapter; pick another run in the Runs tab."
    return None


def get_test_model(session) -> LoadedAdapter:
    """The cached model for session.current_run(), (re)loaded when needed; gr.Error otherwise."""
    source = session.current_run()
    if not source:
        raise gr.Error(NO_MODEL)
    try:
        key = _model_key(source)
    except ENGINE_ERRORS as exc:
        raise gr.Error(_no_adapter_yet(source) or str(exc)) from None
    except OSError as exc:
        raise gr.Error(f"cannot read the adapter at {source} ({exc}); pick another run in the Runs tab") from None
    if session.test_model is not None and session.test_model_key == key:
        return session.test_model
    try:
        loaded = load_adapter(source)
    except Exception as exc:
        raise failure(exc, "loading the adapter") from None
    session.test_model, session.test_model_key = loaded, key
    return loaded


def describe_source(session) -> str:
    """One markdown line: which model/run is being tested (reads no tensors)."""
    source = session.current_run()
    if not source:
        return f"**No model yet.** {NO_MODEL}."
    run_dir = find_run_dir(source) or (Path(source) if RunFolder(source).exists() else None)
    if run_dir is not None:
        s = RunFolder(run_dir).summary()
        acc = f", best validation accuracy {s['best_val_acc']:.1%}" if isinstance(s["best_val_acc"], (int, float)) else ""
        return (f"Model: run **{s['run']}** — `{s['model']}`, {s['classes']} classes, LoRA rank {s['rank']}, "
                f"status *{s['status']}*{acc}.")
    loaded = session.test_model
    if isinstance(loaded, LoadedAdapter):
        m = loaded.meta
        name = Path(source).name if Path(source).is_file() else "adapter_model.safetensors + adapter_config.json"
        return (f"Model: uploaded adapter **{name}** ({loaded.layout}) — `{m.model.name}`, "
                f"{len(m.classes)} classes, LoRA rank {m.lora.rank}.")
    return f"Model: adapter **{Path(source).name}**."


# handlers ---------------------------------------------------------------------
def on_predict(image, session):
    if image is None:   # cleared
        return None, session, describe_source(session)
    loaded = get_test_model(session)
    started = time.perf_counter()
    try:
        top = predict(loaded, [image], topk=5)[0]
    except Exception as exc:
        raise failure(exc, "prediction") from None
    ms = (time.perf_counter() - started) * 1000
    return {c: p for c, p in top}, session, describe_source(session) + f" Predicted in {ms:.0f} ms."


def _table(result) -> pd.DataFrame:
    rows = [[r["class"], round(r["precision"], 3), round(r["recall"], 3), round(r["f1"], 3), r["support"]]
            for r in result.per_class]
    m = result.macro
    rows.append(["(macro average)", round(m["precision"], 3), round(m["recall"], 3), round(m["f1"], 3), result.total])
    return pd.DataFrame(rows, columns=["class", "precision", "recall", "F1", "support"])


def _thumb(path: str):
    try:
        im = load_rgb(path, THUMB)
    except Exception:
        return None
    im.thumbnail((THUMB * 2, THUMB * 2))
    return im


def on_evaluate(session, progress=gr.Progress()):
    loaded = get_test_model(session)
    run = find_run_dir(session.current_run())
    if run is None:
        raise gr.Error("The model being tested is an uploaded adapter, which has no validation split. "
                       "Pick a run in the Runs tab to evaluate it.")
    progress(0, desc="evaluating")
    try:
        result = evaluate_run(loaded, run_dir=run,
                              progress=lambda done, total: progress(done / total, desc=f"{done}/{total} images"))
    except Exception as exc:
        raise failure(exc, "evaluation") from None
    summary = (f"**Accuracy {result.accuracy:.1%}** ({result.correct} of {result.total} validation images of run "
               f"{run.name}) · macro F1 {result.macro['f1']:.3f} · {len(result.misclassified)} misclassified")
    if result.skipped:
        summary += f" · {len(result.skipped)} image(s) could not be read and were left out (e.g. {result.skipped[0][1]})"
    gallery = []
    for path, true, pred, prob in result.misclassified[:GALLERY_MAX]:
        thumb = _thumb(path)
        if thumb is not None:
            gallery.append((thumb, f"{true} → {pred} {prob:.0%}"))
    if len(result.misclassified) > GALLERY_MAX:
        summary += f" (the {GALLERY_MAX} most confident mistakes are shown)"
    # no mistakes: no empty box (the summary already says 0 misclassified)
    return (summary, _table(result), confusion_figure(result), gr.Gallery(value=gallery, visible=bool(gallery)),
            session, describe_source(session))


# layout -------------------------------------------------------------------------
def build_test_tab(ctx) -> None:
    tab = this_tab()
    source_md = gr.Markdown(NO_MODEL + ".", elem_classes=["lg-hint"], elem_id="lg-test-source")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            image = gr.Image(sources=["upload", "clipboard", "webcam"], type="pil", label="Image to classify", elem_id="lg-test-image",
                             height=320)
            predict_btn = gr.Button("Predict", variant="primary", elem_id="lg-predict")
        with gr.Column(scale=1):
            label = gr.Label(num_top_classes=5, label="Top classes", elem_id="lg-test-label")
    gr.Markdown("### Evaluate on the validation split\nEvery validation image of the run, through the same "
                "preprocessing as training: accuracy, per-class precision / recall, the confusion matrix and "
                "the images the model gets wrong.", elem_classes=["lg-hint"])
    eval_btn = gr.Button("Evaluate on the validation split", elem_id="lg-evaluate")
    eval_md = gr.Markdown(elem_id="lg-eval-summary")
    with gr.Row(equal_height=False):
        # hidden until an evaluation fills them (no "1 2 3" headers, no empty axes)
        table = gr.Dataframe(headers=["class", "precision", "recall", "F1", "support"], label="Per class",
                             interactive=False, wrap=True, scale=1, visible=False)
        plot = gr.Plot(label="Confusion matrix", scale=1, elem_id="lg-confusion", visible=False)
    gallery = gr.Gallery(label="Misclassified validation images (true → predicted)", columns=5, height="auto",
                         object_fit="contain", allow_preview=True, elem_id="lg-misclassified", visible=False)

    session = ctx.session
    predict_args = dict(fn=on_predict, inputs=[image, session], outputs=[label, session, source_md],
                        show_progress="minimal", trigger_mode="always_last")
    predict_btn.click(api_name="predict", **predict_args)
    image.change(api_visibility="private", **predict_args)
    eval_btn.click(on_evaluate, [session], [eval_md, table, plot, gallery, session, source_md], api_name="evaluate")
    # shown once there is an evaluation (a change listener keeps the API's outputs plain values)
    eval_md.change(lambda text: (gr.update(visible=bool(text)),) * 2, eval_md, [table, plot],
                   show_progress="hidden", api_visibility="private")

    refresh = dict(fn=describe_source, inputs=[session], outputs=[source_md], show_progress="hidden", api_visibility="private")
    if tab is not None:
        tab.select(**refresh)
    ctx.shared["test_source_md"] = source_md
    ctx.shared["test_source_line"] = describe_source
    ctx.shared.setdefault("on_load", []).append(lambda demo: demo.load(**refresh))
