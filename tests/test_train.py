"""The training engine, end to end: real timm models, real image folders, a few steps.

Every test trains ``resnet18`` (random weights, 32 px) on a tiny folder of
coloured images written here, on one CPU thread, so a run takes a second or two.
"""
from __future__ import annotations

import json
import math
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import write_colour_folder

from lora_gui import lora
from lora_gui.backbones.build import build_model
from lora_gui.config import DataConfig, LoraConfig, ModelConfig, RunConfig, TrainConfig
from lora_gui.data.decoded_cache import DecodedCache, cache_max_side
from lora_gui.data.scan import Sample
from lora_gui.data.transforms import ImageDataset, build_transform
from lora_gui.errors import StopRequested, TrainingFailed
from lora_gui.jobs.device_queue import DeviceQueue
from lora_gui.jobs.training_job import TrainingJob
from lora_gui.store.adapter_file import build_from_adapter, read_adapter
from lora_gui.store.run_folder import RunFolder, list_runs
from lora_gui.training.loop import Trainer
from lora_gui.training.reporter import RecordingReporter
from lora_gui.training.schedule import cosine_with_warmup

warnings.filterwarnings("ignore", message=".*random weights.*")

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    # 3 classes x 8 images, val 0.25 -> 18 train / 6 val; batch 4 -> 5 steps per epoch
    return write_colour_folder(tmp_path_factory.mktemp("colours") / "data")


def make_config(data_dir, *, augmentation="light", lora_kw=None, **train) -> RunConfig:
    train = {"epochs": 2, "batch_size": 4, "lr": 3e-3, "num_threads": 1, "seed": 7, **train}
    return RunConfig(model=ModelConfig(name="resnet18", weights="random", image_size=32),
                     lora=LoraConfig(**{"rank": 4, "alpha": 8.0, **(lora_kw or {})}),
                     data=DataConfig(source=str(data_dir), val_fraction=0.25, augmentation=augmentation),
                     train=TrainConfig(**train))


def new_job(cfg, tmp_path, name="run", queue=None, **kw) -> TrainingJob:
    return TrainingJob(cfg, workspace=str(tmp_path / "ws"), run_dir=str(tmp_path / "ws" / name),
                       queue=queue or DeviceQueue(), **kw)


def run_job(cfg, tmp_path, name="run", timeout=120, **kw) -> TrainingJob:
    job = new_job(cfg, tmp_path, name, **kw).start()
    assert job.wait(timeout), f"{name} did not finish in {timeout}s: {job.snapshot().message}"
    return job


def hook_steps(job: TrainingJob, on_step) -> None:
    """Call ``on_step(job, row)`` in the training thread right after each step row is recorded."""
    record = job.report_metrics

    def wrapped(row):
        record(row)
        if row["kind"] == "step":
            on_step(job, row)
    job.report_metrics = wrapped


def wait_until(cond, timeout=60.0, what="condition"):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def statuses(job) -> list[str]:
    events, _ = job.events_since(0)
    out = []
    for e in events:
        if e["kind"] == "status" and (not out or out[-1] != e["status"]):
            out.append(e["status"])
    return out


def key_metrics(rows) -> list[tuple]:
    """What must be identical between two runs: everything but wall-clock quantities."""
    keys = ("kind", "epoch", "step", "loss", "lr", "train_loss", "train_acc", "val_loss", "val_acc")
    return [tuple(r.get(k) for k in keys) for r in rows]


def evaluate_adapter(adapter_dir: Path, run: RunFolder) -> tuple[float, float, torch.Tensor]:
    """Rebuild a model from a saved adapter alone and evaluate it on the run's validation split,
    decoding exactly as the trainer does (decoded cache, eval transform)."""
    tensors, meta = read_adapter(adapter_dir)
    model = build_from_adapter(tensors, meta)
    samples = [Sample(p, l) for p, l in run.split().val]
    dc = dict(meta.data_config)
    ds = ImageDataset(samples, build_transform(dc, "none", False), DecodedCache(2**26, cache_max_side(dc)))
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([s.label for s in samples])
    with torch.no_grad():
        logits = model(x)
    loss = F.cross_entropy(logits, y, reduction="sum").item() / len(y)
    return loss, (logits.argmax(1) == y).float().mean().item(), logits


