"""Demo tab, for people who do not code: a live webcam (or a photo) in, the model's answer out,
"Where does it look?", an honest "not sure", "That's wrong, it is …" with a short retrain, and
a demo app to share.

The model is the Test tab's (``session.current_run()``, cached by ``get_test_model``). Frames
are numpy arrays kept in memory only (``last`` state): nothing is written to disk except a
fix, which goes to ``<workspace>/fixes/<run>/<class>/`` (``data.corrections``). Gradio replaces a
stream's pending frame by the newest one, so a slow model skips frames instead of lagging.
"""
from __future__ import annotations

import re
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from ...data.corrections import add_fix, count_fixes
from ...jobs.registry import get_job, room_for_another, set_owner
from ...jobs.retrain_job import RETRAIN_EPOCHS, retrain_with_fixes
from .. import common
from ..access import owner_id
from ..common import PRIVATE, failure, hand_out, this_tab
from ..image_input import ImageInput, forget_refused
from ..run_names import run_title
from .test_tab import describe_source, get_test_model

STREAM_EVERY = 0.2     # seconds between webcam frames sent (5 per second)
STREAM_LIMIT = 300     # a stream ends after 5 minutes; pressing the webcam again restarts it
LIVE_CONCURRENCY = 8   # live streams served at once (each holds a slot while it runs)
# The engine (torch, timm) is imported inside the handlers, so laying the tab out does not load it:
# the page is served before the engine is ready (ui/warmup.py loads it in the background).
CURVE_HEADERS = ["say 'not sure' below", "answers kept", "accuracy of the kept answers"]


def _run_dir(session) -> Path:
    from ...inference.evaluate import find_run_dir
    run = find_run_dir(session.current_run())
    if run is None:
        raise gr.Error("Fixes and retraining need a run trained here: pick one in the Runs tab.")
    return run


def _answer(image, session):
    from ...inference.calibration import verdict
    from ...inference.predict import predict
    loaded = get_test_model(session)
    top = predict(loaded, [Image.fromarray(np.asarray(image, dtype=np.uint8))], topk=5)[0]
    unsure, sentence = verdict(loaded, top)
    return {c: p for c, p in top}, ("**" + sentence + "**") if not unsure else f"🤔 **{sentence}**"


# handlers ---------------------------------------------------------------------
def on_frame(frame, session):
    """One webcam frame: the top classes and the verdict; the frame stays in memory as ``last``."""
    if frame is None:
        return gr.skip(), gr.skip(), None
    try:
        label, sentence = _answer(frame, session)
    except gr.Error as exc:   # no model yet: say so in place, never a pill on every frame
        return None, str(exc.message), frame
    except Exception as exc:
        return None, failure(exc, "prediction").message, frame
    return label, sentence, frame


def on_photo(photo, session):
    if photo is None:
        return None, "", None
    try:
        label, sentence = _answer(photo, session)
    except Exception as exc:
        raise failure(exc, "prediction") from None
    return label, sentence, photo


def on_look(last, target, session):
    if last is None:
        raise gr.Error("Show the webcam something (or upload a photo) first.")
    from ...inference.explain import explain
    loaded = get_test_model(session)
    try:
        hm = explain(loaded, last, target or None)
    except Exception as exc:
        raise failure(exc, "the heatmap") from None
    return hm.overlay, f"Where it looks for **{hm.target}** ({hm.probability:.0%}): the warm colours."


def on_fix(last, true_class, session, workspace: Path):
    if last is None:
        raise gr.Error("Show the webcam something (or upload a photo) first.")
    if not true_class:
        raise gr.Error("Pick what it really is from the list first.")
    run = _run_dir(session)
    loaded = get_test_model(session)
    try:
        _, new = add_fix(workspace, run.name, loaded.classes, true_class, last)
    except Exception as exc:
        raise failure(exc, "saving the fix") from None
    counts = count_fixes(workspace, run.name, loaded.classes)
    done = ", ".join(f"{n} × {c}" for c, n in counts.items())
    head = "Added to" if new else "Already among"
    return (f"{head} the **{true_class}** examples. Fixes so far: {done}. Your own folder is not touched; "
            f"press **Retrain** to learn from them ({RETRAIN_EPOCHS} short epochs).")


def on_retrain(retrain_id, session, workspace: Path, request: gr.Request | None = None):
    run = _run_dir(session)
    earlier = get_job(retrain_id) if retrain_id else None
    if earlier is not None and not earlier.snapshot(last_steps=0).done:
        raise gr.Error("A retrain started here is still running: wait for it to finish (or stop it in "
                       "3 · Train), then press Retrain again.")
    full = room_for_another(owner_id(session, request))
    if full:
        raise gr.Error(f"Not started: {full}.")
    try:
        job = retrain_with_fixes(run, workspace)
    except Exception as exc:
        raise failure(exc, "starting the retrain") from None
    # the person's run like any other: listed in their Runs tab, testable and exportable by them only
    session.owner_id = owner_id(session, request)
    set_owner(job, session.owner_id, session.tab_id)
    return job.id, f"Retraining from **{common.md(run_title(run))}** with your fixes…", gr.Timer(active=True)


