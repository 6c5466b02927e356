"""What one browser session owns: its dataset, its class builder, its job, its test model.

Kept in a ``gr.State`` so two people using the same server never see each
other's data. The running job lives in the engine's registry (``train.get_job``),
not here, so closing the tab does not stop it and a reloaded page can
re-attach through the job id kept in the browser's localStorage.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..data.class_builder import ClassBuilder
from ..data.scan import Dataset
from ..jobs.registry import get_job


@dataclass
class Session:
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    dataset: Dataset | None = None
    dataset_label: str = ""          # where the data came from, for people
    builder: ClassBuilder | None = None
    job_id: str | None = None
    test_source: str | None = None   # adapter/run path the Test tab uses
    test_model: object | None = None  # export.LoadedAdapter, cached
    test_model_key: tuple | None = None  # (source, adapter file, mtime) of test_model
    base_config: object | None = None    # RunConfig of the last applied preset; form fields override it
    event_index: int = 0             # how many job events the charts have drawn

    def class_builder(self, workspace: Path) -> ClassBuilder:
        if self.builder is None:
            self.builder = ClassBuilder(workspace, self.id)
        return self.builder

    def use_test_source(self, path: str | None) -> None:
        if path != self.test_source:
            self.test_source, self.test_model, self.test_model_key = path, None, None

    def job(self):
        return get_job(self.job_id) if self.job_id else None

    def attach(self, job) -> None:
        """Follow ``job`` from now on (charts redraw from its first event)."""
        self.job_id = job.id if job is not None else None
        self.event_index = 0

    def current_run(self) -> str | None:
        """The run the Test and Export tabs work on: one picked explicitly, else this session's job."""
        if self.test_source:
            return self.test_source
        job = self.job()
        return str(job.run.path) if job is not None else None
