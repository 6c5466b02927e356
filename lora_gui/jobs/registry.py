"""The jobs of this process, by id, for viewers that re-attach (a reloaded page, the Runs tab)."""
from __future__ import annotations

import threading

from ..store.run_folder import FINAL_STATUSES
from .job_state import JobState

_JOBS: dict[str, JobState] = {}
_JOBS_LOCK = threading.Lock()


def register_job(job) -> None:
    """Make a job that is not a TrainingJob (``torchrun_job.TorchrunJob``) findable by ``get_job``."""
    with _JOBS_LOCK:
        _JOBS[job.id] = job


def get_job(job_id: str) -> JobState | None:
    with _JOBS_LOCK:
        return _JOBS.get(job_id)


def active_jobs() -> list[JobState]:
    with _JOBS_LOCK:
        return [j for j in _JOBS.values() if j.status not in FINAL_STATUSES]
