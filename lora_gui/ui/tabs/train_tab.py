"""Train tab: settings, Start / Pause / Resume / Stop, live progress and charts.

The job runs in the engine's background thread; a ``gr.Timer`` polls its
snapshot about once a second, so every session stays responsive. The job is
recorded with its owner and browser tab (``jobs.registry``): a reloaded tab
re-attaches to its own job, and another tab of the same person is only offered
to watch it. A client never names a job: it acts on the one its session holds.
With more than one GPU, a checkbox runs the job under torchrun instead (see
``torchrun_choice``); the polling below follows either kind of job.
"""
from __future__ import annotations

import html
import warnings

import gradio as gr

from ...backbones.build import check_model_available
from ...errors import ConfigError, ModelError
from ...jobs.registry import set_owner
from ...store.run_folder import FINAL_STATUSES
from ...jobs.training_job import TrainingJob
from .. import charts, torchrun_choice
from .. import attach
from ..access import owner_id
from ..common import PRIVATE, caller_host
from ..context import AppContext
from ..fields import FIELD_NAMES, config_from_values

SIZES = [("model default", 0), ("96 px (fastest)", 96), ("128 px", 128), ("160 px", 160), ("192 px", 192),
         ("224 px", 224), ("256 px", 256), ("288 px", 288), ("384 px", 384)]


def _eta(seconds) -> str:
    if seconds is None:
        return "estimating…"
    s = int(seconds)
    return f"{s // 60}:{s % 60:02d}" if s < 3600 else f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def progress_html(snap) -> str:
    if snap is None:
        return ("<div id='lg-progress'><b>Not started.</b> Press <b>Start training</b>; "
                "the charts below fill in live.</div>")
    pct = int(100 * snap.progress)
    if snap.status == "queued" and snap.queue_position:
        text = f"Waiting: {snap.queue_position} job(s) ahead of this one on the device"
    elif snap.status in ("running", "paused", "stopping") and snap.total_steps:
        text = (f"Epoch {max(1, snap.epoch)}/{snap.epochs} · step {snap.step}/{snap.total_steps} · "
                f"ETA {_eta(snap.eta_s)}")
    else:
        text = ""
    return (f"<div id='lg-progress' data-status='{snap.status}'><b>{snap.status.capitalize()}</b> — "
            f"{html.escape(snap.message)}<br>{text}<div class='lg-bar'>"
            f"<div class='lg-fill' style='width:{pct}%'></div></div></div>")


def buttons(status: str | None, can_pause: bool = True):
    active = status in ("queued", "running", "paused", "stopping")
    return (gr.Button(interactive=not active), gr.Button(interactive=status == "running" and can_pause),
            gr.Button(interactive=status == "paused"), gr.Button(interactive=status in ("queued", "running", "paused")))