def on_retrain_poll(job_id, session):
    job = get_job(job_id) if job_id else None
    if job is None:
        return gr.skip(), gr.skip(), gr.Timer(active=False), gr.skip()
    snap = job.snapshot(last_steps=0)
    if snap.status not in ("finished", "stopped", "failed"):
        step = f" — epoch {snap.epoch}/{snap.epochs}" if snap.epoch else ""
        return gr.skip(), f"Retraining ({snap.status}{step}): {snap.message}", gr.skip(), gr.skip()
    if snap.status in ("finished", "stopped") and (job.run.best_dir / "adapter.safetensors").is_file():
        from ...inference.calibration import calibrate
        try:
            before = get_test_model(session).calibration
        except gr.Error:
            before = None
        session.set_model(str(job.run.path), f"retrained with your corrections (from {job.continued_from})")
        note = ""
        if before is not None:   # keep an honest "not sure": refit T for the new model, same threshold
            try:
                calibrate(get_test_model(session), job.run.path, threshold=before.threshold)
                note = f" Calibrated again, still \"not sure\" below {before.threshold:.0%}."
            except Exception as exc:
                note = f" (Calibrate it again: {failure(exc, 'calibration').message})"
        return (None, f"Done: the demo now uses **{job.id}** ({snap.message}).{note}", gr.Timer(active=False),
                session)
    return None, f"The retrain {snap.status}: {snap.message}", gr.Timer(active=False), gr.skip()


def _curve_rows(cal) -> list[list]:
    return [[f"{r['threshold']:.0%}", f"{r['coverage']:.0%}",
             "—" if r["accuracy"] is None else f"{r['accuracy']:.1%}"] for r in (cal.curve if cal else [])]


def on_calibrate(session):
    from ...inference.calibration import calibrate
    loaded = get_test_model(session)
    run = _run_dir(session)
    try:
        cal = calibrate(loaded, run)
    except Exception as exc:
        raise failure(exc, "calibration") from None
    md = (f"Temperature **{cal.temperature:.2f}** fitted on the validation images of {common.md(run_title(run))}: their "
          f"log-loss went from {cal.nll_before:.3f} to {cal.nll_after:.3f} (lower is more honest). "
          "Pick below how sure it must be to answer.")
    return md, gr.Slider(value=cal.threshold), _curve_rows(cal), session


def on_threshold(value, session):
    from ...inference.calibration import set_threshold
    loaded = get_test_model(session)
    try:
        cal = set_threshold(loaded, session.current_run(), float(value))
    except Exception as exc:
        raise failure(exc, "saving the threshold") from None
    kept = next((r for r in cal.curve if abs(r["threshold"] - cal.threshold) < 1e-6), None)
    if kept is None:
        return f"Saved: below {cal.threshold:.0%} it says \"not sure\"."
    acc = "—" if kept["accuracy"] is None else f"{kept['accuracy']:.1%}"
    return (f"Saved: below {cal.threshold:.0%} it says \"not sure\". On the validation images it then answers "
            f"{kept['coverage']:.0%} of the time, and {acc} of those answers are right.")


def on_share(session, workspace: Path, progress=gr.Progress()):
    from ...store.demo_app_format import write_demo_app
    run = _run_dir(session)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", run.name)
    progress(0.2, desc="building the demo app")
    out = workspace / "exports" / session.id / f"{name}-demo-app"   # sessions never share one
    try:
        write_demo_app(run, out, zip_path=out.with_suffix(".zip"))
    except Exception as exc:
        raise failure(exc, "the demo app export") from None
    # a copy in Gradio's cache, as every download: the workspace itself is not served
    return hand_out(out.with_suffix(".zip")), (
        f"Built **{out.name}.zip**: unzip it and run `pip install -r requirements.txt && python app.py`, or "
        "upload its files to a new Hugging Face Space (Gradio SDK).")


def on_show(session):
    """Refresh the model line, the class lists and the saved calibration when the tab is opened."""
    try:
        loaded = get_test_model(session)
    except gr.Error:
        return describe_source(session), gr.skip(), gr.skip(), gr.skip(), gr.skip()
    classes = list(loaded.classes)
    cal = loaded.calibration
    return (describe_source(session), gr.Dropdown(choices=[("its answer", "")] + [(c, c) for c in classes]),
            gr.Dropdown(choices=classes, value=None), gr.Slider(value=cal.threshold if cal else 0.0),
            _curve_rows(cal))


