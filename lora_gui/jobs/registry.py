"""The jobs of this process, by id, and who owns each one.

A job's owner is a person (a login name, or a random id kept in one browser) and
the browser tab that started it. The app never acts on a job id a client sends:
it finds the caller's job here by the caller's own owner id, and a run's owner
is kept in its status.json so the Runs tab still knows it after a restart.
"""
from __future__ import annotations

import threading

from ..store.run_folder import FINAL_STATUSES, RunFolder
from .job_state import JobState

_JOBS: dict[str, JobState] = {}
_JOBS_LOCK = threading.Lock()
_OWNERS: dict[str, tuple[str, str]] = {}   # job id -> (owner id, tab id)
OWNER_KEY = "owner"                         # the field of a run's status.json that names its owner


# Jobs wait for the one device in turn: more than a few waiting is a client gone astray (a script in
# a loop, a page clicked again and again), and each keeps a thread and its step rows in memory.
MAX_LIVE_JOBS = 8            # queued or running, everyone together
MAX_LIVE_PER_OWNER = 3       # queued or running, one person
KEEP_FINISHED = 50           # finished jobs kept findable (a reloaded tab shows its last one)


def register_job(job) -> None:
    """Make a job findable by ``get_job`` (a TrainingJob does this itself; ``torchrun_job.TorchrunJob``)."""
    with _JOBS_LOCK:
        _JOBS[job.id] = job
        _forget_old_finished()


def _forget_old_finished() -> None:
    """Keep the newest ``KEEP_FINISHED`` finished jobs; older ones leave memory (their runs stay on disk,
    in the Runs tab). Called with the lock held."""
    done = [jid for jid, j in _JOBS.items() if j.status in FINAL_STATUSES]   # oldest first (dict order)
    for jid in done[:max(0, len(done) - KEEP_FINISHED)]:
        _JOBS.pop(jid, None)
        _OWNERS.pop(jid, None)


def room_for_another(owner_id: str) -> str:
    """Why ``owner_id`` may not start another job now ("" when they may)."""
    live = active_jobs()
    if len(live) >= MAX_LIVE_JOBS:
        return (f"{len(live)} trainings are already queued or running on this server; try again when one "
                "has finished")
    mine = jobs_of(owner_id, live_only=True)
    if len(mine) >= MAX_LIVE_PER_OWNER:
        return (f"you already have {len(mine)} trainings queued or running; stop one (3 · Train) or wait "
                "for one to finish")
    return ""


def get_job(job_id: str) -> JobState | None:
    with _JOBS_LOCK:
        return _JOBS.get(job_id)


def active_jobs() -> list[JobState]:
    with _JOBS_LOCK:
        return [j for j in _JOBS.values() if j.status not in FINAL_STATUSES]


def set_owner(job, owner_id: str, tab_id: str = "") -> None:
    """Record who started ``job`` (in memory, and the owner in its run's status.json)."""
    with _JOBS_LOCK:
        _JOBS.setdefault(job.id, job)
        _OWNERS[job.id] = (owner_id, tab_id or "")
    try:
        RunFolder(job.run.path).update_status(**{OWNER_KEY: owner_id})
    except OSError:
        pass  # the in-memory owner still guards this process's viewers


def owner_of(job) -> tuple[str, str] | None:
    """(owner id, tab id) of a job started through ``set_owner``; None for one nobody claimed (the CLI's)."""
    with _JOBS_LOCK:
        return _OWNERS.get(job.id)


def jobs_of(owner_id: str, tab_id: str | None = None, live_only: bool = False) -> list[JobState]:
    """The jobs of ``owner_id`` (and of that tab, if given), newest first."""
    with _JOBS_LOCK:
        found = [_JOBS[jid] for jid, (owner, tab) in _OWNERS.items()
                 if jid in _JOBS and owner == owner_id and (tab_id is None or tab == tab_id)]
    if live_only:
        found = [j for j in found if j.status not in FINAL_STATUSES]
    return sorted(found, key=lambda j: j.id, reverse=True)


def run_owner(run_dir) -> str | None:
    """The owner recorded in a run folder's status.json (None: made by the CLI, or before owners were kept)."""
    owner = RunFolder(run_dir).read_status().get(OWNER_KEY)
    return owner if isinstance(owner, str) and owner else None