def build_train_tab(ctx: AppContext) -> None:
    with gr.Row():
        epochs = gr.Slider(1, 50, value=3, step=1, label="Epochs", info="passes over the training images",
                           elem_id="lg-epochs")
        batch_size = gr.Slider(1, 128, value=16, step=1, label="Batch size", info="smaller uses less memory")
        lr = gr.Number(value=1e-3, label="Learning rate", info="1e-3 suits LoRA; lower it if loss jumps")
    with gr.Row():
        augmentation = gr.Radio([("none", "none"), ("flip", "flip"), ("light", "light"), ("strong", "strong")],
                                value="flip", label="Augmentation",
                                info="flip: mirror images (fastest: the frozen part is computed once); "
                                     "light: random crops too; strong: RandAugment")
        image_size = gr.Dropdown(SIZES, value=0, label="Resolution", info="smaller trains faster")
        seed = gr.Number(value=0, precision=0, label="Seed", info="same seed + data = same result")
    ctx.fields.update(epochs=epochs, batch_size=batch_size, lr=lr, augmentation=augmentation,
                      image_size=image_size, seed=seed)
    use_all_gpus = torchrun_choice.checkbox()
    with gr.Row():
        start = gr.Button("Start training", variant="primary", elem_id="lg-start")
        pause = gr.Button("Pause", interactive=False, elem_id="lg-pause")
        resume = gr.Button("Resume", interactive=False, elem_id="lg-resume")
        stop = gr.Button("Stop", variant="stop", interactive=False, elem_id="lg-stop")
    with gr.Row(visible=False, elem_id="lg-other-tab") as other_tab:
        gr.Markdown("A training started in another tab of this browser is running.")
        watch_btn = gr.Button("Watch it", size="sm", scale=0, min_width=120, elem_id="lg-watch")
    progress = gr.HTML(progress_html(None))
    with gr.Row():
        loss_plot = gr.Plot(label="Loss", elem_id="lg-loss-plot")
        acc_plot = gr.Plot(label="Accuracy", elem_id="lg-acc-plot")
    with gr.Row():
        lr_plot = gr.Plot(label="Learning rate")
        log = gr.Textbox(label="Log", lines=10, max_lines=10, autoscroll=True, elem_id="lg-log")
    timer = gr.Timer(1.0)

    def start_job(request: gr.Request, session, *values):
        *values, use_all_gpus = values
        if session.dataset is None:
            raise gr.Error("Choose a dataset first: tab 1 · Data (one click: 'Use the example dataset').")
        if session.dataset.report.errors:
            raise gr.Error("The dataset can't be used yet: " + " ".join(session.dataset.report.errors))
        running = session.job()
        if running is not None and not session.watching and not running.snapshot(last_steps=0).done:
            raise gr.Error("A training is already running in this page: stop it first, or wait for it to end.")
        try:
            cfg = config_from_values(dict(zip(FIELD_NAMES, values)), source=session.dataset.root,
                                     base=session.base_config)
            attach.check_weights_path(cfg, session, ctx.policy, caller_host(request))
            check_model_available(cfg.model)
        except (ConfigError, ModelError) as exc:
            raise gr.Error(str(exc)) from None
        except PermissionError as exc:
            raise gr.Error(str(exc)) from None
        if cfg.model.weights == "random":
            gr.Warning("Random starting weights: expect poor accuracy from a few hundred images.")
        if use_all_gpus:
            job = torchrun_choice.start(cfg, ctx.workspace)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                job = TrainingJob(cfg, workspace=str(ctx.workspace), dataset=session.dataset,
                                  interactive=True).start()
        session.owner_id = owner_id(session, request)   # an API client: its own session from now on
        set_owner(job, session.owner_id, session.tab_id)
        session.started(job)
        return session, *buttons("queued", torchrun_choice.can_pause(job)), gr.Row(visible=False)

    def control(action):
        def handler(session):
            job = session.job()
            if job is not None:
                torchrun_choice.control(job, action)
            return buttons(job.status if job else None, job is None or torchrun_choice.can_pause(job))
        return handler

    def poll(session):
        job = session.job()
        following = job is not None and job.status not in FINAL_STATUSES
        offer = gr.Row(visible=not following and attach.other_tab_job(session) is not None)
        if job is None:
            return session, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), *[gr.skip()] * 4, offer
        _, count = job.events_since(0)
        snap = job.snapshot()
        if count == session.event_index and snap.done:
            return session, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), *[gr.skip()] * 4, offer
        changed = count != session.event_index
        session.event_index = count
        figs = ((charts.loss_figure(snap.step_rows, snap.epoch_rows), charts.accuracy_figure(snap.epoch_rows),
                 charts.lr_figure(snap.step_rows)) if changed else (gr.skip(),) * 3)
        return (session, progress_html(snap), *figs, "\n".join(snap.log),
                *buttons(snap.status, torchrun_choice.can_pause(job)), offer)

    def watch(session):
        other = attach.other_tab_job(session)
        if other is None:
            raise gr.Error("That training has ended; its run is in the Runs tab.")
        session.attach(other, watching=True)
        return session, gr.Row(visible=False)

    def wire(demo):
        inputs = [ctx.fields[n] for n in FIELD_NAMES]  # every tab has added its fields by now
        start.click(start_job, [ctx.session, *inputs, use_all_gpus],
                    [ctx.session, start, pause, resume, stop, other_tab], api_name="start_training")
    ctx.shared.setdefault("on_load", []).append(wire)
    ctx.shared.setdefault("after_identify", []).append(lambda identified: attach.wire_reattach(ctx, identified))
    watch_btn.click(watch, ctx.session, [ctx.session, other_tab], **PRIVATE)
    for btn, action in ((pause, "pause"), (resume, "unpause"), (stop, "stop")):
        btn.click(control(action), ctx.session, [start, pause, resume, stop], api_name=f"{action}_training")
    timer.tick(poll, [ctx.session],
               [ctx.session, progress, loss_plot, acc_plot, lr_plot, log, start, pause, resume, stop, other_tab],
               show_progress="hidden", api_name="training_status")
