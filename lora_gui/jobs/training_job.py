"""A training run in a background thread: life cycle, controls and the reporter the loop talks to.

Statuses: queued -> running <-> paused -> stopping -> finished | stopped | failed.
Every exception becomes a status with a one-line human message, so a training
never dies silently; the traceback goes to the run's train.log.
"""
from __future__ import annotations

import errno
import threading
import time
import traceback
from pathlib import Path

from ..backbones.build import check_model_available
from ..config import RunConfig
from ..data.sources import load_dataset
from ..errors import StopRequested, TrainingFailed, user_errors
from ..inference.adapter_cache import ADAPTERS
from ..store.run_folder import FINAL_STATUSES, RunFolder, new_run_id
from ..training import distributed
from ..training.loop import Trainer
from ..training.runtime import device_for
from ..training.yield_gate import PREDICTIONS
from . import background_priority
from .device_queue import DEVICE_QUEUE, DeviceQueue
from .job_state import JobSnapshot, JobState, _one_line
from .registry import register_job

# Every model the process predicts with (the app's shared adapter cache) holds the yield gate while it
# runs, so a training job of this process steps aside for it (training/yield_gate.py says why). Wired
# here, where trainings and predictions meet, not by the page: the page is laid out without torch.
if PREDICTIONS.watch not in ADAPTERS.watchers:
    ADAPTERS.watchers.append(PREDICTIONS.watch)

PAUSED = "paused — other trainings may run meanwhile; Resume waits for the device"


