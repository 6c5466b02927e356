"""Variant (d): lora_gui's own engine with its default settings, seen from the outside.

A ``TrainingJob`` gets a ``RunConfig`` where only model, data, rank, batch
size, epochs and image size (and the device, when one is asked for) are set;
images/s come from the job's step rows, the levers it used from the run's
config.json. After training: one-image predict latency with the exported
adapter (``load_adapter`` + ``predict``), then the same while a second
``TrainingJob`` trains in the background of the same process, as in the app.
``profile()`` times the phases of the engine's steps by wrapping its pieces
(nothing under lora_gui/ is edited).
"""
from __future__ import annotations

import json
import math
import shutil
import statistics
import time
from pathlib import Path

import torch
from reference_loop import (
    median_after,
    peak_memory_mb,
    resolve_device,
    rss_mb,
    time_calls,
)


def _config(spec: dict, epochs: int):
    from lora_gui.config import (
        DataConfig,
        LoraConfig,
        ModelConfig,
        RunConfig,
        TrainConfig,
    )
    train = {"epochs": epochs, "batch_size": spec["batch_size"]}
    if spec["device"] != "auto":
        train["device"] = spec["device"]
    return RunConfig(model=ModelConfig(name=spec["model"], weights=spec["weights"], image_size=spec["image_size"]),
                     lora=LoraConfig(rank=spec["rank"]), data=DataConfig(source=spec["data_root"]),
                     train=TrainConfig(**train))


def _epochs_for(spec: dict) -> tuple[int, int | None]:
    """(epochs, step limit): in timing-only mode, enough epochs for warm-up + timed steps."""
    if spec["steps"] is None:
        return spec["epochs"], None
    limit = spec["warmup"] + spec["steps"]
    per_epoch = math.ceil(spec["n_train"] / spec["batch_size"])
    return math.ceil(limit / per_epoch), limit


def _train(spec: dict, workspace: Path, name: str, dataset, epochs: int, limit: int | None, **job_kw):
    """Run a job to its end (or ``limit`` steps); returns (job, snapshot, seconds)."""
    from lora_gui.jobs.training_job import TrainingJob
    job = TrainingJob(_config(spec, epochs), workspace=str(workspace), run_dir=str(workspace / name),
                      dataset=dataset, **job_kw)
    cpu_marks, record = [], job.report_metrics

    def record_cpu(row):  # the loop calls this in its own thread right after each step
        if row.get("kind") == "step":
            cpu_marks.append((row["epoch"], time.process_time()))
        record(row)
    job.report_metrics = record_cpu
    job.cpu_marks = cpu_marks
    t0, started = time.perf_counter(), time.time()
    job.start()
    while not job.wait(0.5):
        if limit is not None and job.snapshot(last_steps=0).step >= limit:
            job.stop()
    return job, job.snapshot(last_steps=10**6), time.perf_counter() - t0, started


def _predictor(run_dir: Path, device: str):
    """predict(path) with the exported adapter; falls back to the model when the API is missing."""
    try:
        from lora_gui.inference.predict import load_adapter, predict
    except ImportError:
        try:
            from lora_gui.inference.predict import load_adapter, predict
        except ImportError:
            return None, "unavailable"
    loaded = load_adapter(str(run_dir), device=device)
    return (lambda path: predict(loaded, [path], topk=1)), "load_adapter+predict (merged)"


