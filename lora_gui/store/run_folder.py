"""Run folders: everything a training run leaves on disk, and how to read it back.

    <workspace>/<run-id>/
        config.json      what is needed to reproduce the run (written once, at start)
        split.json       the exact train/val files, so a resume sees the same samples
        metrics.csv      one row per step and per epoch, appended while training
        status.json      status, message, best metric, timings (rewritten atomically)
        train.log        human log, tracebacks included
        checkpoint.pt    LoRA + head + optimizer + scheduler + RNG, atomically replaced
        best/ last/      native adapters (adapter.safetensors + adapter.json)
"""
from __future__ import annotations

import csv
import io
import json
import os
import socket
import threading
import time
import warnings
from pathlib import Path

from ..errors import DamagedRun
from .records import RunRecord, SplitRecord, write_json_atomic  # noqa: F401  (write_json_atomic: re-exported)

try:
    import fcntl  # POSIX; on Windows runs are not locked
except ImportError:  # pragma: no cover
    fcntl = None

METRIC_FIELDS = ["kind", "epoch", "step", "loss", "lr", "images_per_s", "train_loss", "train_acc",
                 "val_loss", "val_acc", "time"]
FINAL_STATUSES = ("finished", "stopped", "failed")
LIVE_STATUSES = ("queued", "running", "paused", "stopping")   # a run in these may still save a model
_STATUS_LOCK = threading.RLock()  # status.json is updated from the job thread and from controls


def new_run_id(prefix: str = "run") -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"


class RunBusy(FileExistsError):
    """Another process is training this run; the message says which."""