# --------------------------------------------------------------------------- #
# A whole run: events, snapshot, run folder
# --------------------------------------------------------------------------- #

def test_run_events_metrics_config_and_adapters(data_dir, tmp_path):
    # fp32, so the adapters' re-evaluation below (fp32) must reproduce the logged metrics exactly
    cfg = make_config(data_dir, mixed_precision="off")
    job = run_job(cfg, tmp_path)
    snap = job.snapshot()
    assert snap.status == "finished", snap.message
    assert statuses(job) == ["queued", "running", "finished"]

    # events: steps numbered 1..N in order, each epoch row right after its epoch's steps
    events = [e for e in job.events_since(0)[0] if e["kind"] in ("step", "epoch")]
    assert [e["step"] for e in events if e["kind"] == "step"] == list(range(1, 11))
    layout = [(e["kind"], e["epoch"]) for e in events]
    assert layout == [("step", 1)] * 5 + [("epoch", 1)] + [("step", 2)] * 5 + [("epoch", 2)]
    assert [e["step"] for e in events if e["kind"] == "epoch"] == [5, 10]
    for e in events:
        if e["kind"] == "step":
            assert math.isfinite(e["loss"]) and e["lr"] > 0 and e["images_per_s"] > 0
        else:
            assert 0 <= e["train_acc"] <= 1 and 0 <= e["val_acc"] <= 1 and e["val_loss"] > 0
    times = [e["time"] for e in job.events_since(0)[0]]
    assert times == sorted(times)

    # snapshot at the end
    assert (snap.step, snap.total_steps, snap.epoch, snap.epochs) == (10, 10, 2, 2)
    assert snap.progress == 1.0 and snap.eta_s == 0.0 and snap.done and snap.queue_position is None
    assert len(snap.step_rows) == 10 and len(snap.epoch_rows) == 2
    assert len(job.snapshot(last_steps=3).step_rows) == 3

    run = RunFolder(snap.run_dir)
    # metrics.csv holds the same rows as the events, in the same order
    assert key_metrics(run.read_metrics()) == key_metrics(events)

    # config.json: everything needed to reproduce the run
    assert run.record().config == cfg
    saved = json.loads(run.config_file.read_text())  # the file's own format
    assert saved["config"]["model"] == {"name": "resnet18", "weights": "random", "weights_file": None,
                                        "image_size": 32}
    assert saved["config"]["lora"]["rank"] == 4 and saved["config"]["train"]["seed"] == 7
    assert saved["config"]["data"]["source"] == str(data_dir)
    assert saved["classes"] == ["class_0", "class_1", "class_2"]
    probe = build_model(cfg.model, 3)
    expected_layers = lora.inject_lora(probe, cfg.lora)
    assert saved["layers"] == expected_layers and len(expected_layers) > 0
    assert list(saved["data_config"]["input_size"]) == [3, 32, 32]
    assert {"python", "torch", "timm"} <= set(saved["versions"])
    assert saved["versions"]["torch"] == torch.__version__
    split = run.split()
    assert (len(split.train), len(split.val)) == (18, 6)

    status = run.read_status()
    assert status["status"] == "finished" and status["duration_s"] >= 0
    best_row = next(r for r in snap.epoch_rows if r["epoch"] == status["best_epoch"])
    assert status["best_val_acc"] == best_row["val_acc"]
    assert [r["run"] for r in list_runs(tmp_path / "ws")] == ["run"]
    assert list_runs(tmp_path / "ws")[0]["status"] == "finished"

    # the adapters alone rebuild the trained model: same validation metrics as during training
    for which, row in (("last", snap.epoch_rows[-1]), ("best", best_row)):
        assert (run.path / which / "adapter.safetensors").is_file()
        loss, acc, _ = evaluate_adapter(run.path / which, run)
        assert loss == pytest.approx(row["val_loss"], rel=1e-5, abs=1e-6), which
        assert acc == pytest.approx(row["val_acc"]), which
    # and the checkpoint's weights are the last adapter's
    state = run.load_checkpoint()
    tensors, _ = read_adapter(run.path / "last")
    assert set(tensors) == set(state["adapter"])
    assert all(torch.equal(tensors[k], state["adapter"][k]) for k in tensors)
    assert state["step"] == 10 and state["epoch"] == 2


