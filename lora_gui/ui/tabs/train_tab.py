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
import re
import time

import gradio as gr

from ...errors import ConfigError, ModelError
from ...jobs.registry import room_for_another, set_owner
from ...store.run_folder import FINAL_STATUSES, LIVE_STATUSES, RunFolder
from .. import attach, charts, torchrun_choice
from ..access import owner_id
from ..common import PRIVATE, caller_host
from ..context import AppContext
from ..fields import DEFAULTS, FIELD_NAMES, config_from_values, lenient, problems_text

SIZES = [("model default", 0), ("96 px (fastest)", 96), ("128 px", 128), ("160 px", 160), ("192 px", 192),
         ("224 px", 224), ("256 px", 256), ("288 px", 288), ("384 px", 384)]


def _eta(seconds) -> str:
    if seconds is None:
        return "estimating the time left…"
    s = int(seconds)
    left = f"{s // 60}:{s % 60:02d}" if s < 3600 else f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"about {left} left"


def _failed_next_step(message: str) -> str:
    text = message.lower()
    if re.search(r"start again|try again|use a smaller|lower the|pick another|install|add more", text):
        return ""   # the engine's message already says what to do; once is enough
    if "learning rate" in text or "diverg" in text:
        return "Lower the learning rate (e.g. divide it by 10) and press Start training again."
    if "memory" in text:
        return "Use a smaller batch size or a lower resolution and press Start training again."
    if "internet" in text or "hub" in text or "network" in text:
        return "Pick a backbone marked ✓ offline in 2 · Model & LoRA, or connect to the internet, and start again."
    return "Check the settings, then press Start training again; Show details has the full log."


def headline(snap) -> tuple[str, str]:
    """(what is happening, what to do next) in plain words; the engine's own wording stays in the details."""
    if snap.status == "queued":
        ahead = f": {snap.queue_position} training(s) ahead of this one" if snap.queue_position else ""
        return f"Waiting for the computer to be free{ahead}.", "It starts by itself; you can leave this page open."
    # the run's first model (a linear probe, seconds after Start) can be tried while LoRA trains
    first = ("A first model is ready: try it in 4 · Test while LoRA trains."
             if snap.status == "running" and _first_model(snap) is not None else "")
    if snap.status == "running" and not snap.step:
        return "Getting ready: reading the images and preparing the model…", first
    if snap.status == "running":
        return "Training.", " ".join(filter(None, [first, "Pause or Stop keep what it has learned so far."]))
    if snap.status == "paused":
        return "Paused.", "Press Resume to continue, or Stop to keep what it has learned so far."
    if snap.status == "stopping":
        return "Stopping after the current batch…", ""
    if snap.status == "finished":
        best = re.search(r"best validation accuracy ([\d.]+%)", snap.message)
        done = f"Finished: {best.group(1)} of the validation images recognised." if best else "Finished."
        return done, "Next: try it on your own pictures in 4 · Test, or download it in 5 · Export."
    if snap.status == "stopped" and "before it started" in snap.message:
        return ("Stopped before it started: nothing was trained or saved.",
                "Press Start training to begin again.")
    if snap.status == "stopped" and not snap.step and _first_model(snap) is None:
        return ("Stopped while getting ready: nothing was trained or saved yet.",
                "Press Start training to begin again.")
    if snap.status == "stopped":
        return ("Stopped. What it learned so far is saved.",
                "Test it in 4 · Test, or continue it later with Resume training in the Runs tab.")
    message = re.sub(r"^training failed: ", "", snap.message)
    return f"Training failed: {message}", _failed_next_step(message)


def progress_html(snap) -> str:
    if snap is None:
        return ("<div id='lg-progress'><b>Not started.</b> Press <b>Start training</b>; "
                "the charts below fill in live.</div>")
    pct = int(100 * snap.progress)
    if snap.status in ("running", "paused", "stopping") and snap.total_steps and snap.step:
        text = (f"Epoch {max(1, snap.epoch)} of {snap.epochs} · step {snap.step} of {snap.total_steps} · "
                f"{_eta(snap.eta_s)}")
    else:
        text = ""
    what, next_step = headline(snap)
    return (f"<div id='lg-progress' data-status='{snap.status}'><b>{html.escape(what)}</b>"
            + (f" {html.escape(next_step)}" if next_step else "") + f"<br>{text}<div class='lg-bar'>"
            f"<div class='lg-fill' style='width:{pct}%'></div></div></div>")


_LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d ")


