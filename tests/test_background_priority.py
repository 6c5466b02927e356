"""The app's training thread, and the helper threads torch starts for it, run at a lower priority
than the web server's threads (jobs/background_priority.py); the CLI's and other threads do not."""
from __future__ import annotations

import os
import sys
import threading

import pytest
import torch

from lora_gui.jobs import background_priority

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")


def _nice(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


def _threads() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


def test_a_lowered_thread_and_the_torch_helpers_it_starts_run_below_the_rest(monkeypatch):
    monkeypatch.delenv(background_priority.SWITCH, raising=False)
    main_before = _nice(threading.get_native_id())
    seen: dict = {}

    def train_like():
        seen["tid"] = threading.get_native_id()
        seen["returned"] = background_priority.lower_this_thread()
        before = _threads()
        torch.set_num_threads(2)
        a = torch.randn(512, 512)
        for _ in range(20):   # parallel work: libgomp starts this thread's helper team now
            a = torch.tanh(a @ a)
        seen["helpers"] = {t: _nice(t) for t in _threads() - before}

    worker = threading.Thread(target=train_like)
    worker.start()
    worker.join()
    assert seen["returned"] == min(19, main_before + background_priority.DEFAULT_NICE)
    assert _nice(threading.get_native_id()) == main_before          # the caller's own thread only
    if torch.backends.openmp.is_available() and (os.cpu_count() or 1) > 1:
        assert seen["helpers"], "no OpenMP helper thread started: nothing was checked"
    assert all(n == seen["returned"] for n in seen["helpers"].values()), seen["helpers"]


def test_zero_turns_it_off_and_a_bad_value_falls_back(monkeypatch):
    monkeypatch.setenv(background_priority.SWITCH, "0")
    assert background_priority.lower_this_thread() is None
    monkeypatch.setenv(background_priority.SWITCH, "lots")
    assert background_priority.nice_increment() == background_priority.DEFAULT_NICE
    monkeypatch.setenv(background_priority.SWITCH, "40")
    assert background_priority.nice_increment() == 19


def test_only_the_apps_jobs_are_lowered(tmp_path):
    """An interactive (app) job logs its priority; a CLI job keeps the normal one."""
    from conftest import write_colour_folder

    from lora_gui.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from lora_gui.jobs.device_queue import DeviceQueue
    from lora_gui.jobs.training_job import TrainingJob
    folder = write_colour_folder(tmp_path / "data", per_class=4)
    cfg = RunConfig(model=ModelConfig(name="resnet18", weights="random", image_size=32),
                    data=DataConfig(source=str(folder), val_fraction=0.25),
                    train=TrainConfig(epochs=1, batch_size=4, num_threads=1))
    app = TrainingJob(cfg, workspace=str(tmp_path / "ws"), interactive=True, queue=DeviceQueue()).start()
    cli = TrainingJob(cfg, workspace=str(tmp_path / "ws"), queue=DeviceQueue()).start()
    assert app.wait(300) and cli.wait(300)
    assert app.status == cli.status == "finished", (app.message, cli.message)
    assert "background priority: nice" in (app.run.path / "train.log").read_text()
    assert "background priority" not in (cli.run.path / "train.log").read_text()