def run(spec: dict) -> dict:
    import lora_gui.training.loop  # noqa: F401  imported before the clock starts, as for the reference
    from lora_gui.jobs.training_job import preflight
    device = resolve_device(spec["device"])
    workspace = Path(spec["workspace"])
    baseline = rss_mb()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    dataset = preflight(_config(spec, 1), str(workspace))
    dataset_load_s = time.perf_counter() - t0
    epochs, limit = _epochs_for(spec)
    job, snap, wall, started = _train(spec, workspace, "bench", dataset, epochs, limit)
    memory = peak_memory_mb(device)
    if snap.status not in ("finished", "stopped"):
        raise RuntimeError(f"engine run {snap.status}: {snap.message}\n" + "\n".join(snap.log))
    saved = json.loads(job.run.config_file.read_text())   # config.json as written
    rows = snap.step_rows[:limit] if limit else snap.step_rows
    skip = spec["warmup"]
    by_epoch = {}
    for e in sorted({r["epoch"] for r in rows}):
        by_epoch[e] = median_after([r["images_per_s"] for r in rows if r["epoch"] == e], skip if e == 1 else 0)
    val = [r["val_acc"] for r in snap.epoch_rows]
    # process CPU time between consecutive step rows of one epoch (other processes' load does not count;
    # the first step of an epoch is left out, its interval holds the previous epoch's validation)
    marks = job.cpu_marks[:len(rows)]
    per_cpu = [spec["batch_size"] / (c1 - c0) for (e0, c0), (e1, c1) in zip(marks, marks[1:]) if e0 == e1 and c1 > c0]
    status = job.run.read_status() if hasattr(job.run, "read_status") else {}
    result = {
        "images_per_s": median_after([r["images_per_s"] for r in rows], skip),
        "images_per_cpu_s": median_after(per_cpu, max(0, skip - 1)),
        "images_per_s_by_epoch": by_epoch, "steps": len(rows), "timed_steps": max(1, len(rows) - skip),
        "val_acc": val[-1] if val and limit is None else None, "val_acc_by_epoch": val,
        "final_train_loss": rows[-1]["loss"] if rows else None,
        "time_to_first_step_s": rows[0]["time"] - started if rows else None,
        "train_wall_s": wall,
        "end_to_end_images_per_s": (len(rows) * spec["batch_size"] if limit else epochs * spec["n_train"]) / wall, "dataset_load_s": dataset_load_s, "baseline_rss_mb": baseline, **memory,
        "layers": saved.get("layers"), "levers": saved.get("speed", {}), "engine_device": saved.get("device"),
        "status": snap.status, "duration_s": status.get("duration_s"), "engine_log": _log_lines(job),
    }
    if hasattr(torch, "get_num_threads"):
        result["threads"] = (saved.get("speed") or {}).get("threads", torch.get_num_threads())
    try:
        from lora_gui import lora
        trainable, total = lora.count_parameters(_rebuild(spec, saved.get("layers")))
        result.update(trainable_params=trainable, total_params=total)
    except Exception as exc:  # informative only
        result["trainable_params_error"] = str(exc)

    # predict latency: idle, then while a training runs in this process (as in the app)
    predict_one, how = _predictor(job.run.path, device)
    paths = [s.path for s in dataset.given_split["val"]] if dataset.given_split else [s.path for s in dataset.samples]
    if predict_one is not None:
        result["predict"] = dict(time_calls(predict_one, paths, spec["predict_n"]), how=how)
        result["predict_during_training"] = _predict_while_training(spec, workspace, dataset, predict_one, paths)
    else:
        result["predict"] = {"how": how}
    if not spec.get("keep_runs"):
        shutil.rmtree(workspace, ignore_errors=True)
    return result


def _log_lines(job) -> list[str]:
    """The run log's lines about the speed levers (e.g. how long the frozen-prefix cache took)."""
    try:
        text = (job.run.path / "train.log").read_text()
    except OSError:
        return []
    keys = ("prefix", "speed", "bf16", "channels_last", "compile", "LoRA layers")
    return [ln for ln in text.splitlines() if any(k in ln for k in keys)][:6]


def _rebuild(spec: dict, layers):
    """A model with the engine's LoRA layout, only to count its parameters."""
    import warnings

    from lora_gui import lora
    from lora_gui.backbones.build import build_model
    from lora_gui.config import LoraConfig, ModelConfig
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random weights")
        model = build_model(ModelConfig(name=spec["model"], weights=spec["weights"],
                                              image_size=spec["image_size"]), spec["num_classes"])
    lora.inject_lora(model, LoraConfig(rank=spec["rank"]), layers)
    return model


def _predict_while_training(spec, workspace, dataset, predict_one, paths) -> dict:
    from lora_gui.jobs.training_job import TrainingJob
    job = TrainingJob(_config(spec, 1000), workspace=str(workspace), run_dir=str(workspace / "background"),
                      dataset=dataset, interactive=True).start()
    try:
        deadline = time.time() + 600
        while job.snapshot(last_steps=0).step < 2 and not job.wait(0.2) and time.time() < deadline:
            pass
        if job.snapshot(last_steps=0).status != "running":
            return {"error": f"background training is {job.status}: {job.message}"}
        t_start = time.time()
        latency = time_calls(predict_one, paths, spec["predict_n"])
        t_end = time.time()
        rows = [r for r in job.snapshot(last_steps=10**6).step_rows if t_start <= r["time"] <= t_end]
        ips = [r["images_per_s"] for r in rows]
        return dict(latency, train_images_per_s=statistics.median(ips) if ips else None,
                    train_steps_meanwhile=len(rows), interactive=True)
    finally:
        job.stop()
        job.wait(120)


# --------------------------------------------------------------------------- #
# --profile: where the engine's step time goes
# --------------------------------------------------------------------------- #

def _optional(name: str):
    import importlib
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _op_table(prof, gpu: bool) -> str:
    keys = ("self_device_time_total", "self_cuda_time_total") if gpu else ()
    for key in (*keys, "self_cpu_time_total"):  # the GPU column's name changed across torch versions
        try:
            return prof.key_averages().table(sort_by=key, row_limit=15)
        except (KeyError, AttributeError, RuntimeError, ValueError):
            continue
    return ""