def test_adapter_logits_match_the_trained_model(data_dir, tmp_path, monkeypatch):
    """Logits of the model rebuilt from last/ equal the trained model's own logits (eval)."""
    trainers = []
    run_orig = Trainer.run

    def keep(self):
        trainers.append(self)
        return run_orig(self)
    monkeypatch.setattr(Trainer, "run", keep)
    job = run_job(make_config(data_dir, epochs=1), tmp_path)
    assert job.status == "finished", job.message
    trained = trainers[0].model.eval()
    _, _, rebuilt_logits = evaluate_adapter(job.run.path / "last", job.run)
    ds = trainers[0].batches.val_ds   # augmentation "light": the image path, not the prefix cache
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.no_grad():
        own = trained(x)
    torch.testing.assert_close(rebuilt_logits, own, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- #
# Stop and pause
# --------------------------------------------------------------------------- #

def test_stop_takes_effect_within_one_batch_and_keeps_the_adapter(data_dir, tmp_path):
    job = new_job(make_config(data_dir, epochs=3), tmp_path)
    hook_steps(job, lambda j, row: j.stop() if row["step"] == 1 else None)
    job.start()
    assert job.wait(60)
    snap = job.snapshot()
    assert snap.status == "stopped", snap.message
    assert "last/" in snap.message
    assert statuses(job) == ["queued", "running", "stopping", "stopped"]
    assert [r["step"] for r in snap.step_rows] == [1]  # not one batch more
    run = job.run
    assert [r["step"] for r in run.read_metrics()] == [1]
    assert run.read_status()["status"] == "stopped"
    assert run.load_checkpoint()["step"] == 1
    # last/ holds the adapter after step 1 and is usable on its own
    tensors, meta = read_adapter(run.path / "last")
    ckpt = run.load_checkpoint()["adapter"]
    assert all(torch.equal(tensors[k], ckpt[k]) for k in ckpt)
    loss, acc, logits = evaluate_adapter(run.path / "last", run)
    assert torch.isfinite(logits).all() and logits.shape == (6, 3)

    # a stopped run can be resumed and finishes with every step exactly once
    before = run.read_status()
    resumed = TrainingJob.resume_run(str(run.path), queue=DeviceQueue()).start()
    assert resumed.wait(60) and resumed.status == "finished", resumed.message
    after = run.read_status()
    assert after["started"] == before["started"] and "resumed" in after
    assert after["duration_s"] >= before["duration_s"]
    assert [r["step"] for r in run.read_metrics() if r["kind"] == "step"] == list(range(1, 16))
    assert [r["epoch"] for r in run.read_metrics() if r["kind"] == "epoch"] == [1, 2, 3]


def test_stop_from_another_thread_while_paused(data_dir, tmp_path):
    job = new_job(make_config(data_dir, epochs=3), tmp_path)
    hook_steps(job, lambda j, row: j.pause() if row["step"] == 2 else None)
    job.start()
    wait_until(lambda: job.status == "paused", what="pause")
    job.stop()
    assert job.wait(30) and job.status == "stopped", job.message
    assert [r["step"] for r in job.snapshot().step_rows] == [1, 2]
    assert (job.run.path / "last" / "adapter.safetensors").is_file()


def test_pause_then_resume(data_dir, tmp_path):
    job = new_job(make_config(data_dir), tmp_path)
    hook_steps(job, lambda j, row: j.pause() if row["step"] == 2 else None)
    job.start()
    wait_until(lambda: job.status == "paused" and job.snapshot().step == 2, what="pause at step 2")
    snap = job.snapshot()
    assert snap.progress == pytest.approx(2 / 10)
    assert snap.eta_s is not None and snap.eta_s > 0
    assert job.run.read_status()["status"] == "paused"
    time.sleep(0.8)  # ~20 steps' worth of time: none may happen while paused
    assert [r["step"] for r in job.snapshot().step_rows] == [1, 2]
    assert job.status == "paused"
    job.unpause()
    assert job.wait(60) and job.status == "finished", job.message
    assert statuses(job) == ["queued", "running", "paused", "running", "finished"]
    assert [r["step"] for r in job.snapshot().step_rows] == list(range(1, 11))
    assert job.run.read_status()["status"] == "finished"


def test_pause_during_setup_is_not_lost(data_dir, tmp_path, monkeypatch):
    """A pause pressed while data and model are prepared must hold: no step runs until unpause."""
    gate = threading.Event()
    prepare = Trainer.prepare

    def slow_prepare(self):
        prepare(self)
        gate.wait(10)
    monkeypatch.setattr(Trainer, "prepare", slow_prepare)
    job = new_job(make_config(data_dir, epochs=1), tmp_path).start()
    wait_until(lambda: job.status == "running", what="running")
    job.pause()
    gate.set()
    time.sleep(0.5)
    assert job.status == "paused" and job.snapshot().step == 0
    job.unpause()
    assert job.wait(60) and job.status == "finished"


# --------------------------------------------------------------------------- #
# Failures
# --------------------------------------------------------------------------- #

def test_nan_loss_is_caught(data_dir, tmp_path):
    """A NaN in the starting weights gives a NaN loss at the first step, every time. No update
    has happened yet, so the message blames the weights, not the learning rate."""
    from safetensors.torch import save_file
    torch.manual_seed(0)
    state = build_model(ModelConfig(name="resnet18", weights="random"), 3).state_dict()
    state["conv1.weight"][0, 0, 0, 0] = float("nan")
    weights = tmp_path / "nan.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    cfg = make_config(data_dir)
    cfg.model = ModelConfig(name="resnet18", weights="file", weights_file=str(weights), image_size=32)
    job = run_job(cfg, tmp_path)
    assert job.status == "failed"
    assert job.message.startswith("the loss is nan at step 1, before any weight update")
    assert "weights" in job.message and "learning rate" not in job.message
    assert job.failure_kind == "training" and job.snapshot().step_rows == []
    assert job.run.read_status()["status"] == "failed"
    assert "Traceback" in job.run.log_file.read_text()


def test_diverging_loss_fails_with_a_lower_learning_rate_hint(data_dir, tmp_path):
    """lr=10 without clipping does not reach inf here (losses ~1e4-1e7), but it is caught."""
    cfg = make_config(data_dir, augmentation="none", lr=10.0, grad_clip=0.0, label_smoothing=0.0,
                      warmup_fraction=0.0, epochs=3)
    job = run_job(cfg, tmp_path)
    assert job.status == "failed", job.message
    assert "diverged" in job.message and "lower the learning rate" in job.message.lower()
    assert len(job.snapshot().step_rows) < 15


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 500.0])
def test_a_non_finite_or_exploding_loss_after_updates_asks_for_a_lower_learning_rate(value, tmp_path):
    trainer = Trainer.__new__(Trainer)
    trainer.step, trainer.first_loss = 3, 1.1
    trainer._check_loss(50.0)  # high, but within bounds
    with pytest.raises(TrainingFailed, match=r"at step 4: training diverged\. Lower the learning rate"):
        trainer._check_loss(value)


