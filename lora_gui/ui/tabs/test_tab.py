"""Test tab: classify an uploaded, pasted or webcam image with the session's model
under test, and evaluate it on its run's validation split.

The model under test is one explicit thing in the session (``Session.current_model()``:
a run folder or an adapter path, with where it came from). Models are loaded into one
cache all sessions share (``inference.adapter_cache``, a few models at most), reloaded
when the adapter file changes. Every output made from a model is cleared when the
model under test changes, so a page never shows one model's results under another's name.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr
import pandas as pd

from ...data.images import load_rgb
from ...errors import DamagedRun
from ...store.run_folder import FINAL_STATUSES, LIVE_STATUSES, RunFolder
from ..charts import confusion_figure
from ..common import ENGINE_ERRORS, failure, md, this_tab
from ..image_input import ImageInput, forget_refused
from ..run_names import dataset_name, run_label, run_title

if TYPE_CHECKING:   # the engine (torch, timm) loads in the handlers, not when the page is laid out (#15.3)
    from ...inference.predict import LoadedAdapter

NO_MODEL = ("Train a model first (3 · Train), pick a finished run in the Runs tab (Use for testing), "
            "or load an adapter file in 5 · Export")
GALLERY_MAX = 48
HEATMAP_MAX = 24   # a heatmap costs a forward and a backward pass: the most confident mistakes get one
THUMB = 192


def cache_model(session, source: str, loaded: LoadedAdapter) -> None:
    """Keep an adapter already loaded (the upload check) in the shared cache."""
    from ...inference.adapter_cache import ADAPTERS
    ADAPTERS.put(source, loaded)


def _no_adapter_yet(source: str) -> str | None:
    run = RunFolder(source)
    if run.exists() and not (run.path / "best").is_dir():
        status = run.read_status().get("status", "")
        if status in LIVE_STATUSES:
            return (f"Run {run.path.name} has no trained adapter yet: the first one is saved when set-up ends "
                    "(a linear probe, where the run can make one) or at the end of the first epoch. Wait for it, "
                    "or pick a finished run in the Runs tab.")
        return (f"Run {run.path.name} ({status or 'unknown status'}) has no trained adapter yet: it ended before "
                "its first epoch finished. Pick another run in the Runs tab, or resume this one.")
    return None


def _own_run_note(session) -> str | None:
    """Why this session's own run is not tested (no trained adapter yet), if that is the reason."""
    job = session.job()
    run = session.pending_run or (str(job.run.path) if job is not None else None)
    if not run:
        return None
    folder = RunFolder(run)
    # its config.json is written once the model is built and its images cached: until then the run
    # folder holds only the job's status
    if not folder.exists() and folder.read_status().get("status") in ("queued", "running"):
        return (f"Run {folder.path.name} is setting up: its first model (a linear probe, where the run can "
                "make one) is saved within seconds, and this tab switches to it.")
    return _no_adapter_yet(run)


def get_test_model(session) -> LoadedAdapter:
    """The shared cache's model for the session's model under test; gr.Error with what to do otherwise."""
    from ...inference.adapter_cache import ADAPTERS, adapter_key
    source = session.current_model()
    if not source:
        raise gr.Error(_own_run_note(session) or NO_MODEL)
    missing = _no_adapter_yet(source)
    if missing:
        raise gr.Error(missing)
    try:
        adapter_key(source)
    except ENGINE_ERRORS as exc:
        raise gr.Error(str(exc)) from None
    except OSError as exc:
        raise gr.Error(f"cannot read the adapter at {source} ({exc}); pick another run in the Runs tab") from None
    try:
        return ADAPTERS.get(source)
    except Exception as exc:
        raise failure(exc, "loading the adapter") from None


def _run_line(run_dir: Path) -> str:
    run = RunFolder(run_dir)
    s, status = run.summary(), run.read_status()
    acc, epoch = status.get("best_val_acc"), status.get("best_epoch")
    acc_text = f"validation accuracy {acc:.1%}" if isinstance(acc, (int, float)) else ""
    if epoch == 0:   # issue 15: the linear probe saved before LoRA trains (training/probe.py)
        active = status.get("status") in LIVE_STATUSES
        score = f" ({acc_text})" if acc_text else " (its validation score follows)" if _score_follows(run, status) else ""
        best = ("the first model: the linear probe, head only, before LoRA" + score
                + (" — LoRA is still training; testing switches to its adapter when an epoch beats this"
                   if active else ""))
    elif epoch:
        best = f"best adapter (epoch {epoch}" + (f", {acc_text}" if acc_text else "") + ")"
    else:
        best = "best adapter so far"
    on = dataset_name(s.get("source"))
    return (f"Model under test: **{md(run_label(s))}**" + (f" on {md(on)}" if on else "") + f", {best} — "
            f"{s['classes']} classes, LoRA rank {s['rank']}, run status *{s['status']}* (folder `{s['run']}`).")


