"""Readable names for runs. A folder name like ``run-20261202-131502-ab12`` means nothing to a
person; every tab names a run by when it started, its backbone and its dataset instead (the
folder name stays in the Runs table's "folder" column and under "Show details")."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

from .. import data
from ..store.run_folder import RunFolder


def run_label(r: dict, with_model: bool = True) -> str:
    """'2 Dec 13:15:02 · resnet18' from a run summary row (``RunFolder.summary``)."""
    try:
        when = datetime.strptime(r["started"] or "", "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return r["run"]
    return f"{when.day} {when:%b %H:%M:%S}" + (f" · {r['model']}" if with_model else "")


def dataset_name(source: str | None) -> str:
    if not source:
        return ""
    path = Path(source)
    if path.resolve() == data.example_dataset_path().resolve():
        return "example dataset"
    return path.name or str(path)


def run_title(run_dir) -> str:
    """'the run of 2 Dec 13:15:02 · resnet18 on example dataset' for sentences about one run."""
    row = RunFolder(run_dir).summary()
    on = dataset_name(row.get("source"))
    return f"the run of {run_label(row)}" + (f" on {on}" if on else "")