class TrainingJob(JobState):
    """A run in a background thread. ``start()`` returns at once; poll ``snapshot()``.

    ``dataset`` may be a ``data.Dataset`` already loaded (the UI has one); the
    CLI passes none and the job loads ``config.data.source`` itself.
    ``interactive`` (the app) makes the training step aside while a prediction in the same
    process runs (``training.yield_gate``), so predictions stay quick on every core, and runs
    it at a lower CPU priority than the page (``background_priority``).
    """

    trainer_factory = Trainer   # a subclass may train another way (jobs.retrain_job: from an adapter)

    def __init__(self, config: RunConfig, workspace: str = "runs", run_dir: str | None = None, *,
                 dataset=None, interactive: bool = False, resume: bool = False, queue: DeviceQueue = DEVICE_QUEUE):
        self.config = config
        self.workspace = Path(workspace)
        # [ddp] under torchrun only rank 0 writes the folder (and only it may refuse an existing one:
        # the others would race with its config.json)
        run = distributed.run_folder(run_dir or self.workspace / new_run_id())
        if not resume and distributed.context().is_main and run.exists():
            raise FileExistsError(f"{run.path} already holds a run; resume it, or train into a new folder")
        self.run = run.create()
        self._run_lock = self.run.lock()  # RunBusy here, before anything is written, if in use
        self.id = self.run.path.name
        self.dataset = dataset
        self.interactive = interactive
        self.resume = resume
        self.queue = queue
        self._init_state()
        self._stop = threading.Event()
        self._unpaused = threading.Event()
        self._unpaused.set()
        self._epoch = self._step = self._total = 0
        self._eta: float | None = None
        self._step_rows: list[dict] = []
        self._epoch_rows: list[dict] = []
        self._thread: threading.Thread | None = None
        self._done = threading.Event()  # set as the thread's last act (see wait)
        self._paused_s = 0.0  # time spent paused, left out of the ETA
        self._earlier_s = 0.0  # training time of the sessions before a resume
        self.device = "cpu"
        self.failure_kind = ""  # 'input' (bad data/model/config) or 'training'
        register_job(self)

    @classmethod
    def resume_run(cls, run_dir: str, **kwargs) -> "TrainingJob":
        """A job that continues the run in ``run_dir`` from its last checkpoint."""
        run = RunFolder(run_dir)
        # every file a resume reads is checked here, before the run is locked or queued: a damaged
        # run is refused at once (DamagedRun) instead of failing (or worse) inside the job
        config = run.record().config
        run.split()
        run.read_metrics(strict=True)
        run.load_checkpoint()
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
            changed = self._status in ("running", "paused")
            if changed:
                self._set("stopping", "stopping after the current batch")
        if changed:
            self._write_status("stopping", "stopping after the current batch")

    def pause(self) -> None:
        with self._lock:
            changed = self._status == "running"
            if changed:
                self._unpaused.clear()
                self._set("paused", PAUSED)
        if changed:
            self._write_status("paused", PAUSED)

    def unpause(self) -> None:
        with self._lock:
            changed = self._status == "paused"
            if changed:
                self._set("running", "training")
        self._unpaused.set()
        if changed:
            self._write_status("running", "training")

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end (or ``timeout``); True once the job is over.

        True means the thread has finished too, so everything it writes to the
        run folder (status.json, train.log) is on disk."""
        if self._thread is not None:
            # an Event, not Thread.join: a join interrupted by Ctrl-C leaves the thread looking finished
            # to every later join (CPython), and the CLI would exit mid-stop, before the checkpoint
            done = self._done.wait(timeout)
            if done:
                # setting the event is the thread's last act; let it end, so no native code of
                # it (a process group's, a BLAS pool's) still runs when the interpreter exits
                self._thread.join(5)
            return done
        return self.status in FINAL_STATUSES

    def _write_status(self, status: str, message: str) -> None:
        try:
            self.run.update_status(status=status, message=message)
        except OSError:
            pass  # the in-memory status is what viewers poll; the file catches up later

    # the loop's reporter (training.reporter.Reporter) --------------------------------
    def report_status(self, status: str, message: str) -> None:
        message = _one_line(message)
        with self._lock:
            if status == "running" and self._status in ("paused", "stopping"):
                # the loop reporting progress must not undo a pause or stop asked for meanwhile
                status = self._status
                message = self._message
            self._set(status, message)
        try:
            self.run.update_status(status=status, message=message)
            self.run.log(f"[{status}] {message}")
        except OSError:  # a full disk or a removed folder: viewers still see the status; the
            pass         # loop's own writes (metrics, checkpoint) fail next and say why

    def report_progress(self, epoch: int, step: int, total: int, eta: float | None) -> None:
        with self._lock:
            self._epoch, self._step, self._total, self._eta = epoch, step, total, eta

    def report_metrics(self, row: dict) -> None:
        """A metrics row from the loop (kind 'step' or 'epoch'); kept in order for viewers."""
        with self._lock:
            (self._step_rows if row["kind"] == "step" else self._epoch_rows).append(row)
            self._events.append(row)

    def check_controls(self) -> None:
        """Called by the loop between batches: honours pause and stop."""
        if not self._unpaused.is_set():
            t0 = time.time()
            # a paused job gives up its place on the device, so it never holds the queue for as
            # long as someone forgets it; Resume then waits its turn like a new job
            self.queue.release(self.device, self)
            self._unpaused.wait()
            try:
                if not self._stop.is_set():
                    self._wait_for_device_again()
            finally:
                with self._lock:
                    self._paused_s += time.time() - t0
        if self._stop.is_set():
            raise StopRequested

    def _wait_for_device_again(self) -> None:
        ahead = self.queue.waiting(self.device)
        if ahead:
            self.report_status("queued", f"resumed; waiting for the device ({ahead} job(s) ahead)")
        if not self.queue.acquire(self.device, self):
            raise StopRequested
        if ahead:
            with self._lock:
                self._set("running", "training")
            self._write_status("running", "training")

    @property
    def paused_seconds(self) -> float:
        with self._lock:
            return self._paused_s

    def snapshot(self, last_steps: int = 2000) -> JobSnapshot:
        log = self.run.log_tail(12)  # file I/O outside the lock
        with self._lock:
            queued = self._status == "queued"
            snap = JobSnapshot(self.id, str(self.run.path), self._status, self._message, self._epoch,
                               self.config.train.epochs, self._step, self._total, self._eta, None,
                               list(self._step_rows[-last_steps:]) if last_steps > 0 else [],
                               list(self._epoch_rows), log)
        if queued:
            snap.queue_position = self.queue.position(self)
        return snap

    # the thread ------------------------------------------------------------------
    def _main(self) -> None:
        started = time.time()
        acquired = False
        # first, before torch starts this thread's helper threads (they inherit the priority)
        nice = background_priority.lower_this_thread() if self.interactive else None
        try:
            if nice is not None:
                self.run.log(f"background priority: nice {nice} (the page and predictions go first)")
            try:
                self.device = distributed.local_device(device_for(self.config.train.device))
            except TrainingFailed as exc:
                self.failure_kind = "input"
                self.report_status("failed", str(exc))
                return
            now = time.strftime("%Y-%m-%d %H:%M:%S")
            previous = self.run.read_status()
            self._earlier_s = float(previous.get("duration_s") or 0.0) if self.resume else 0.0
            # a resumed run keeps when it first started (runs are listed by it) and adds up its time
            self.run.update_status(**({"resumed": now} if self.resume and previous.get("started")
                                      else {"started": now}))
            ahead = self.queue.waiting(self.device)
            self.report_status("queued", f"waiting for the device ({ahead} job(s) ahead)" if ahead else "starting")
            if not self.queue.acquire(self.device, self):
                self.report_status("stopped", "stopped before it started")
                return
            acquired = True
            self.report_status("running", "preparing data and model")
            self.trainer_factory(self.config, self.run, self.device, reporter=self, dataset=self.dataset,
                    workspace=self.workspace, resume=self.resume, interactive=self.interactive).run()
        except StopRequested:
            self.report_status("stopped", "stopped by request; the adapter so far is saved in last/")
        except TrainingFailed as exc:
            self._fail("training", str(exc))
        except user_errors() as exc:
            self._fail("input", str(exc))
        except BaseException as exc:  # never a silent death: one line for people, the traceback in the log
            self._fail("training", _human_message(exc))
        finally:
            # each clean-up step on its own: one that fails (a full disk, a damaged folder) must not
            # skip the others — above all the unlock and the done event, without which the run
            # stays locked and a waiting CLI hangs, deaf to Ctrl-C
            try:
                if acquired:
                    try:   # first: the next job in the queue must get the device whatever else fails
                        self.queue.release(self.device, self)
                    except Exception as exc:
                        self._log_cleanup("releasing the device queue", exc)
                if self.device.startswith("cuda"):
                    _empty_cuda_cache()
                try:   # time spent training: pauses left out, like the ETA
                    self.run.update_status(duration_s=round(self._earlier_s + time.time() - started
                                                            - self.paused_seconds, 1))
                except Exception as exc:
                    self._log_cleanup("recording the training time", exc)
            finally:
                with self._lock:  # never left 'running' (or 'queued') once the thread is over
                    if self._status not in FINAL_STATUSES:
                        self._set("failed", "training ended unexpectedly (see train.log for details)")
                self.run.unlock(self._run_lock)
                if self.failure_kind == "input" and not self.resume:
                    _remove_if_never_a_run(self.run.path)
                self._done.set()

    def _log_cleanup(self, what: str, exc: BaseException) -> None:
        try:
            self.run.log(f"after the run, {what} failed: {type(exc).__name__}: {exc}")
        except Exception:
            pass   # the run folder itself is gone or unwritable: nothing left to tell

    def _fail(self, kind: str, message: str) -> None:
        try:
            self.run.log(traceback.format_exc())
        except OSError:
            pass
        self.failure_kind = kind
        self.report_status("failed", message)  # in memory even when the folder is gone or full


_START_FILES = {".lock", "status.json", "train.log"}


def _remove_if_never_a_run(path: Path) -> None:
    """A start refused for its input (bad data or model) leaves no folder behind: only when the
    folder holds nothing but what the job itself wrote before training (no config.json)."""
    try:
        if path.is_dir() and {p.name for p in path.iterdir()} <= _START_FILES:
            for name in _START_FILES:
                (path / name).unlink(missing_ok=True)
            path.rmdir()
    except OSError:
        pass  # someone else's file appeared meanwhile: leave it


def _empty_cuda_cache() -> None:
    try:
        import torch
        torch.cuda.empty_cache()
    except Exception:
        pass


def preflight(config: RunConfig, workspace: str):
    """Check data and model before a job is queued, so bad input fails fast with
    its own message instead of as a failed run. Returns the loaded dataset."""
    check_model_available(config.model)
    dataset = load_dataset(config.data.source, workspace, fixes_by=config.data.fixes_by)
    dataset.report.raise_if_blocking()
    return dataset


def _human_message(exc: BaseException) -> str:
    import torch
    if distributed.context().enabled and distributed.is_peer_failure(exc):  # [ddp] e.g. in DDP's backward
        return distributed.PEER_LOST.format(run=distributed._RUN_DIR)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" (writing {Path(exc.filename).name})" if exc.filename else ""
        return (f"the disk is full{where}: free some space, then resume the run "
                "(Runs tab, or `python -m lora_gui train --resume RUN_FOLDER`); what was saved before is kept")
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (f"the run folder cannot be written ({exc.strerror}); train into a workspace you may write to "
                "(see train.log for details)")
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in str(exc).lower():
        return ("ran out of memory; use a smaller batch size or a lower resolution "
                "(see train.log for details)")
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"training failed: {type(exc).__name__}: {first} (see train.log for details)"
