"""TorchrunJob: a real ``torchrun`` of 2 gloo processes on the CPU, followed like a TrainingJob.

No mocks: real torchrun subprocesses, a real timm model (resnet18, random weights, 32 px) on a
tiny colour dataset (18 train / 6 val images; global batch 2 x 4 -> 3 steps an epoch). Then the
app itself, launched with LORA_GUI_PROCESSES=2 and driven through gradio_client, trains with the
"use all N GPUs" box ticked.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import types
import urllib.request

import psutil
import pytest
import torch
from conftest import launched_app, offline_env, torchrun_rank, write_colour_folder

from lora_gui.config import RunConfig
from lora_gui.jobs.device_queue import DeviceQueue
from lora_gui.jobs.registry import get_job
from lora_gui.jobs.torchrun_job import (
    PROCESSES_ENV,
    PauseUnsupported,
    TorchrunJob,
    offered_processes,
)
from lora_gui.jobs.training_job import TrainingJob
from lora_gui.store.adapter_file import read_adapter

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_colour_folder(tmp_path_factory.mktemp("torchrun-data") / "colours", per_class=8, side=40)


def config(data, epochs: int = 2) -> RunConfig:
    return RunConfig.from_dict({
        "model": {"name": "resnet18", "weights": "random", "image_size": 32}, "lora": {"rank": 4, "alpha": 8.0},
        "data": {"source": str(data), "val_fraction": 0.25, "augmentation": "none"},
        "train": {"epochs": epochs, "batch_size": 4, "seed": 0, "device": "cpu"}})


def job_for(cfg, tmp_path, name: str, **kwargs) -> TorchrunJob:
    env = dict(offline_env(), PYTHONWARNINGS="ignore")
    return TorchrunJob(cfg, workspace=str(tmp_path), run_dir=str(tmp_path / name), processes=2, env=env, **kwargs)


def wait_until(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# --------------------------------------------------------------------------- #
# The engine
# --------------------------------------------------------------------------- #

def test_the_processes_offered_come_from_the_gpus_or_the_documented_override(monkeypatch, capsys):
    monkeypatch.setenv(PROCESSES_ENV, "2")
    assert offered_processes() == 2
    monkeypatch.setenv(PROCESSES_ENV, "two")
    assert offered_processes() == torch.cuda.device_count()
    assert "ignoring LORA_GUI_PROCESSES='two'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at least 2 processes"):
        TorchrunJob(RunConfig(), processes=1)


def test_the_follower_takes_complete_metric_lines_only(data_dir, tmp_path):
    job = job_for(config(data_dir), tmp_path, "half-written")  # never started: only its file reading
    job.run.path.mkdir()
    header = "kind,epoch,step,loss,lr,images_per_s,train_loss,train_acc,val_loss,val_acc,time\n"
    job.run.metrics_file.write_text(header + "step,1,1,1.2,0.001,50,,,,,100.0\nstep,1,2,1.1,0.0")
    job._follow()
    assert [r["step"] for r in job.snapshot().step_rows] == [1]  # the cut line waits
    with open(job.run.metrics_file, "a") as f:
        f.write("01,50,,,,,101.0\nepoch,1,2,,,,1.15,0.5,1.0,0.5,101.5\n")
    job._follow()
    snap = job.snapshot()
    assert [r["step"] for r in snap.step_rows] == [1, 2] and snap.step_rows[1]["lr"] == 0.001
    assert [r["val_acc"] for r in snap.epoch_rows] == [0.5] and job.events_since(0)[1] == 3


def test_a_two_process_run_finishes_and_is_followed_like_a_training_job(data_dir, tmp_path):
    t0 = time.time()
    job = job_for(config(data_dir), tmp_path, "ddp").start()
    assert get_job(job.id) is job  # the Train tab finds it like any job
    assert job.wait(120), job.snapshot().message
    snap = job.snapshot()
    print(f"\n2-process TorchrunJob: {time.time() - t0:.1f}s")
    assert snap.status == "finished" and snap.done, snap.message
    assert snap.total_steps == snap.step == 6 and snap.progress == 1.0
    assert [r["step"] for r in snap.step_rows] == list(range(1, 7))
    assert [r["epoch"] for r in snap.epoch_rows] == [1, 2] and snap.epoch_rows[-1]["val_acc"] is not None
    events, count = job.events_since(0)
    assert count == len(events) and {e["kind"] for e in events} == {"status", "step", "epoch"}
    assert any("[finished]" in line for line in snap.log)
    saved = json.loads(job.run.config_file.read_text())
    assert saved["distributed"]["world_size"] == 2 and saved["config"]["train"]["num_threads"] >= 1
    weights, meta = read_adapter(job.run.path / "last")
    assert weights and job.run.read_status()["status"] == "finished"


def test_stop_ends_all_processes_and_keeps_a_checkpoint_and_the_queue_is_shared(data_dir, tmp_path):
    queue = DeviceQueue()

    holder = types.SimpleNamespace(_stop=threading.Event())  # a one-process job on the CPU, for the test's time
    assert queue.acquire("cpu", holder)
    job = job_for(config(data_dir, epochs=60), tmp_path, "stopped", queue=queue).start()
    wait_until(lambda: job.snapshot().queue_position == 1, 10, "the torchrun job to queue")
    assert job.status == "queued" and job.proc is None
    queue.release("cpu", holder)
    wait_until(lambda: job.snapshot().step >= 3, 90, "training steps")
    assert job.status == "running"
    with pytest.raises(PauseUnsupported, match="not available"):
        job.pause()
    # a one-process job started now waits for the device instead of training alongside
    single = TrainingJob(config(data_dir), workspace=str(tmp_path), run_dir=str(tmp_path / "single"),
                         queue=queue).start()
    wait_until(lambda: single.snapshot().queue_position == 1, 10, "the one-process job to queue")
    single.stop()
    assert single.wait(10) and single.status == "stopped"

    asked = time.time()
    job.stop()
    assert job.status == "stopping"
    assert job.wait(60), "the stop did not end torchrun"
    took = time.time() - asked
    snap = job.snapshot()
    print(f"\nstopped {took:.1f}s after stop() at step {snap.step} of {snap.total_steps}: {snap.message}")
    assert snap.status == "stopped" and snap.step < snap.total_steps and took < 45
    assert job.proc.poll() is not None and not _processes_of(job)
    state = torch.load(job.run.checkpoint_file, weights_only=True)
    assert state["world_size"] == 2 and state["step"] == snap.step  # saved at the step all ranks stopped at
    weights, _ = read_adapter(job.run.path / "last")
    assert weights and job.run.read_status()["status"] == "stopped"
    assert queue.waiting("cpu") == 0  # the device is free again


def test_a_data_folder_that_disappears_fails_with_its_reason(data_dir, tmp_path):
    data = shutil.copytree(data_dir, tmp_path / "gone")
    job = job_for(config(data), tmp_path, "no-data")
    shutil.rmtree(data)
    job.start()
    assert job.wait(90)
    snap = job.snapshot()
    assert snap.status == "failed" and "does not exist" in snap.message, snap.message
    assert "\n" not in snap.message and "Traceback" not in snap.message
    assert job.failure_kind == "input" and snap.log  # torchrun's own output is shown


def _processes_of(job) -> list:
    """Live processes of this job's torchrun (the run folder is on their command line)."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        if str(job.run.path) in " ".join(p.info["cmdline"] or []) and p.pid != os.getpid():
            out.append(p)
    return out


