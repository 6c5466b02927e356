"""A local multi-process run (``torchrun``, DDP) as a job the Train tab follows like a ``TrainingJob``.

``torchrun_launch.launch_torchrun`` starts ``torchrun --standalone --nproc_per_node=N -m lora_gui train``;
this job never trains itself: a thread waits on torchrun and re-reads what rank 0 writes to the run
folder (status.json, metrics.csv, the log), so ``snapshot()`` / ``events_since()`` look the same.

* Stop sends SIGINT to torchrun, which passes it on: all processes stop at the same step and save
  the adapter and a checkpoint, as Ctrl-C in a terminal. Past ``STOP_GRACE_S`` the process group
  gets SIGTERM, then SIGKILL; the last checkpoint stays either way.
* Pause is not available: the processes run in lock-step, with a timeout on every collective, so
  none can be held mid-run (``pause()`` raises ``PauseUnsupported`` saying so).
* Device queue: the job waits in ``train.DEVICE_QUEUE`` for every device its processes use (GPUs:
  'cuda' and each 'cuda:k'), so it never trains alongside a one-process job of this app, and a
  one-process job started meanwhile waits for it.
* ``offered_processes()``: one per GPU, or ``$LORA_GUI_PROCESSES`` (e.g. 2: gloo on a CPU machine).
"""
from __future__ import annotations

import atexit
import os
import signal
import threading
import time
from pathlib import Path

from ..config import RunConfig
from ..errors import TrainingFailed
from ..store.run_folder import FINAL_STATUSES, RunFolder, new_run_id
from ..training.runtime import device_for
from .device_queue import DEVICE_QUEUE, DeviceQueue
from .job_state import JobSnapshot, JobState, _one_line
from .processes import PROCESSES_ENV, local_gpu_count, offered_processes
from .registry import active_jobs, register_job
from .run_follower import (
    SECOND_HAND,
    MetricsFollower,
    file_tail,
    planned_steps,
    torchrun_failure,
)
from .torchrun_launch import launch_torchrun

POLL_S = 0.5
STOP_GRACE_S = 45.0  # torchrun gives its processes 30 s after passing the stop on, then kills them
KILL_GRACE_S = 10.0


class PauseUnsupported(RuntimeError):
    """pause() of a torchrun job: the message says why."""


