"""One writer per run folder: a run another process is training is refused, never shared."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lora_gui.jobs.device_queue import DeviceQueue
from lora_gui.jobs.training_job import TrainingJob
from lora_gui.store.run_folder import RunBusy, RunFolder

ROOT = Path(__file__).resolve().parents[1]
HOLD = ("import sys, time\n"
        "from lora_gui.store.run_folder import RunFolder\n"
        "handle = RunFolder(sys.argv[1]).lock()\n"
        "print('holding', flush=True)\n"
        "time.sleep(120)\n")


@pytest.fixture
def stopped_run(tmp_path, make_image_folder):
    """A real run that was stopped after its first checkpoint (status file then set to 'running',
    as a process killed mid-training leaves it)."""
    from conftest import write_colour_folder
    from test_train import make_config, run_job  # the engine tests' tiny resnet18 run
    data = write_colour_folder(tmp_path / "data")
    job = run_job(make_config(data, epochs=1), tmp_path, "run")
    job.run.update_status(status="running", message="training on cpu")
    return job.run.path


def _holder(run_dir):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_a_run_held_by_another_process_is_refused_everywhere(stopped_run):
    from lora_gui.ui.tabs.runs_tab import runs_with_status
    proc = _holder(stopped_run)
    try:
        with pytest.raises(RunBusy, match=rf"being trained by another process \(pid {proc.pid} on "):
            TrainingJob.resume_run(str(stopped_run), queue=DeviceQueue())
        cli = subprocess.run([sys.executable, "-m", "lora_gui", "train", "--resume", str(stopped_run)], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
        assert cli.returncode == 2 and "being trained by another process" in cli.stderr, cli.stderr[-2000:]
        assert RunFolder(stopped_run).in_use()
        # the app's Runs tab does not offer it as 'interrupted' (which it would resume)
        row = next(r for r in runs_with_status(stopped_run.parent) if r["path"] == str(stopped_run))
        assert row["status"] == "running elsewhere"
        assert RunFolder(stopped_run).read_status()["status"] == "running"  # nothing was written
    finally:
        proc.send_signal(signal.SIGKILL)  # the hardest death: the kernel still drops the lock
        proc.wait(10)
    deadline = time.time() + 10
    while RunFolder(stopped_run).in_use() and time.time() < deadline:
        time.sleep(0.1)
    row = next(r for r in runs_with_status(stopped_run.parent) if r["path"] == str(stopped_run))
    assert row["status"] == "interrupted"
    resumed = TrainingJob.resume_run(str(stopped_run), queue=DeviceQueue()).start()
    assert resumed.wait(120) and resumed.status == "finished", resumed.message
    assert not RunFolder(stopped_run).in_use()  # let go when the job ends


def test_two_jobs_in_one_process_cannot_share_a_run(tmp_path):
    run = RunFolder(tmp_path / "r")
    first = run.lock()
    try:
        with pytest.raises(RunBusy):
            RunFolder(tmp_path / "r").lock()
    finally:
        RunFolder.unlock(first)
    RunFolder.unlock(RunFolder(tmp_path / "r").lock())