def profile(spec: dict) -> dict:
    """Per-step phase times (data / forward / backward / optimizer / other) and the
    top operators (torch.profiler inside the training thread) of the engine's loop."""
    from lora_gui.jobs.training_job import TrainingJob, preflight
    from lora_gui.training import loop as tl
    workspace = Path(spec["workspace"])
    dataset = preflight(_config(spec, 1), str(workspace))
    # Trainer methods timed on their own: phase name -> method (skipped when the engine has none)
    methods = {"optimizer": "_optimizer_step", "metrics_rows": "_emit", "rng_snapshot": "_mark_boundary",
               "loss_check": "_check_loss", "to_device": "_to_device"}
    cur = dict.fromkeys(["data", "forward", "backward", *methods], 0.0)
    state = {"eval": False, "t_fwd": 0.0, "steps": []}
    clock = time.perf_counter

    def add(key, dt):
        if not state["eval"]:
            cur[key] += dt

    class TimedLoader:  # wraps the engine's DataLoader to time each next()
        def __init__(self, inner):
            self.inner = inner

        def __len__(self):
            return len(self.inner)

        def __iter__(self):
            it = iter(self.inner)
            while True:
                t = clock()
                try:
                    item = next(it)
                except StopIteration:
                    return
                add("data", clock() - t)
                yield item

    patched = []

    def patch(obj, name, make):
        if obj is not None and hasattr(obj, name):
            orig = getattr(obj, name)
            setattr(obj, name, make(orig))
            patched.append((obj, name, orig))

    for module in (tl, _optional("lora_gui.training.batches")):  # wherever the engine builds its DataLoaders
        patch(module, "_loader", lambda orig: lambda *a, **k: TimedLoader(orig(*a, **k)))

    def build(orig):
        def wrapped(*a, **k):
            model = orig(*a, **k)
            model.register_forward_pre_hook(lambda m, i: state.__setitem__("t_fwd", clock()))
            model.register_forward_hook(lambda m, i, o: add("forward", clock() - state["t_fwd"]) if m.training else None)
            return model
        return wrapped
    patch(tl, "build_model", build)

    def timed(key):
        def make(orig):
            def wrapped(*a, **k):
                t = clock()
                try:
                    return orig(*a, **k)
                finally:
                    add(key, clock() - t)
            return wrapped
        return make
    patch(torch.Tensor, "backward", timed("backward"))
    for key, name in methods.items():
        patch(tl.Trainer, name, timed(key))

    def evaluate(orig):
        def wrapped(self, *a, **k):
            state["eval"] = True
            try:
                return orig(self, *a, **k)
            finally:
                state["eval"] = False
        return wrapped
    patch(tl.Trainer, "evaluate", evaluate)

    timed_steps = spec["steps"] or 8
    limit = spec["warmup"] + timed_steps
    ops = {}

    def train(orig):  # torch.profiler records only its own thread: start it in the training thread
        def wrapped(self, *a, **k):
            from torch.profiler import ProfilerActivity, schedule
            from torch.profiler import profile as torch_profile
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.startswith("cuda") else [])
            table = lambda p: ops.__setitem__("table", _op_table(p, gpu=len(acts) > 1))  # noqa: E731
            # off while the phases are timed, then on for 3 steps
            with torch_profile(activities=acts, schedule=schedule(wait=limit, warmup=1, active=3),
                               on_trace_ready=table) as prof:
                state["prof"] = prof
                return orig(self, *a, **k)
        return wrapped
    patch(tl.Trainer, "_train", train)

    job = TrainingJob(_config(spec, 1000), workspace=str(workspace), run_dir=str(workspace / "profile"),
                      dataset=dataset)
    record = job.report_metrics

    def record_with_phases(row):  # called by the loop, in the training thread, once per step
        if row.get("kind") == "step":
            state["steps"].append(dict(cur, total=1000 * spec["batch_size"] / row["images_per_s"]))
            for k in cur:
                cur[k] = 0.0
            if "prof" in state:
                state["prof"].step()
        record(row)
    job.report_metrics = record_with_phases
    try:
        job.start()
        while not job.wait(0.5):
            if job.snapshot(last_steps=0).step >= limit + 5:
                job.stop()
    finally:
        for obj, name, orig in reversed(patched):
            setattr(obj, name, orig)
    snap = job.snapshot(last_steps=0)
    if snap.status not in ("finished", "stopped"):
        raise RuntimeError(f"profiled run {snap.status}: {snap.message}\n" + "\n".join(snap.log))
    steps = state["steps"][spec["warmup"]:limit] or state["steps"][-1:]
    # means, so that the phases add up to the step
    phases = {k: 1000 * statistics.fmean(s[k] for s in steps) for k in cur}
    phases["s"] = statistics.fmean(s["total"] for s in steps)
    phases["other"] = phases["s"] - sum(phases[k] for k in ("data", "forward", "backward", "optimizer"))
    if not spec.get("keep_runs"):
        shutil.rmtree(workspace, ignore_errors=True)
    return {"phases_ms": phases, "top_ops": ops.get("table", ""), "steps": len(steps),
            "note": "phases: means over the timed steps, profiler off; top_ops: 3 later steps under torch.profiler"}