def test_a_crashed_rank_fails_the_job_with_torchruns_summary(data_dir, tmp_path):
    job = job_for(config(data_dir, epochs=60), tmp_path, "crashed").start()
    wait_until(lambda: job.snapshot().step >= 3, 90, "training steps")
    torchrun_rank(job.proc.pid, "1").send_signal(signal.SIGKILL)
    assert job.wait(60), "a dead rank must end the job, not hang it"
    snap = job.snapshot()
    print(f"\ncrashed rank: {snap.message}")
    assert snap.status == "failed" and "rank 1" in snap.message and "SIGKILL" in snap.message, snap.message
    assert "\n" not in snap.message and job.run.read_status()["status"] == "failed"


# --------------------------------------------------------------------------- #
# The app: LORA_GUI_PROCESSES=2 offers the box; ticked, Start runs torchrun
# --------------------------------------------------------------------------- #

@pytest.fixture(scope="module")
def two_process_app(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("torchrun-app")
    # stop_wait: on SIGTERM the app stops its torchrun runs, which save first
    with launched_app(workspace, dict(offline_env(), **{PROCESSES_ENV: "2"}), stop_wait=20) as url:
        yield url, workspace


def test_the_app_trains_with_two_processes_when_the_box_is_ticked(two_process_app, data_dir):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from lora_gui.ui.fields import FIELD_NAMES
    url, workspace = two_process_app
    with urllib.request.urlopen(f"{url}/config", timeout=10) as r:
        boxes = [c["props"] for c in json.load(r)["components"] if c["props"].get("elem_id") == "lg-torchrun"]
    assert boxes and boxes[0]["visible"] is True and boxes[0]["label"].startswith("Use 2 processes"), boxes

    client = Client(url, analytics_enabled=False, verbose=False)
    client.predict(str(data_dir), 0.25, api_name="/load_path")
    values = {"model_name": "resnet18", "weights": "random", "weights_file": "", "image_size": 96, "rank": 4,
              "alpha": 8, "dropout": 0.0, "targets": "auto", "train_norm": False, "train_bias": False,
              "use_rslora": False, "epochs": 2, "batch_size": 4, "lr": 0.002, "seed": 0, "augmentation": "none",
              "val_fraction": 0.25}
    client.predict(*[values[n] for n in FIELD_NAMES], True, api_name="/start_training")
    deadline, progress = time.time() + 150, ""
    while time.time() < deadline:
        progress, _, _, _, _, log, *_ = client.predict(api_name="/training_status")  # loss, acc, note, lr
        if progress and any(f"data-status='{s}'" in progress for s in ("finished", "failed", "stopped")):
            break
        time.sleep(1)
    assert "data-status='finished'" in progress, progress
    assert "[finished]" in log
    with pytest.raises(AppError, match="pause is not available"):
        client.predict(api_name="/pause_training")
    runs = [p for p in workspace.iterdir() if (p / "config.json").is_file()]
    assert len(runs) == 1
    saved = json.loads((runs[0] / "config.json").read_text())
    assert saved["distributed"]["world_size"] == 2 and saved["config"]["model"]["name"] == "resnet18"
    assert (runs[0] / "torchrun.log").is_file() and (runs[0] / "last" / "adapter.safetensors").is_file()


def test_the_train_tab_turns_pause_off_for_a_torchrun_job(data_dir, tmp_path):
    from lora_gui.ui import torchrun_choice
    from lora_gui.ui.tabs.train_tab import buttons
    job = job_for(config(data_dir), tmp_path, "not-started")
    assert buttons("running")[1].interactive is True  # a one-process job pauses
    assert buttons("running", torchrun_choice.can_pause(job))[1].interactive is False


SUMMARY = """torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
lora_gui FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-01_22:09:06
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 30326)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 30326
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-01_22:09:06
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 30325)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
============================================================
"""


def test_the_killed_rank_is_named_even_when_torchrun_saw_its_peer_exit_first():
    """torchrun's 'root cause' is the first exit it observed: here rank 0, which only left because
    rank 1 was killed (the summary torchrun printed in such a run, shortened)."""
    from lora_gui.jobs.run_follower import torchrun_failure
    assert torchrun_failure(SUMMARY, 1) == (
        "process rank 1 of the run failed: Signal 9 (SIGKILL) received by PID 30326", "training")
    only_root = SUMMARY[:SUMMARY.index("Failures:")] + SUMMARY[SUMMARY.index("Root Cause"):]
    assert torchrun_failure(only_root, 1) == ("process rank 0 of the run failed: exit code 1", "training")
