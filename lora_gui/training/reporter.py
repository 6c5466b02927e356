"""How the training loop talks to whoever runs it (minGPT's callbacks, in one small interface).

The loop reports its status, its progress and each metrics row, and asks between
batches whether to pause or stop. A background job (``jobs.training_job``) turns
these into what viewers poll; a test or a script can pass a ``RecordingReporter``.
"""
from __future__ import annotations

import time
from typing import Protocol

from ..errors import StopRequested


class Reporter(Protocol):
    def report_status(self, status: str, message: str) -> None:
        """'running' (with what it is doing), 'finished' (with the outcome), ..."""

    def report_progress(self, epoch: int, step: int, total: int, eta: float | None) -> None:
        """Where the run is: epoch (1-based), optimizer step of ``total``, seconds left if known."""

    def report_metrics(self, row: dict) -> None:
        """A metrics row, kind 'step' or 'epoch' (see ``store.run_folder.METRIC_FIELDS``)."""

    def check_controls(self) -> None:
        """Called between batches: blocks while paused, raises ``StopRequested`` to stop."""

    @property
    def paused_seconds(self) -> float:
        """Time spent paused so far, left out of the ETA."""


class RecordingReporter:
    """A reporter that keeps everything it is told; it can ask for a stop after ``stop_after_steps``."""

    def __init__(self, stop_after_steps: int | None = None):
        self.statuses: list[tuple[str, str]] = []
        self.progress: list[tuple[int, int, int, float | None]] = []
        self.rows: list[dict] = []
        self.stop_after_steps = stop_after_steps
        self.started = time.time()

    def report_status(self, status: str, message: str) -> None:
        self.statuses.append((status, message))

    def report_progress(self, epoch: int, step: int, total: int, eta: float | None) -> None:
        self.progress.append((epoch, step, total, eta))

    def report_metrics(self, row: dict) -> None:
        self.rows.append(dict(row))

    def check_controls(self) -> None:
        steps = sum(1 for r in self.rows if r["kind"] == "step")
        if self.stop_after_steps is not None and steps >= self.stop_after_steps:
            raise StopRequested

    @property
    def paused_seconds(self) -> float:
        return 0.0