def test_exception_in_the_thread_becomes_a_one_line_failure(data_dir, tmp_path, monkeypatch):
    def boom(self):
        raise RuntimeError("something broke\nwith a second line")
    monkeypatch.setattr(Trainer, "_optimizer_step", boom)
    job = run_job(make_config(data_dir), tmp_path)
    assert job.status == "failed" and job.failure_kind == "training"
    assert "\n" not in job.message
    assert "RuntimeError: something broke" in job.message and "train.log" in job.message
    log = job.run.log_file.read_text()
    assert "Traceback (most recent call last)" in log and "with a second line" in log and "boom" in log
    assert job.run.read_status()["status"] == "failed"


def test_out_of_memory_suggests_a_smaller_batch(data_dir, tmp_path, monkeypatch):
    def oom(self):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    monkeypatch.setattr(Trainer, "_optimizer_step", oom)
    job = run_job(make_config(data_dir), tmp_path)
    assert job.status == "failed"
    assert "smaller batch" in job.message and "resolution" in job.message


def test_bad_input_in_the_thread_is_a_user_failure(tmp_path):
    one_class = write_colour_folder(tmp_path / "one", classes=1)
    job = run_job(make_config(one_class), tmp_path)
    assert job.status == "failed" and job.failure_kind == "input"
    assert "only 1 class" in job.message and "\n" not in job.message


