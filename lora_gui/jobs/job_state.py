"""What viewers read of any job: its status, message, progress and metric events."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from ..store.run_folder import FINAL_STATUSES

STATUSES = ("queued", "running", "paused", "stopping", "finished", "stopped", "failed")


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


class JobState:
    """What viewers read of any job (``training_job.TrainingJob``, ``torchrun_job.TorchrunJob``): a status, its
    message and the ordered events (status changes and metric rows), behind one lock."""

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._status, self._message = "queued", "waiting to start"
        self._events: list[dict] = []

    @property
    def status(self) -> str:
        with self._lock:
            return self._status

    @property
    def message(self) -> str:
        with self._lock:
            return self._message

    def events_since(self, index: int) -> tuple[list[dict], int]:
        with self._lock:
            return list(self._events[index:]), len(self._events)

    def _set(self, status: str, message: str) -> None:  # caller holds the lock
        self._status, self._message = status, message
        self._events.append({"kind": "status", "status": status, "message": message, "time": time.time()})


def _one_line(message: str) -> str:
    """Status messages are one line: multi-line errors keep their gist, the log keeps the rest."""
    lines = [ln.strip(" -") for ln in str(message).strip().splitlines() if ln.strip(" -")]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    head = lines[0].rstrip(":")
    return f"{head}: {'; '.join(lines[1:])}"[:500]