# layout -------------------------------------------------------------------------
def build_demo_tab(ctx) -> None:
    tab = this_tab()
    session, workspace = ctx.session, ctx.workspace
    source_md = gr.Markdown(elem_classes=["lg-hint"], elem_id="lg-demo-source")
    last = gr.State(None)        # the last frame or photo (numpy, memory only)
    retrain_id = gr.State(None)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            with gr.Tab("Live webcam"):
                # not mirrored: the model must see the scene as it is (a mirrored 'left' is 'right')
                cam = ImageInput(sources=["webcam"], streaming=True, type="numpy", label="Live webcam",
                               elem_id="lg-demo-cam", height=320, webcam_options=gr.WebcamOptions(mirror=False))
            with gr.Tab("Photo"):
                photo = ImageInput(sources=["upload", "clipboard"], type="numpy", label="Photo",
                                 elem_id="lg-demo-photo", height=320)
        with gr.Column(scale=1):
            answer = gr.Markdown("Start the webcam or upload a photo.", elem_id="lg-demo-verdict")
            label = gr.Label(num_top_classes=5, label="Top classes", elem_id="lg-demo-label")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            look_for = gr.Dropdown(label="Where does it look for…", choices=[("its answer", "")], value="",
                                   elem_id="lg-demo-look-for")
            look_btn = gr.Button("Where does it look?", elem_id="lg-demo-look")
            look_md = gr.Markdown(elem_classes=["lg-hint"])
        heat = gr.Image(label="Where it looks", interactive=False, elem_id="lg-demo-heat", height=320, scale=1)
    gr.Markdown("### That's wrong?\nTell it what the last picture really is; it is saved in this workspace "
                "(never in your own folder) and used when you retrain.", elem_classes=["lg-hint"])
    with gr.Row():
        true_cls = gr.Dropdown(label="It is…", choices=[], elem_id="lg-demo-true")
        fix_btn = gr.Button("That's wrong, it is …", elem_id="lg-demo-fix")
        retrain_btn = gr.Button(f"Retrain with my fixes ({RETRAIN_EPOCHS} epochs)", elem_id="lg-demo-retrain")
    fix_md = gr.Markdown(elem_id="lg-demo-fix-md")
    timer = gr.Timer(2.0, active=False)
    gr.Markdown("### An honest \"not sure\"", elem_classes=["lg-hint"])
    calib_btn = gr.Button("Calibrate on the validation images", elem_id="lg-demo-calibrate")
    calib_md = gr.Markdown(elem_id="lg-demo-calib-md")
    threshold = gr.Slider(0.0, 0.95, step=0.05, value=0.0, label="Say \"not sure\" when less sure than",
                          elem_id="lg-demo-threshold")
    curve = gr.Dataframe(headers=CURVE_HEADERS, interactive=False, label="On the validation images",
                         elem_id="lg-demo-curve")
    gr.Markdown("### Share it", elem_classes=["lg-hint"])
    share_btn = gr.Button("Export a demo app (zip)", elem_id="lg-demo-share")
    share_md = gr.Markdown()
    share_file = gr.File(label="Demo app", interactive=False, elem_id="lg-demo-zip", height=90)

    cam.stream(on_frame, [cam, session], [label, answer, last], stream_every=STREAM_EVERY,
               time_limit=STREAM_LIMIT, concurrency_limit=LIVE_CONCURRENCY, concurrency_id="lg-demo-live",
               show_progress="hidden", api_name="demo_frame")
    photo.change(on_photo, [photo, session], [label, answer, last], api_name="demo_photo")
    forget_refused(photo)   # on_photo says why, once
    look_btn.click(on_look, [last, look_for, session], [heat, look_md], api_name="demo_look")
    fix_btn.click(lambda im, c, s: on_fix(im, c, s, workspace), [last, true_cls, session], [fix_md], **PRIVATE)
    def retrain(rid, s, request: gr.Request):   # annotated: Gradio passes the caller's request
        return on_retrain(rid, s, workspace, request)
    retrain_btn.click(retrain, [retrain_id, session], [retrain_id, fix_md, timer], **PRIVATE)
    timer.tick(on_retrain_poll, [retrain_id, session], [retrain_id, fix_md, timer, session],
               show_progress="hidden", **PRIVATE)
    calib_btn.click(on_calibrate, [session], [calib_md, threshold, curve, session], **PRIVATE)
    threshold.release(on_threshold, [threshold, session], [calib_md], **PRIVATE)
    share_btn.click(lambda s, progress=gr.Progress(): on_share(s, workspace, progress), [session],
                    [share_file, share_md], **PRIVATE)
    show = dict(fn=on_show, inputs=[session], outputs=[source_md, look_for, true_cls, threshold, curve],
                show_progress="hidden", **PRIVATE)
    if tab is not None:
        tab.select(**show)
    ctx.shared.setdefault("on_load", []).append(lambda demo: demo.load(**show))
