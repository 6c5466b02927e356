"""What one page load (or one API client) owns: who it is, its dataset, its job, its model under test.

Kept in a ``gr.State``, which lives on the server: a client never names a job or a
run folder by id, it can only act on what its own state holds. The running job lives
in the engine's registry, not here, so closing the tab does not stop it; a reloaded
tab finds it again by its owner and tab ids (``jobs.registry.jobs_of``).
"""
from __future__ import annotations

import shutil
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..data.class_builder import ClassBuilder
from ..data.scan import Dataset
from ..jobs.registry import get_job
from ..store.run_folder import FINAL_STATUSES, RunFolder

SESSION_TTL_S = 12 * 3600   # a state untouched this long is dropped (gr.State time_to_live)


@dataclass
class Session:
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    owner_id: str = ""               # login name or browser id, set when the page loads (access.owner_id)
    tab_id: str = ""                 # this browser tab's id (sessionStorage), set when the page loads
    dataset: Dataset | None = None
    dataset_label: str = ""          # where the data came from, for people
    builder: ClassBuilder | None = None
    job_id: str | None = None        # set only by the server: a job this session started or was allowed to watch
    watching: bool = False           # the job is another tab's (same person), attached by a click
    base_config: object | None = None    # RunConfig of the last applied preset; form fields override it
    event_index: int = 0             # how many job events the charts have drawn
    epochs_drawn: int = 0            # how many epoch rows they showed
    charts_at: float = 0.0           # when they were last drawn (time.monotonic)
    # the model under test (Test and Export tabs)
    model_source: str | None = None  # run folder or adapter path
    model_note: str = ""             # where it came from, for people ("uploaded adapter x.safetensors")
    model_version: int = 0           # bumped on every change: outputs made from an older one are cleared
    pending_run: str | None = None   # a run started here, tested once it has saved an adapter (best/)
    shown: dict = field(default_factory=dict)   # output group -> model_version it was made from
    resumed_job: str = ""            # a job the Runs tab just resumed: the Train tab's fields show its settings
    uploads: list = field(default_factory=list)  # folders this session uploaded into (removed on close)
    weights_upload: str | None = None  # the weights file this session uploaded (the only file path it may name)
    newest_run_listed: str | None = None  # the Runs tab selects a run newer than this one when it appears

    def __deepcopy__(self, memo) -> "Session":
        """A copy of a session is a new page's session: Gradio gives each page load a deep copy of
        the gr.State default (see ui/app.py), and each page must get its own id and nothing else's.

        The default is a Session, not a function that makes one: a callable default is also run by
        a page-load event of Gradio's own, which stored its fresh session over the one the page had
        just identified (``app.identify``) when the two events overlapped, and the tab became nobody."""
        return Session()

    def class_builder(self, workspace: Path) -> ClassBuilder:
        if self.builder is None:
            self.builder = ClassBuilder(workspace, self.id)
        return self.builder

    # the model under test -----------------------------------------------------------
    def set_model(self, source: str | None, note: str = "") -> None:
        if source != self.model_source or note != self.model_note:
            self.model_source, self.model_note = source, note
            self.model_version += 1
        self.pending_run = None

    def current_model(self) -> str | None:
        """The model under test, switching to the run started here once it has saved its first adapter."""
        if self.pending_run and (Path(self.pending_run) / "best").is_dir():
            run = self.pending_run
            self.set_model(run, "")
        elif self.pending_run and RunFolder(self.pending_run).read_status().get("status") in FINAL_STATUSES:
            self.pending_run = None   # it ended without a trained adapter: the model under test stays
        return self.model_source

    def current_run(self) -> str | None:   # the name the Test and Export tabs have always used
        return self.current_model()

    def stale(self, group: str) -> bool:
        """Do the outputs of ``group`` come from another model than the current one? (marks them current)"""
        self.current_model()
        old = self.shown.get(group, 0) != self.model_version
        self.shown[group] = self.model_version
        return old

    # the job --------------------------------------------------------------------------
    def job(self):
        return get_job(self.job_id) if self.job_id else None

    def attach(self, job, watching: bool = False) -> None:
        """Follow ``job`` from now on (charts redraw from its first event)."""
        self.job_id = job.id if job is not None else None
        self.watching = watching and job is not None
        self.event_index = self.epochs_drawn = 0
        self.charts_at = 0.0

    def started(self, job) -> None:
        """A job this session started: follow it; test it once it has an adapter (until then the old model stays)."""
        self.attach(job)
        self.pending_run = str(job.run.path)

    def close(self) -> None:
        """The page is gone: drop what only it used (its uploaded adapters); running jobs go on."""
        for folder in self.uploads:
            shutil.rmtree(folder, ignore_errors=True)
        self.uploads.clear()


# The sessions of open pages, by Gradio session hash, so the page's unload can clean up after it.
_OPEN: dict[str, Session] = {}
_OPEN_LOCK = threading.Lock()


def remember(session_hash: str | None, session: Session) -> None:
    if session_hash:
        with _OPEN_LOCK:
            _OPEN[session_hash] = session


def close(session_hash: str | None) -> None:
    with _OPEN_LOCK:
        session = _OPEN.pop(session_hash, None) if session_hash else None
    if session is not None:
        session.close()