def _score_follows(run: RunFolder, status: dict | None = None) -> bool:
    """Is ``run``'s model its first one, saved before its validation score (which follows within seconds)?
    ``status``: its status.json when the caller has read it already."""
    status = run.read_status() if status is None else status
    if status.get("best_epoch") != 0 or status.get("best_val_acc") is not None or status.get("status") not in LIVE_STATUSES:
        return False
    try:
        return bool(run.split().val)
    except DamagedRun:   # its line says so already
        return False


def describe_source(session) -> str:
    """One markdown line: the model under test and where it came from (reads no tensors)."""
    source = session.current_model()
    pending = session.pending_run
    note = (f" Run **{Path(pending).name}** is training: testing switches to it once it has saved its first "
            "adapter (a linear probe after set-up, or the end of epoch 1)." if pending and pending != source else "")
    if not source:
        return f"**No model yet.** {_own_run_note(session) or NO_MODEL + '.'}"
    if session.model_note:
        return f"Model under test: {session.model_note}.{note}"
    if _no_adapter_yet(source):
        return f"**No trained adapter yet.** {_no_adapter_yet(source)}"
    from ...inference.evaluate import find_run_dir
    run_dir = find_run_dir(source) or (Path(source) if RunFolder(source).exists() else None)
    if run_dir is not None:
        return _run_line(run_dir) + note
    return f"Model under test: adapter **{Path(source).name}**.{note}"


def follow_pending(session):
    """``sync_outputs``, and the tab's follower timer on while a run started here has no adapter yet
    or its first model's validation score is still to come (it ticks until the line is complete)."""
    outputs = sync_outputs(session)
    source = session.current_model()
    waiting = session.pending_run is not None or bool(source and _score_follows(RunFolder(source)))
    return (*outputs, gr.Timer(active=waiting))


def sync_outputs(session):
    """The model line, and every output cleared if it came from another model than the one under test now."""
    line = describe_source(session)
    if session.stale("test"):
        return (line, None, "", None, None, gr.Gallery(value=[], visible=False), session)
    return (line, *[gr.skip()] * 5, session)


# handlers ---------------------------------------------------------------------
def on_predict(image, session):
    from ...inference.predict import predict
    if image is None:   # cleared
        return None, session, describe_source(session)
    loaded = get_test_model(session)
    if session.stale("test"):   # a new model: the evaluation shown came from the old one
        session.shown["clear-eval"] = True
    started = time.perf_counter()
    try:
        top = predict(loaded, [image], topk=5)[0]
    except Exception as exc:
        raise failure(exc, "prediction") from None
    ms = (time.perf_counter() - started) * 1000
    return {c: p for c, p in top}, session, describe_source(session) + f" Predicted in {ms:.0f} ms."


NO_PICTURE = ("No picture to classify yet: drop one on 'Image to classify' (or paste one, or take one with "
              "the webcam), then Predict.")


def on_predict_click(image, session):
    """Predict pressed: as ``on_predict``, but an empty input gets a sentence instead of nothing
    (also after a refused upload, which empties the input)."""
    if image is None:
        raise gr.Error(NO_PICTURE)
    return on_predict(image, session)


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


def mistakes_gallery(loaded: LoadedAdapter, mistakes: list, progress=None) -> list[tuple]:
    """(image, caption) per mistake (path, true, predicted, probability): the first HEATMAP_MAX with the
    heatmap of where the model looked for the class it wrongly chose (what confused it), the rest
    (and any image the heatmap cannot be made for) as plain thumbnails."""
    from ...inference.explain import heatmaps_for
    gallery = []
    for n, (path, true, pred, prob) in enumerate(mistakes):
        caption = f"{true} → {pred} {prob:.0%}"
        heat = heatmaps_for([path], loaded, targets=[pred], max_side=THUMB * 2) if n < HEATMAP_MAX else []
        if heat:
            gallery.append((heat[0][0], f"{caption} · heat: where it saw {pred}"))
        elif (thumb := _thumb(path)) is not None:
            gallery.append((thumb, caption))
        if progress:
            progress(n + 1, len(mistakes))
    return gallery


def _precision_note(run_dir, accuracy: float) -> str:
    """Why training's score of the same images can differ: it ran them in bf16/fp16 (faster, a little
    less exact), Evaluate in full precision, and a borderline image may land on the other side."""
    folder = RunFolder(run_dir)
    status = folder.read_status()
    trained = status.get("best_val_acc")
    try:
        precision = folder.record().speed.get("mixed_precision")
    except DamagedRun:
        return ""
    if (status.get("status") not in FINAL_STATUSES or not isinstance(trained, (int, float))
            or precision not in ("bf16", "fp16") or abs(trained - accuracy) < 1e-6):
        return ""
    return (f"\n\nTraining scored these images {trained:.1%} with {precision} arithmetic (faster, slightly less "
            "exact); this evaluation runs in full precision, so a borderline image can land the other way.")