def test_training_into_an_existing_run_is_refused(data_dir, tmp_path):
    run_job(make_config(data_dir, epochs=1), tmp_path)
    with pytest.raises(FileExistsError, match="already holds a run"):
        new_job(make_config(data_dir, epochs=1), tmp_path)


# --------------------------------------------------------------------------- #
# Queue
# --------------------------------------------------------------------------- #

def test_two_jobs_on_one_device_queue_in_order(data_dir, tmp_path):
    queue = DeviceQueue()
    # the first job is held inside its first step (a paused job would give the device up, #13.6)
    gate = threading.Event()
    first = new_job(make_config(data_dir, epochs=1), tmp_path, "first", queue=queue)
    hook_steps(first, lambda j, row: gate.wait(60) if row["step"] == 1 else None)
    second = new_job(make_config(data_dir, epochs=1), tmp_path, "second", queue=queue)
    first.start()
    wait_until(lambda: len(first.snapshot().step_rows) == 1, what="first job training")
    second.start()
    wait_until(lambda: second.snapshot().queue_position == 1, what="second job in line")
    snap = second.snapshot()
    assert snap.status == "queued" and "1 job(s) ahead" in snap.message
    assert first.snapshot().queue_position is None  # it holds the device
    time.sleep(0.3)
    assert second.status == "queued" and second.snapshot().step_rows == []
    gate.set()
    assert first.wait(60) and second.wait(60)
    assert first.status == second.status == "finished"
    first_end = max(e["time"] for e in first.events_since(0)[0])
    second_start = min(r["time"] for r in second.snapshot().step_rows)
    assert second_start > first_end
    assert statuses(second) == ["queued", "running", "finished"]
    assert queue.position(second) is None and queue.waiting("cpu") == 0


def test_a_queued_job_can_be_stopped_before_it_starts(data_dir, tmp_path):
    queue = DeviceQueue()
    gate = threading.Event()
    first = new_job(make_config(data_dir, epochs=1), tmp_path, "first", queue=queue)
    hook_steps(first, lambda j, row: gate.wait(60) if row["step"] == 1 else None)
    second = new_job(make_config(data_dir, epochs=1), tmp_path, "second", queue=queue)
    first.start()
    wait_until(lambda: len(first.snapshot().step_rows) == 1, what="first training")
    second.start()
    wait_until(lambda: second.snapshot().queue_position == 1, what="second queued")
    second.stop()
    assert second.wait(10) and second.status == "stopped"
    gate.set()
    assert first.wait(60) and first.status == "finished"


# --------------------------------------------------------------------------- #
# Reproducibility and resume
# --------------------------------------------------------------------------- #

def test_same_seed_same_metrics(data_dir, tmp_path):
    a = run_job(make_config(data_dir), tmp_path, "a")
    b = run_job(make_config(data_dir), tmp_path, "b")
    c = run_job(make_config(data_dir, seed=8), tmp_path, "c")
    assert a.status == b.status == c.status == "finished"
    rows_a = key_metrics(a.snapshot().step_rows + a.snapshot().epoch_rows)
    assert rows_a == key_metrics(b.snapshot().step_rows + b.snapshot().epoch_rows)
    assert [r["loss"] for r in a.snapshot().step_rows] != [r["loss"] for r in c.snapshot().step_rows]
    ta, _ = read_adapter(a.run.path / "last")
    tb, _ = read_adapter(b.run.path / "last")
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