class TorchrunJob(JobState):
    """``torchrun`` with ``processes`` processes training ``config`` into a new run folder."""

    can_pause = False

    def __init__(self, config: RunConfig, workspace: str = "runs", processes: int | None = None,
                 run_dir: str | None = None, *, queue: DeviceQueue = DEVICE_QUEUE, env: dict | None = None):
        self.processes = int(processes or offered_processes())
        if self.processes < 2:
            raise ValueError(f"a torchrun run needs at least 2 processes; this machine offers {self.processes} "
                             f"(one per GPU, or set {PROCESSES_ENV})")
        try:
            device = device_for(config.train.device)
        except TrainingFailed as exc:
            raise ValueError(str(exc)) from None
        if device.startswith("cuda") and self.processes > local_gpu_count():
            raise ValueError(f"{self.processes} processes on CUDA need {self.processes} GPUs; this machine has "
                             f"{local_gpu_count()}. Set device 'cpu' or fewer processes")
        # one process per GPU; on the CPU the processes share the cores instead of each taking all
        self.devices = ["cuda", *(f"cuda:{k}" for k in range(self.processes))] if device.startswith("cuda") \
            else [device]
        if device == "cpu" and config.train.num_threads == 0:
            d = config.to_dict()
            d["train"]["num_threads"] = max(1, (os.cpu_count() or 2) // self.processes)
            config = RunConfig.from_dict(d)
        self.config = config
        self.workspace = Path(workspace)
        self.run = RunFolder(run_dir or self.workspace / new_run_id())
        if self.run.exists():
            raise FileExistsError(f"{self.run.path} already holds a run; resume it, or train into a new folder")
        self.id = self.run.path.name
        self.queue, self.env = queue, env
        self.failure_kind = ""
        self.proc = None
        self._init_state()  # status, message and events; rows are added as rank 0 writes them
        self._stop = threading.Event()  # DeviceQueue.acquire gives up its place when this is set
        self._stop_at = 0.0
        self._wake = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._epoch = self._step = self._total = 0
        self._metrics = MetricsFollower(self.run.metrics_file)
        self._eta: float | None = None
        self._step_rows: list[dict] = []
        self._epoch_rows: list[dict] = []
        self._worker_status: dict = {}  # rank 0's status.json as last read
        register_job(self)

    # control -------------------------------------------------------------------
    def start(self) -> "TorchrunJob":
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name=f"torchrun-{self.id}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            if self._status in FINAL_STATUSES or self._stop.is_set():
                return
            self._stop.set()
            self._stop_at = time.time()
            if self._status == "running":
                self._set("stopping", f"stopping all {self.processes} processes at the same step; "
                                      "the adapter so far is saved")
            if self.proc is not None and self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGINT)  # torchrun passes it on to every process
        self._wake.set()

    def pause(self) -> None:
        raise PauseUnsupported("pause is not available for a multi-process (torchrun) run: its processes run "
                               "in lock-step and cannot be held mid-run. Stop keeps the adapter so far and a "
                               "checkpoint; resuming the run continues from there")

    unpause = pause

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for torchrun to end and the final status to be set; True once the job is over."""
        return self._done.wait(timeout) if self._thread is not None else self.status in FINAL_STATUSES

    # what viewers read -----------------------------------------------------------
    def snapshot(self, last_steps: int = 2000) -> JobSnapshot:
        log = self.run.log_tail(12)  # file I/O outside the lock
        with self._lock:
            status = self._status
            snap = JobSnapshot(self.id, str(self.run.path), status, self._message, self._epoch,
                               self.config.train.epochs, self._step, self._total, self._eta, None,
                               list(self._step_rows[-last_steps:]) if last_steps > 0 else [],
                               list(self._epoch_rows), log)
        if status == "failed" or not log:  # torchrun's own output says what the run's log could not
            snap.log = log + file_tail(self.run.path / "torchrun.log", 12)
        if status == "queued":
            snap.queue_position = self.queue.position(self)
        return snap

    def _set(self, status: str, message: str) -> None:  # caller holds the lock
        # the follower re-reads rank 0's status every poll: record only what changed
        message = _one_line(message)
        if (status, message) != (self._status, self._message):
            super()._set(status, message)

    # the thread ------------------------------------------------------------------
    def _main(self) -> None:
        held: list[str] = []
        try:
            for device in self.devices:  # always in this order: two torchrun jobs cannot deadlock
                if not self.queue.acquire(device, self):
                    break
                held.append(device)
            with self._lock:
                if len(held) < len(self.devices) or self._stop.is_set():
                    self._set("stopped", "stopped before it started")
                    return
                self.run.path.parent.mkdir(parents=True, exist_ok=True)
                self.proc = launch_torchrun(self.config, self.run.path, self.processes, env=self.env)
                self._set("running", f"starting {self.processes} processes (torchrun)")
            while self.proc.poll() is None:
                self._follow()
                self._escalate_stop()
                self._wake.wait(POLL_S)
                self._wake.clear()
            self._follow()
            self._finish(self.proc.returncode)
        except Exception as exc:  # never a silent death: the job says what went wrong
            self.failure_kind = "input" if isinstance(exc, (OSError, ValueError)) else "training"
            with self._lock:
                self._set("failed", f"could not run torchrun: {type(exc).__name__}: {exc}")
        finally:
            if self.proc is not None and self.proc.poll() is None:  # this thread failed, not torchrun
                _signal_group(self.proc, signal.SIGTERM)
            for device in held:
                self.queue.release(device, self)
            self._done.set()

    def _escalate_stop(self) -> None:
        if not self._stop.is_set():
            return
        waited = time.time() - self._stop_at
        if waited > STOP_GRACE_S + KILL_GRACE_S:
            _signal_group(self.proc, signal.SIGKILL)
        elif waited > STOP_GRACE_S:
            _signal_group(self.proc, signal.SIGTERM)

    def _follow(self) -> None:
        """Take in what rank 0 has written since the last look."""
        rows = self._metrics.new_rows()
        worker = self.run.read_status()
        with self._lock:
            if not self._total:
                self._total = planned_steps(self.run)
            for row in rows:
                (self._step_rows if row["kind"] == "step" else self._epoch_rows).append(row)
                self._events.append(row)
            if self._step_rows:
                last = self._step_rows[-1]
                self._epoch, self._step = int(last["epoch"] or 0), int(last["step"] or 0)
                first = self._step_rows[0]
                if self._total and last["step"] > first["step"]:
                    per_step = (last["time"] - first["time"]) / (last["step"] - first["step"])
                    self._eta = max(0.0, per_step * (self._total - self._step))
            self._worker_status = worker
            if self._status == "running" and worker.get("message") and worker.get("status") not in FINAL_STATUSES:
                self._set("running", worker["message"])

    def _finish(self, returncode: int) -> None:
        worker = self._worker_status
        said, message = worker.get("status"), worker.get("message") or ""
        kept = self.run.checkpoint_file.is_file()
        if said == "finished":  # rank 0 saved the final adapter, whatever torchrun's exit code
            status = "finished"
        elif self._stop.is_set():
            status = "stopped"
            if said != "stopped":
                message = ("stopped by request; the last checkpoint is kept, resume the run to continue" if kept
                           else "stopped by request before the first checkpoint")
        else:
            status, self.failure_kind = "failed", "training"
            if said != "failed" or message.startswith(SECOND_HAND):
                message = self._failure_message(returncode, kept)
        with self._lock:
            if status == "finished":
                self._epoch, self._eta = self.config.train.epochs, 0.0
            self._set(status, message)
        if said != status and self.run.path.is_dir():  # the Runs tab reads the file, not this job
            try:
                self.run.update_status(status=status, message=_one_line(message))
                self.run.log(f"[{status}] {_one_line(message)}")
            except OSError:
                pass

    def _failure_message(self, returncode: int, kept: bool) -> str:
        try:
            text = (self.run.path / "torchrun.log").read_text(errors="replace")
        except OSError:
            text = ""
        cause, self.failure_kind = torchrun_failure(text, returncode)
        return (f"{cause} (see torchrun.log in {self.run.path})"
                + ("; the last checkpoint is kept, resume the run to continue" if kept else ""))


def _signal_group(proc, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # launch_torchrun starts torchrun in its own session: the group is the run
    except (ProcessLookupError, PermissionError):
        pass


@atexit.register
def _stop_all_at_exit() -> None:
    """The app is closing: its torchrun runs stop and save rather than train on unseen."""
    for job in active_jobs():
        if isinstance(job, TorchrunJob):
            job.stop()