class RunFolder:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    # one writer at a time ------------------------------------------------------
    # An flock on <run>/.lock, held while a job trains the run: a second process (a CLI
    # resume, another app) is refused instead of interleaving metrics and checkpoints.
    # The kernel drops it when the holder dies, even by SIGKILL, so a crash never leaves
    # a run locked.
    def lock(self):
        """Hold the run until ``unlock(handle)``; raises ``RunBusy`` if another holder has it."""
        if fcntl is None:
            return None
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            who = handle.read().strip()
            handle.close()
            raise RunBusy(f"{self.path.name} is being trained by another process{f' ({who})' if who else ''}: "
                          "wait for it to end, or stop it there first") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        return handle

    @staticmethod
    def unlock(handle) -> None:
        if handle is not None and not handle.closed:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    def in_use(self) -> bool:
        """Whether some job (in any process) holds the run now."""
        if fcntl is None or not (self.path / ".lock").is_file():
            return False
        try:
            self.unlock(self.lock())
            return False
        except RunBusy:
            return True

    # paths -----------------------------------------------------------------
    config_file = property(lambda self: self.path / "config.json")
    split_file = property(lambda self: self.path / "split.json")
    metrics_file = property(lambda self: self.path / "metrics.csv")
    status_file = property(lambda self: self.path / "status.json")
    log_file = property(lambda self: self.path / "train.log")
    checkpoint_file = property(lambda self: self.path / "checkpoint.pt")
    best_dir = property(lambda self: self.path / "best")
    last_dir = property(lambda self: self.path / "last")

    def create(self) -> "RunFolder":
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def exists(self) -> bool:
        return self.config_file.is_file()

    # json ------------------------------------------------------------------
    def read_json(self, path: Path, default=None):
        try:
            return json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return default

    def record(self) -> RunRecord:
        """config.json, checked (``DamagedRun`` names what is wrong)."""
        return RunRecord.read(self)

    def split(self) -> SplitRecord:
        """split.json, checked (``DamagedRun`` names what is wrong)."""
        return SplitRecord.read(self)

    def read_status(self) -> dict:
        # a status.json that is not an object (damaged by hand or by a disk) counts as none:
        # every status update rewrites it whole
        status = self.read_json(self.status_file, {})
        return status if isinstance(status, dict) else {}

    def final_status(self, **fields) -> dict:
        """The last status this process writes: the lock is kept (a process that calls this exits
        right after), so no other thread's later update can undo it."""
        _STATUS_LOCK.acquire()
        return self.update_status(**fields)

    def update_status(self, **fields) -> dict:
        with _STATUS_LOCK:
            status = self.read_status()
            status.update(fields)
            write_json_atomic(self.status_file, status)
        return status

    def log(self, line: str) -> None:
        with open(self.log_file, "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {line}\n")

    def log_tail(self, lines: int = 20) -> list[str]:
        try:
            return self.log_file.read_text().splitlines()[-lines:]
        except FileNotFoundError:
            return []

    # metrics ---------------------------------------------------------------
    def append_metrics(self, rows: list[dict], sync: bool = True) -> None:
        """Append rows; ``sync=False`` leaves the fsync to the next checkpoint
        (a killed process loses nothing that was flushed; only power loss could)."""
        new = not self.metrics_file.exists() or self.metrics_file.stat().st_size == 0
        with open(self.metrics_file, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_FIELDS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerows([{k: ("" if v is None else v) for k, v in r.items()} for r in rows])
            f.flush()
            if sync:
                os.fsync(f.fileno())

    def sync_metrics(self) -> None:
        try:
            fd = os.open(self.metrics_file, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def read_metrics(self, strict: bool = False) -> list[dict]:
        """The complete rows of metrics.csv. Bytes that are not text make the file damaged:
        ``strict`` says so (DamagedRun: a table of runs, a resume); otherwise the lines they
        are in are skipped like torn ones (a chart still draws the rest)."""
        try:
            with open(self.metrics_file, newline="", encoding="utf-8", errors="strict" if strict else "replace") as f:
                rows = list(csv.DictReader(f))
        except FileNotFoundError:
            return []
        except UnicodeDecodeError as exc:
            raise DamagedRun(f"{self.metrics_file} is damaged (not text: byte {exc.start} is not UTF-8); rename "
                             "or delete it to use the run without its earlier curves") from None
        out = []
        for r in rows:
            if (r.get("kind") not in ("step", "epoch") or r.get("time") in (None, "") or None in r
                    or any("\ufffd" in (v or "") for v in r.values() if isinstance(v, str))):
                continue  # a line cut short by a kill (or two torn lines run together)
            out.append({k: (r[k] if k == "kind" else _num(r.get(k))) for k in METRIC_FIELDS})
        return out

    def truncate_metrics(self, keep_step: int, keep_epoch: int) -> None:
        """On resume, drop rows written after the checkpoint so none are duplicated."""
        rows = [r for r in self.read_metrics()
                if (r["kind"] == "step" and r["step"] is not None and r["step"] <= keep_step)
                or (r["kind"] == "epoch" and r["epoch"] is not None and r["epoch"] <= keep_epoch)]
        tmp = self.metrics_file.with_name("metrics.csv.tmp")
        try:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
                w.writeheader()
                w.writerows([{k: ("" if v is None else v) for k, v in r.items()} for r in rows])
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.metrics_file)
        finally:
            tmp.unlink(missing_ok=True)  # a full disk leaves the old file, and no half-written copy

    # checkpoints -------------------------------------------------------------
    def save_checkpoint(self, state: dict) -> None:
        tmp = self.checkpoint_file.with_name("checkpoint.pt.tmp")
        # serialised in memory first: torch.save straight into a file on a full disk fails with
        # an opaque RuntimeError ("unexpected pos ..."); a plain write says ENOSPC
        import torch  # here, not at the top: listing runs (CLI `runs`, the app's start-up) needs no torch
        buffer = io.BytesIO()
        torch.save(state, buffer)
        try:
            with open(tmp, "wb") as f:
                f.write(buffer.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.checkpoint_file)  # a kill mid-write leaves the old checkpoint intact
        except OSError as exc:  # name the file: "the disk is full (writing checkpoint.pt)"
            raise OSError(exc.errno, exc.strerror, str(self.checkpoint_file)) from None
        finally:
            tmp.unlink(missing_ok=True)  # a full disk: the old checkpoint stays, no half-written copy

    def load_checkpoint(self) -> dict | None:
        """The last checkpoint, None if there is none yet, or DamagedRun saying what to do.

        torch's own messages ('internal miniz error', or advice to turn weights_only off,
        which would run code from the file) are never passed on."""
        if not self.checkpoint_file.is_file():
            return None
        import torch
        try:
            # a foreign file that starts like a pickle also makes torch warn about its protocol (a
            # "UserWarning ... weights_only Unpickler" line on the console): the error below says it all
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                state = torch.load(self.checkpoint_file, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a cut-off or foreign file
            text = str(exc).lower()
            what = ("cut off (an interrupted copy, or a full disk?)"
                    if any(w in text for w in ("miniz", "central directory", "eof", "truncat"))
                    else "not a checkpoint written by lora_gui")
            raise DamagedRun(f"{self.checkpoint_file} is damaged: {what}. Delete it to train the run again from "
                             "the beginning (best/ and last/ keep the adapters saved so far), or train a new run") \
                from None
        if not isinstance(state, dict) or not {"adapter", "optimizer", "epoch", "step"} <= set(state):
            raise DamagedRun(f"{self.checkpoint_file} is damaged: it does not hold a training state. Delete it "
                             "to train the run again from the beginning, or train a new run")
        return state

    # summary for tables -------------------------------------------------------
    def summary(self) -> dict:
        """One row for tables of runs; a damaged run gets status 'damaged' and the reason in 'damaged'."""
        status = self.read_status()
        row = {"run": self.path.name, "path": str(self.path), "model": "?", "rank": None, "targets": None,
               "source": "", "classes": 0, "best_val_acc": status.get("best_val_acc"), "duration_s": status.get("duration_s"),
               "status": status.get("status", "unknown"), "started": str(status.get("started") or ""), "damaged": ""}
        try:
            rec = self.record()
            row.update(model=rec.config.model.name, rank=rec.config.lora.rank, targets=rec.config.lora.targets,
                       source=rec.config.data.source, classes=len(rec.classes))
            self.split()
            self.read_metrics(strict=True)
        except DamagedRun as exc:
            row.update(status="damaged", damaged=str(exc))
        return row


def _num(v):
    if v in (None, ""):
        return None
    try:
        f = float(v)
    except ValueError:
        return None
    return int(f) if f.is_integer() and "." not in str(v) else f


def list_runs(workspace: str | os.PathLike) -> list[dict]:
    """Run summaries, newest first. A folder without config.json is not a run."""
    root = Path(workspace)
    if not root.is_dir():
        return []
    runs = [RunFolder(p) for p in root.iterdir() if p.is_dir() and (p / "config.json").is_file()]
    # a damaged run is listed too (status 'damaged', the reason in 'damaged'): it never hides the others
    rows = [r.summary() for r in runs]
    return sorted(rows, key=lambda r: (r["started"] or "", r["run"]), reverse=True)