def details_text(snap) -> str:
    """The engine's own status line and log, newest line first (no scrolling needed to see it).
    Traceback lines (no time stamp) stay in the run's train.log: the page never shows a traceback."""
    lines = [line for line in snap.log if _LOG_LINE.match(line) and not line[9:].startswith("Traceback")]
    left_out = len(snap.log) - len(lines)
    note = [f"({left_out} technical lines, e.g. a traceback, are in train.log in the run's folder)"] if left_out else []
    return "\n".join([f"[{snap.status}] {snap.message}", *reversed(lines), *note])


ACC_NOTE = ("**Accuracy** appears here after epoch 1: it is measured at the end of each epoch on the "
            "validation images, which the model never trains on.")


def buttons(status: str | None, can_pause: bool = True):
    active = status in LIVE_STATUSES
    return (gr.Button(interactive=not active), gr.Button(interactive=status == "running" and can_pause),
            gr.Button(interactive=status == "paused"), gr.Button(interactive=status in ("queued", "running", "paused")))


def _first_model(snap) -> dict | None:
    """The run's first model (the linear probe) as its status records it, once saved."""
    first = RunFolder(snap.run_dir).read_status().get("first_model") if snap.run_dir else None
    return first if isinstance(first, dict) else None


def first_model_acc(snap) -> float | None:
    """The validation accuracy of the run's first model (the linear probe), if it has one."""
    first = _first_model(snap)
    return first.get("val_acc") if first else None


def figures(snap) -> tuple:
    """Loss, accuracy, the note that stands in for accuracy during epoch 1, learning rate."""
    steps, epochs, first = bool(snap.step_rows), bool(snap.epoch_rows), first_model_acc(snap)
    return (gr.Plot(charts.loss_figure(snap.step_rows, snap.epoch_rows), visible=steps),
            gr.Plot(charts.accuracy_figure(snap.epoch_rows, first), visible=epochs or first is not None),
            gr.Markdown(visible=steps and not epochs and first is None and not snap.done),  # no promise after the end
            gr.Plot(charts.lr_figure(snap.step_rows), visible=steps))


# handlers -------------------------------------------------------------------------------------------
NUMBER_NAMES = ["epochs", "batch_size", "lr", "seed", "image_size"]


def check_train_numbers(*values):
    return problems_text(NUMBER_NAMES, values)


def _control(session, action: str):
    job = session.job()
    if job is not None:
        torchrun_choice.control(job, action)
    return buttons(job.status if job else None, job is None or torchrun_choice.can_pause(job))


def pause_job(session):
    return _control(session, "pause")


def unpause_job(session):
    return _control(session, "unpause")


def stop_job(session):
    return _control(session, "stop")


# The charts are redrawn at most this often while a job runs (and at once for a new epoch or the
# end): every redraw costs the server Python time beside the training and the browser a plotly
# re-render of three charts, which on a 2-core laptop running both slowed every other page.
CHART_EVERY_S = 3.0
_clock = time.monotonic


def poll_job(session):
    """The timer's tick: progress, charts (when new rows came, see CHART_EVERY_S), log, buttons, the other-tab offer."""
    job = session.job()
    following = job is not None and job.status not in FINAL_STATUSES
    offer = gr.Row(visible=not following and attach.other_tab_job(session) is not None)
    if job is None:
        return session, *[gr.skip()] * 10, offer
    _, count = job.events_since(0)
    snap = job.snapshot()
    if count == session.event_index and snap.done:
        return session, *[gr.skip()] * 10, offer
    now = _clock()
    redraw = count != session.event_index and (
        session.event_index == 0 or snap.done or len(snap.epoch_rows) != session.epochs_drawn
        or now - session.charts_at >= CHART_EVERY_S)
    if redraw:
        session.event_index, session.epochs_drawn, session.charts_at = count, len(snap.epoch_rows), now
    return (session, progress_html(snap), *(figures(snap) if redraw else (gr.skip(),) * 4), details_text(snap),
            *buttons(snap.status, torchrun_choice.can_pause(job)), offer)


def watch_other_tab(session):
    other = attach.other_tab_job(session)
    if other is None:
        raise gr.Error("That training has ended; its run is in the Runs tab.")
    session.attach(other, watching=True)
    return session, gr.Row(visible=False)


