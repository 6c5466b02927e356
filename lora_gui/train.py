"""Training jobs: a background thread per run, a FIFO queue per device, and a
thread-safe view of progress that the UI polls and the CLI prints.

The loop itself lives in ``training_loop``; this module owns the life cycle
(queued -> running <-> paused -> stopping -> finished | stopped | failed) and
turns every exception into a status with a one-line human message, so a
training never dies silently.
"""
from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from .config import RunConfig
from .runs import FINAL_STATUSES, RunFolder, new_run_id

STATUSES = ("queued", "running", "paused", "stopping", "finished", "stopped", "failed")


class TrainingFailed(RuntimeError):
    """Raised inside the loop with a message meant for the person training."""


class StopRequested(Exception):
    pass


class DeviceQueue:
    """One training at a time per device; the others wait in arrival order."""

    def __init__(self):
        self._cond = threading.Condition()
        self._lines: dict[str, list["TrainingJob"]] = {}

    def acquire(self, device: str, job: "TrainingJob") -> bool:
        with self._cond:
            line = self._lines.setdefault(device, [])
            line.append(job)
            while line[0] is not job:
                if job._stop.is_set():
                    line.remove(job)
                    self._cond.notify_all()
                    return False
                self._cond.wait(0.2)
            return True

    def release(self, device: str, job: "TrainingJob") -> None:
        with self._cond:
            line = self._lines.get(device, [])
            if job in line:
                line.remove(job)
            self._cond.notify_all()

    def position(self, job: "TrainingJob") -> int | None:
        """0 while the job holds the device, N when N jobs are ahead of it."""
        with self._cond:
            for line in self._lines.values():
                if job in line:
                    return line.index(job)
        return None


DEVICE_QUEUE = DeviceQueue()
_JOBS: dict[str, "TrainingJob"] = {}
_JOBS_LOCK = threading.Lock()


def get_job(job_id: str) -> "TrainingJob | None":
    with _JOBS_LOCK:
        return _JOBS.get(job_id)


def active_jobs() -> list["TrainingJob"]:
    with _JOBS_LOCK:
        return [j for j in _JOBS.values() if j.status not in FINAL_STATUSES]


@dataclass
class JobSnapshot:
    id: str
    run_dir: str
    status: str
    message: str
    epoch: int
    epochs: int
    step: int
    total_steps: int
    eta_s: float | None
    queue_position: int | None
    step_rows: list[dict] = field(default_factory=list)
    epoch_rows: list[dict] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    @property
    def progress(self) -> float:
        return self.step / self.total_steps if self.total_steps else 0.0

    @property
    def done(self) -> bool:
        return self.status in FINAL_STATUSES