def test_stop_mid_accumulation_then_resume_equals_uninterrupted(data_dir, tmp_path, monkeypatch):
    """Stop after 3 batches with grad_accum=2 (half-way into step 2), resume: the whole run's
    metrics equal an uninterrupted run's, so the rollback, the RNG state and the mid-epoch
    restart of the data order are all exact."""
    # the count below is of the loop's control checks: the BatchNorm calibration of the
    # set-up checks them too, so it is off here (resumed calibrated runs: the tests below)
    cfg = make_config(data_dir, grad_accum=2, epochs=2, calibrate_norms="off")
    baseline = run_job(cfg, tmp_path, "baseline")
    assert baseline.status == "finished"

    job = new_job(cfg, tmp_path, "stopped")
    calls = {"n": 0}
    check = job.check_controls

    def counting():
        calls["n"] += 1
        if calls["n"] == 4:  # before batch 4: batches 1-2 made step 1, batch 3 is half of step 2
            job.stop()
        check()
    job.check_controls = counting
    job.start()
    assert job.wait(60) and job.status == "stopped"
    assert [r["step"] for r in job.snapshot().step_rows] == [1]
    assert job.run.load_checkpoint()["batch_in_epoch"] == 2

    resumed = TrainingJob.resume_run(str(job.run.path), queue=DeviceQueue()).start()
    assert resumed.wait(60) and resumed.status == "finished", resumed.message
    assert key_metrics(job.run.read_metrics()) == key_metrics(baseline.run.read_metrics())
    ta, _ = read_adapter(baseline.run.path / "last")
    tb, _ = read_adapter(job.run.path / "last")
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


def test_resume_without_a_checkpoint_starts_over(data_dir, tmp_path):
    """Killed after config.json but before the first checkpoint: resume runs from step 0."""
    cfg = make_config(data_dir, epochs=1)
    baseline = run_job(cfg, tmp_path, "baseline")
    job = run_job(cfg, tmp_path, "killed")
    job.run.checkpoint_file.unlink()
    job.run.metrics_file.write_text(job.run.metrics_file.read_text().splitlines()[0] + "\nstep,1,1,0.5")
    resumed = TrainingJob.resume_run(str(job.run.path), queue=DeviceQueue()).start()
    assert resumed.wait(60) and resumed.status == "finished", resumed.message
    assert key_metrics(job.run.read_metrics()) == key_metrics(baseline.run.read_metrics())


def test_resume_drops_rows_after_the_checkpoint_and_torn_lines(data_dir, tmp_path):
    run = RunFolder(tmp_path / "r").create()
    rows = [{"kind": "step", "epoch": 1, "step": s, "loss": 1.0 / s, "lr": 1e-3, "images_per_s": 5.0,
             "time": 100.0 + s} for s in (1, 2, 3)]
    run.append_metrics(rows[:2] + [{"kind": "epoch", "epoch": 1, "step": 2, "train_loss": 0.5,
                                    "train_acc": 0.5, "val_loss": None, "val_acc": None, "time": 103.0}]
                       + rows[2:])
    with open(run.metrics_file, "a") as f:
        f.write("step,2,4,0.2")  # cut short by a kill: no time, no newline
    assert [r["step"] for r in run.read_metrics()] == [1, 2, 2, 3]
    run.truncate_metrics(keep_step=2, keep_epoch=1)
    got = run.read_metrics()
    assert [(r["kind"], r["step"]) for r in got] == [("step", 1), ("step", 2), ("epoch", 2)]
    assert got[0]["loss"] == 1.0 and got[2]["val_loss"] is None
    run.append_metrics([rows[2]])
    assert [r["step"] for r in run.read_metrics()] == [1, 2, 2, 3]


# --------------------------------------------------------------------------- #
# Optimisation details
# --------------------------------------------------------------------------- #