class TrainActions:
    """Start needs the workspace and the access policy (a weights path is checked against it)."""

    def __init__(self, ctx: AppContext):
        self.workspace, self.policy = ctx.workspace, ctx.policy

    def start_job(self, request: gr.Request, session, *values):
        # the training stack (torch, timm) is imported here, not when the page is laid out (issue #15.3)
        from ...backbones.build import check_model_available
        from ...jobs.training_job import TrainingJob
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
                                     base=session.base_config, fixes_by=session.dataset.fixes_by)
            attach.check_weights_path(cfg, session, self.policy, caller_host(request))
            check_model_available(cfg.model)
        except (ConfigError, ModelError) as exc:
            raise gr.Error(str(exc)) from None
        except PermissionError as exc:
            raise gr.Error(str(exc)) from None
        full = room_for_another(owner_id(session, request))
        if full:
            raise gr.Error(f"Not started: {full}.")
        if cfg.model.weights == "random":
            gr.Warning("Random starting weights: expect poor accuracy from a few hundred images.", title="Heads-up")
        if use_all_gpus:
            job = torchrun_choice.start(cfg, self.workspace)
        else:
            # The engine's "random weights" warning goes to the server log; the person got gr.Warning above.
            job = TrainingJob(cfg, workspace=str(self.workspace), dataset=session.dataset, interactive=True).start()
        session.owner_id = owner_id(session, request)   # an API client: its own session from now on
        set_owner(job, session.owner_id, session.tab_id)
        session.started(job)
        return session, *buttons("queued", torchrun_choice.can_pause(job)), gr.Row(visible=False)


# layout -----------------------------------------------------------------------------------------------
def build_train_tab(ctx: AppContext) -> None:
    with gr.Row():
        epochs = gr.Slider(1, 50, value=DEFAULTS["epochs"], step=1, label="Epochs", info="passes over the training images",
                           elem_id="lg-epochs")
        batch_size = gr.Slider(1, 128, value=DEFAULTS["batch_size"], step=1, label="Batch size", info="smaller uses less memory")
        lr = gr.Number(value=DEFAULTS["lr"], label="Learning rate", info="1e-3 suits LoRA; lower it if loss jumps")
    with gr.Row():
        augmentation = gr.Radio([("none", "none"), ("flip", "flip"), ("light", "light"), ("strong", "strong")],
                                value=DEFAULTS["augmentation"], label="Augmentation",
                                info="flip: mirror images (fastest: the frozen part is computed once); "
                                     "light: random crops too; strong: RandAugment")
        image_size = gr.Dropdown(SIZES, value=DEFAULTS["image_size"], label="Resolution", info="smaller trains faster")
        seed = gr.Number(value=DEFAULTS["seed"], precision=0, label="Seed", info="same seed + data = same result")
    numbers = lenient(epochs, batch_size, lr, seed, image_size)
    check = gr.Markdown(elem_id="lg-train-check")
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
    # charts stay hidden until there is something to draw (no empty axes)
    with gr.Row():
        loss_plot = gr.Plot(label="Loss", elem_id="lg-loss-plot", visible=False)
        acc_plot = gr.Plot(label="Accuracy", elem_id="lg-acc-plot", visible=False)
        acc_note = gr.Markdown(ACC_NOTE, elem_id="lg-acc-note", visible=False)
    with gr.Accordion("Show details (log, learning rate)", open=False, elem_id="lg-details"):
        log = gr.Textbox(label="Log (newest line first)", lines=10, max_lines=10, elem_id="lg-log")
        lr_plot = gr.Plot(label="Learning rate", visible=False)
    timer = gr.Timer(1.0)

    act = TrainActions(ctx)
    for listen in (epochs.change, batch_size.change, image_size.change, lr.submit, lr.blur, seed.submit, seed.blur):
        listen(check_train_numbers, list(numbers), check, show_progress="hidden", api_visibility="private")

    def wire(demo):
        inputs = [ctx.fields[n] for n in FIELD_NAMES]  # every tab has added its fields by now
        started = start.click(act.start_job, [ctx.session, *inputs, use_all_gpus],
                              [ctx.session, start, pause, resume, stop, other_tab], api_name="start_training")
        if "test_follow" in ctx.shared:   # a Test tab opened before Start was handled follows the run too
            started.then(**ctx.shared["test_follow"])
        demo.load(torchrun_choice.offer, None, use_all_gpus, **PRIVATE)   # counts the GPUs (torch) after the page is up
    polled = [ctx.session, progress, loss_plot, acc_plot, acc_note, lr_plot, log, start, pause, resume, stop, other_tab]
    ctx.shared.setdefault("on_load", []).append(wire)
    # once the page has said who it is (and re-attached its own job): its state at once, not a tick later
    ctx.shared.setdefault("after_identify", []).append(
        lambda identified: attach.wire_reattach(ctx, identified).then(poll_job, ctx.session, polled,
                                                                       show_progress="hidden", **PRIVATE))
    watch_btn.click(watch_other_tab, ctx.session, [ctx.session, other_tab], **PRIVATE)
    for btn, handler, name in ((pause, pause_job, "pause"), (resume, unpause_job, "unpause"), (stop, stop_job, "stop")):
        btn.click(handler, ctx.session, [start, pause, resume, stop], api_name=f"{name}_training")
    timer.tick(poll_job, [ctx.session], polled, show_progress="hidden", api_name="training_status")