class TrainingJob:
    """A run in a background thread. ``start()`` returns at once; poll ``snapshot()``.

    ``dataset`` may be a ``data.Dataset`` already loaded (the UI has one); the
    CLI passes none and the job loads ``config.data.source`` itself.
    ``interactive`` leaves a CPU core free so a UI in the same process stays responsive.
    """

    def __init__(self, config: RunConfig, workspace: str = "runs", run_dir: str | None = None, *,
                 dataset=None, interactive: bool = False, resume: bool = False, queue: DeviceQueue = DEVICE_QUEUE):
        self.config = config
        self.workspace = Path(workspace)
        self.run = RunFolder(run_dir or self.workspace / new_run_id()).create()
        self.id = self.run.path.name
        self.dataset = dataset
        self.interactive = interactive
        self.resume = resume
        self.queue = queue
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._unpaused = threading.Event()
        self._unpaused.set()
        self._status = "queued"
        self._message = "waiting to start"
        self._epoch = self._step = self._total = 0
        self._eta: float | None = None
        self._step_rows: list[dict] = []
        self._epoch_rows: list[dict] = []
        self._events: list[dict] = []
        self._thread: threading.Thread | None = None
        self.device = "cpu"
        self.failure_kind = ""  # 'input' (bad data/model/config) or 'training'
        with _JOBS_LOCK:
            _JOBS[self.id] = self

    @classmethod
    def resume_run(cls, run_dir: str, **kwargs) -> "TrainingJob":
        """A job that continues the run in ``run_dir`` from its last checkpoint."""
        run = RunFolder(run_dir)
        config = RunConfig.from_dict(run.read_config()["config"], where=f"{run.config_file}")
        return cls(config, workspace=str(run.path.parent), run_dir=str(run.path), resume=True, **kwargs)

    # control -------------------------------------------------------------------
    def start(self) -> "TrainingJob":
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name=f"train-{self.id}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._unpaused.set()
        with self._lock:
            if self._status in ("running", "paused"):
                self._set("stopping", "stopping after the current batch")

    def pause(self) -> None:
        with self._lock:
            if self._status == "running":
                self._unpaused.clear()
                self._set("paused", "paused; press Resume to continue")

    def unpause(self) -> None:
        with self._lock:
            if self._status == "paused":
                self._set("running", "training")
        self._unpaused.set()

    def wait(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.status in FINAL_STATUSES

    # state for the loop and the viewers -----------------------------------------
    @property
    def status(self) -> str:
        with self._lock:
            return self._status

    @property
    def message(self) -> str:
        with self._lock:
            return self._message

    def _set(self, status: str, message: str) -> None:  # caller holds the lock
        self._status, self._message = status, message
        self._events.append({"kind": "status", "status": status, "message": message, "time": time.time()})

    def set_status(self, status: str, message: str) -> None:
        with self._lock:
            self._set(status, message)
        self.run.update_status(status=status, message=message)
        self.run.log(f"[{status}] {message}")

    def set_progress(self, epoch: int, step: int, total: int, eta: float | None) -> None:
        with self._lock:
            self._epoch, self._step, self._total, self._eta = epoch, step, total, eta

    def record(self, row: dict) -> None:
        """A metrics row from the loop (kind 'step' or 'epoch'); kept in order for viewers."""
        with self._lock:
            (self._step_rows if row["kind"] == "step" else self._epoch_rows).append(row)
            self._events.append(row)

    def events_since(self, index: int) -> tuple[list[dict], int]:
        with self._lock:
            return list(self._events[index:]), len(self._events)

    def check_controls(self) -> None:
        """Called by the loop between batches: honours pause and stop."""
        if not self._unpaused.is_set():
            self._unpaused.wait()
        if self._stop.is_set():
            raise StopRequested

    def snapshot(self, last_steps: int = 2000) -> JobSnapshot:
        with self._lock:
            return JobSnapshot(self.id, str(self.run.path), self._status, self._message, self._epoch,
                               self.config.train.epochs, self._step, self._total, self._eta,
                               self.queue.position(self) if self._status == "queued" else None,
                               list(self._step_rows[-last_steps:]), list(self._epoch_rows),
                               self.run.log_tail(12))

    # the thread ------------------------------------------------------------------
    def _main(self) -> None:
        from .training_loop import Trainer, device_for
        started = time.time()
        try:
            self.device = device_for(self.config.train.device)
        except TrainingFailed as exc:
            self.failure_kind = "input"
            self.set_status("failed", str(exc))
            return
        self.run.update_status(started=time.strftime("%Y-%m-%d %H:%M:%S"))
        self.set_status("queued", "waiting for the device" if self.queue.position(self) else "starting")
        if not self.queue.acquire(self.device, self):
            self.set_status("stopped", "stopped before it started")
            return
        try:
            self.set_status("running", "preparing data and model")
            Trainer(self).run()
        except StopRequested:
            self.set_status("stopped", "stopped by request; the adapter so far is saved in last/")
        except TrainingFailed as exc:
            self.run.log(traceback.format_exc())
            self.failure_kind = "training"
            self.set_status("failed", str(exc))
        except user_errors() as exc:
            self.run.log(traceback.format_exc())
            self.failure_kind = "input"
            self.set_status("failed", str(exc))
        except Exception as exc:  # never a silent death: one line for people, the traceback in the log
            self.run.log(traceback.format_exc())
            self.failure_kind = "training"
            self.set_status("failed", _human_message(exc))
        finally:
            self.queue.release(self.device, self)
            self.run.update_status(duration_s=round(time.time() - started, 1))


def user_errors() -> tuple[type, ...]:
    """Errors caused by what the user gave (shown as they are; CLI exit code 2)."""
    from .adapters import AdapterError
    from .config import ConfigError
    from .data import DataError
    from .lora import LoraError
    from .models import ModelError
    return (ConfigError, DataError, ModelError, LoraError, AdapterError)


def preflight(config: RunConfig, workspace: str):
    """Check data and model before a job is queued, so bad input fails fast with
    its own message instead of as a failed run. Returns the loaded dataset."""
    from .data import load_dataset
    from .models import check_model_available
    check_model_available(config.model)
    dataset = load_dataset(config.data.source, workspace)
    dataset.report.raise_if_blocking()
    return dataset


def _human_message(exc: BaseException) -> str:
    import torch
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in str(exc).lower():
        return ("ran out of memory; use a smaller batch size or a lower resolution "
                "(see train.log for details)")
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"training failed: {type(exc).__name__}: {first} (see train.log for details)"