def test_early_stopping_keeps_the_best_adapter(data_dir, tmp_path, monkeypatch):
    """Validation results are scripted (the real evaluation still runs): epoch 2 is best,
    epochs 3 and 4 do not improve, patience 2 stops after epoch 4 of 8."""
    script = {1: (1.0, 0.5), 2: (0.8, 0.9), 3: (0.9, 0.6), 4: (0.95, 0.6)}
    evaluate, end_epoch = Trainer.evaluate, Trainer._end_epoch
    at_epoch_end = {}

    def scripted(self):
        evaluate(self)
        return script.get(self.epoch + 1, (2.0, 0.1))

    def capture(self):
        at_epoch_end[self.epoch + 1] = lora.adapter_state_dict(self.model)
        end_epoch(self)
    monkeypatch.setattr(Trainer, "evaluate", scripted)
    monkeypatch.setattr(Trainer, "_end_epoch", capture)
    job = run_job(make_config(data_dir, epochs=8, early_stop_patience=2), tmp_path)
    assert job.status == "finished", job.message
    assert [r["epoch"] for r in job.snapshot().epoch_rows] == [1, 2, 3, 4]
    assert "early stopping" in job.run.log_file.read_text()
    status = job.run.read_status()
    assert status["best_epoch"] == 2 and status["best_val_acc"] == 0.9
    assert "90.0%" in job.message and "epoch 2" in job.message
    best, meta = read_adapter(job.run.path / "best")
    assert meta.metrics["epoch"] == 2
    assert all(torch.equal(best[k], at_epoch_end[2][k]) for k in best)
    last, _ = read_adapter(job.run.path / "last")
    assert all(torch.equal(last[k], at_epoch_end[4][k]) for k in last)
    assert not all(torch.equal(best[k], last[k]) for k in best)

    # resuming an early-stopped run does not train on
    resumed = TrainingJob.resume_run(str(job.run.path), queue=DeviceQueue()).start()
    assert resumed.wait(60) and resumed.status == "finished"
    assert [r["epoch"] for r in job.run.read_metrics() if r["kind"] == "epoch"] == [1, 2, 3, 4]


def test_gradient_accumulation_gives_the_expected_number_of_steps(data_dir, tmp_path, monkeypatch):
    steps = []
    opt_step = Trainer._optimizer_step

    def counting(self):
        steps.append(self.batch_in_epoch)
        opt_step(self)
    monkeypatch.setattr(Trainer, "_optimizer_step", counting)
    # 18 train images, batch 4 -> 5 batches per epoch; 2 per step -> 3 steps (2 + 2 + 1)
    job = run_job(make_config(data_dir, augmentation="none", grad_accum=2, epochs=2), tmp_path)
    assert job.status == "finished"
    snap = job.snapshot()
    assert snap.total_steps == 6 and [r["step"] for r in snap.step_rows] == list(range(1, 7))
    assert [r["step"] for r in snap.epoch_rows] == [3, 6]
    assert steps == [2, 4, 5, 2, 4, 5]  # batches seen in the epoch at each optimizer step
    assert job.run.load_checkpoint()["scheduler"]["last_epoch"] == 6


def test_warmup_cosine_learning_rates(data_dir, tmp_path):
    lr = 2e-3
    job = run_job(make_config(data_dir, augmentation="none", lr=lr, warmup_fraction=0.3), tmp_path)
    assert job.status == "finished"
    rates = [r["lr"] for r in job.snapshot().step_rows]
    factor = cosine_with_warmup(10, 3)  # int(0.3 * 10) warm-up steps
    assert rates == pytest.approx([lr * factor(s) for s in range(10)], rel=1e-12)
    assert rates[0] < rates[1] < rates[2] < rates[3] == pytest.approx(lr)  # linear warm-up to the peak
    assert all(a > b for a, b in zip(rates[3:], rates[4:]))                # then cosine decay
    assert rates[-1] < 0.06 * lr
    assert [r["lr"] for r in job.run.read_metrics() if r["kind"] == "step"] == rates


def test_without_validation_images_the_latest_epoch_is_best(data_dir, tmp_path):
    cfg = make_config(data_dir, augmentation="none", epochs=3, early_stop_patience=1)
    cfg.data = DataConfig(source=str(data_dir), val_fraction=0.0, augmentation="none")
    job = run_job(cfg, tmp_path)
    assert job.status == "finished", job.message
    assert len(job.snapshot().epoch_rows) == 3  # no early stopping without validation
    _, meta = read_adapter(job.run.path / "best")
    assert meta.metrics["epoch"] == 3


def test_dataloader_workers_decode_in_other_processes_and_runs_repeat(data_dir, tmp_path):
    """The GPU default (workers) tried on CPU: random crops drawn in 2 worker processes are
    seeded from the loader's own generator, so two runs give the same metrics; auto = 0 on CPU."""
    cfg = make_config(data_dir, epochs=1, dataloader_workers=2)
    a, b = run_job(cfg, tmp_path, "a"), run_job(cfg, tmp_path, "b")
    assert a.status == b.status == "finished", (a.message, b.message)
    speed = json.loads(a.run.config_file.read_text())["speed"]
    assert speed["dataloader_workers"] == 2 and not speed["cache_frozen_prefix"]  # 'light': no cache
    assert any("2 data workers" in line for line in a.snapshot().log)
    assert key_metrics(a.run.read_metrics()) == key_metrics(b.run.read_metrics())
    auto = run_job(make_config(data_dir, epochs=1), tmp_path, "auto")
    assert json.loads(auto.run.config_file.read_text())["speed"]["dataloader_workers"] == 0