def on_evaluate(session, progress=gr.Progress()):
    from ...inference.evaluate import evaluate_run, find_run_dir
    loaded = get_test_model(session)
    if session.stale("test"):   # a new model: the prediction shown came from the old one
        session.shown["clear-label"] = True
    run = find_run_dir(session.current_model())
    if run is None:
        raise gr.Error("The model being tested is an uploaded adapter, which has no validation split. "
                       "Pick a run in the Runs tab to evaluate it.")
    progress(0, desc="evaluating")
    try:
        result = evaluate_run(loaded, run_dir=run,
                              progress=lambda done, total: progress(done / total, desc=f"{done}/{total} images"))
    except Exception as exc:
        raise failure(exc, "evaluation") from None
    summary = (f"**Accuracy {result.accuracy:.1%}** ({result.correct} of {result.total} validation images of "
               f"{md(run_title(run))}) · macro F1 {result.macro['f1']:.3f} · {len(result.misclassified)} misclassified")
    if result.skipped:
        summary += f" · {len(result.skipped)} image(s) could not be read and were left out (e.g. {result.skipped[0][1]})"
    summary += _precision_note(run, result.accuracy)
    gallery = mistakes_gallery(loaded, result.misclassified[:GALLERY_MAX],
                               lambda done, total: progress(done / total, desc=f"where it looked: {done}/{total}"))
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
            image = ImageInput(sources=["upload", "clipboard", "webcam"], type="pil", label="Image to classify", elem_id="lg-test-image",
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
        # fixed widths: a 95-character class name took the whole width and pushed the numbers out of view
        table = gr.Dataframe(headers=["class", "precision", "recall", "F1", "support"], label="Per class",
                             interactive=False, wrap=True, scale=1, visible=False,
                             column_widths=["30%", "20%", "17%", "15%", "18%"])
        plot = gr.Plot(label="Confusion matrix", scale=1, elem_id="lg-confusion", visible=False)
    gallery = gr.Gallery(label="Misclassified validation images (true → predicted; the heat shows where the "
                               "model looked for the class it chose)", columns=5, height="auto",
                         object_fit="contain", allow_preview=True, elem_id="lg-misclassified", visible=False)

    session = ctx.session

    def clear_eval(sess):
        if sess.shown.pop("clear-eval", False):
            return "", None, None, gr.Gallery(value=[], visible=False), sess
        return *[gr.skip()] * 4, sess

    def clear_label(sess):
        return (None if sess.shown.pop("clear-label", False) else gr.skip()), sess

    hidden = dict(show_progress="hidden", api_visibility="private")
    predict_args = dict(fn=on_predict, inputs=[image, session], outputs=[label, session, source_md],
                        show_progress="minimal", trigger_mode="always_last")
    predict_btn.click(api_name="predict", **dict(predict_args, fn=on_predict_click)).then(
        clear_eval, session, [eval_md, table, plot, gallery, session], **hidden)
    image.change(api_visibility="private", **predict_args).then(
        clear_eval, session, [eval_md, table, plot, gallery, session], **hidden)
    forget_refused(image)   # the prediction above says why, once
    eval_btn.click(on_evaluate, [session], [eval_md, table, plot, gallery, session, source_md],
                   api_name="evaluate").then(clear_label, session, [label, session], **hidden)
    # shown once there is an evaluation (a change listener keeps the API's outputs plain values)
    eval_md.change(lambda text: (gr.update(visible=bool(text)),) * 2, eval_md, [table, plot],
                   show_progress="hidden", api_visibility="private")

    refresh = dict(fn=sync_outputs, inputs=[session], outputs=[source_md, label, eval_md, table, plot, gallery, session],
                   **hidden)
    # a run started here is tested as soon as it saves its first model (seconds after Start): a tab
    # opened before that follows it on its own, then its timer stops
    follower = gr.Timer(1.0, active=False)
    follow = dict(refresh, fn=follow_pending, outputs=[*refresh["outputs"], follower])
    follower.tick(**follow)
    if tab is not None:
        tab.select(**follow)
    ctx.shared["test_source_md"] = source_md
    ctx.shared["test_source_line"] = describe_source
    ctx.shared["test_sync"] = refresh
    # for the handlers that start a run (Start, Resume): the tab follows it even when it was opened
    # before the run existed (Start waits for the engine's imports in the first seconds after launch)
    ctx.shared["test_follow"] = follow
    ctx.shared.setdefault("on_load", []).append(lambda demo: demo.load(**refresh))