def test_the_loop_runs_without_a_job_through_a_recording_reporter(data_dir, tmp_path):
    """The loop knows only its Reporter: driven directly, it reports statuses, progress and every metrics
    row in order, writes the run folder, and stops (saving last/) when the reporter asks."""
    cfg = make_config(data_dir, epochs=2)
    reporter = RecordingReporter()
    run = RunFolder(tmp_path / "direct").create()
    Trainer(cfg, run, "cpu", reporter, workspace=str(tmp_path)).run()
    steps = [r for r in reporter.rows if r["kind"] == "step"]
    epochs = [r for r in reporter.rows if r["kind"] == "epoch"]
    assert [r["step"] for r in steps] == list(range(1, 11)) and [r["epoch"] for r in epochs] == [1, 2]
    assert reporter.statuses[0][0] == "running" and reporter.statuses[-1][0] == "finished"
    assert reporter.progress[-1][1:3] == (10, 10)
    assert (run.path / "best" / "adapter.safetensors").is_file() and len(run.read_metrics()) == 12

    stopping = RecordingReporter(stop_after_steps=3)
    run2 = RunFolder(tmp_path / "stopped").create()
    with pytest.raises(StopRequested):
        Trainer(cfg, run2, "cpu", stopping, workspace=str(tmp_path)).run()
    assert [r["step"] for r in stopping.rows if r["kind"] == "step"] == [1, 2, 3]
    assert (run2.path / "last" / "adapter.safetensors").is_file() and run2.load_checkpoint()["step"] == 3


def test_a_paused_job_gives_up_the_device_and_resume_waits_its_turn(data_dir, tmp_path):
    # #13.6: one DeviceQueue, two real jobs; A pauses at step 2, B (queued behind A) trains to the
    # end meanwhile; A's Resume then waits while another job holds the device
    queue = DeviceQueue()
    a = new_job(make_config(data_dir), tmp_path, "a", queue=queue)
    hook_steps(a, lambda j, row: j.pause() if row["step"] == 2 else None)
    a.start()
    b = new_job(make_config(data_dir, epochs=1), tmp_path, "b", queue=queue).start()
    wait_until(lambda: a.status == "paused", what="A paused")
    assert a.message == "paused — other trainings may run meanwhile; Resume waits for the device"
    assert b.wait(120) and b.status == "finished", b.message
    assert a.status == "paused" and [r["step"] for r in a.snapshot().step_rows] == [1, 2]
    # now C holds the device: A's Resume waits for it
    gate = threading.Event()
    c = new_job(make_config(data_dir, epochs=1), tmp_path, "c", queue=queue)
    hook_steps(c, lambda j, row: gate.wait(60) if row["step"] == 1 else None)
    c.start()
    wait_until(lambda: len(c.snapshot().step_rows) == 1, what="C training")
    a.unpause()
    wait_until(lambda: a.status == "queued", what="A waiting for the device")
    assert a.message == "resumed; waiting for the device (1 job(s) ahead)"
    wait_until(lambda: a.snapshot().queue_position == 1, what="A in line behind C")
    gate.set()
    assert c.wait(120) and c.status == "finished", c.message
    assert a.wait(120) and a.status == "finished", a.message
    assert [r["step"] for r in a.snapshot().step_rows] == list(range(1, 11))


def test_a_run_without_validation_images_says_nothing_was_measured(data_dir, tmp_path):
    """--val-fraction 0 is allowed (train on everything); the end said "finished: finished"."""
    cfg = make_config(data_dir, epochs=1)
    cfg.data.val_fraction = 0.0
    job = run_job(cfg, tmp_path, "no-val")
    assert job.status == "finished"
    assert job.snapshot().message.startswith("trained all its epochs; nothing was measured (no validation images")
