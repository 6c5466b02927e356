"""The health check's fixes record: which files to relabel or leave out, honoured by every load.

A person reviews the health check's findings and decides per file: ``relabel`` (train it under
another class), ``exclude`` (leave it out of training and validation) or ``keep`` (the finding was
wrong; remember that). The decisions live in ``<workspace>/data_fixes/<dataset-key>.json`` as
``{relative path: {"action": ..., "label": ...}}``; the user's files are never touched. When the
app serves several people, each has a record of their own (``data_fixes/<by>/``, ``Dataset.fixes_by``,
``DataConfig.fixes_by``): one person's decisions never change what another trains on.
``load_dataset`` applies the record, so a run started from the CLI or the app trains on the
fixed dataset and its validation report says what the fixes did.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import threading
from collections import Counter
from pathlib import Path

from ..config import FIXES_BY
from ..errors import DataError
from .scan import Dataset, FileReport, Sample, _check_counts

ACTIONS = ("relabel", "exclude", "keep")
EXCLUDED_REASON = "excluded by health check"
_WRITING = threading.Lock()


def dataset_key(ds: Dataset) -> str:
    """A stable file name for this dataset's record: its folder name and a hash of its real path
    (archives unpack to a content-named folder, so the same archive gets the same key)."""
    root = Path(ds.root).resolve()
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", root.name)[:40] or "dataset"
    return f"{name}-{hashlib.sha1(str(root).encode()).hexdigest()[:12]}"


def fixes_file(workspace: str | os.PathLike, ds: Dataset) -> Path:
    folder = Path(workspace) / "data_fixes"
    if ds.fixes_by:
        if not re.fullmatch(FIXES_BY, ds.fixes_by):
            raise DataError(f"bad fixes record name {ds.fixes_by!r}")
        folder = folder / ds.fixes_by
    return folder / f"{dataset_key(ds)}.json"


def relative_path(ds: Dataset, path: str) -> str:
    """A sample's key in the record: its path inside the dataset root, with forward slashes."""
    return Path(os.path.relpath(path, ds.root)).as_posix()


def read_fixes(workspace: str | os.PathLike, ds: Dataset) -> dict[str, dict]:
    """The record for this dataset ({} when none or unreadable: fixes never block loading)."""
    try:
        record = json.loads(fixes_file(workspace, ds).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict):
        return {}
    return {k: v for k, v in record.items() if isinstance(v, dict) and v.get("action") in ACTIONS}


def write_fix(workspace: str | os.PathLike, ds: Dataset, path: str, action: str,
              label: str | None = None) -> dict[str, dict]:
    """Record one decision for the file ``path`` (absolute, or relative to the dataset root);
    returns the whole record. ``ds`` may be the fixed or the original dataset."""
    base = ds.unfixed or ds
    if action not in ACTIONS:
        raise DataError(f"unknown fix {action!r}: use one of {', '.join(ACTIONS)}")
    rel = relative_path(base, path) if os.path.isabs(path) else Path(path).as_posix()
    if rel not in {relative_path(base, s.path) for s in base.samples}:
        raise DataError(f"{path} is not an image of this dataset; run the health check again")
    entry = {"action": action}
    if action == "relabel":
        if label not in base.classes:
            raise DataError(f"relabel needs one of the classes ({', '.join(base.classes)}), got {label!r}")
        entry["label"] = label
    target = fixes_file(workspace, base)
    # read, change, write: two decisions at once (two clicks, two pages) must not lose one
    with _WRITING:
        record = read_fixes(workspace, base)
        record[rel] = entry
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
            os.replace(tmp, target)  # atomic: a training run reading it never sees half a file
        finally:
            tmp.unlink(missing_ok=True)
    return record


def _report_entry(report_files: list[FileReport], rel: str) -> FileReport | None:
    # report paths are relative to what the user gave (maybe a folder above the root)
    for f in report_files:
        if f.status == "used" and (f.path == rel or f.path.endswith("/" + rel)):
            return f
    return None


def apply_fixes(ds: Dataset, workspace: str | os.PathLike) -> Dataset:
    """The dataset with the record's fixes applied (``ds`` itself when there are none).

    Works from the original samples, so calling it again after the record changed is safe. The
    result's ``unfixed`` is the original, its report lists each fixed file with what was done.
    """
    base = ds.unfixed or ds
    record = {k: v for k, v in read_fixes(workspace, base).items() if v["action"] != "keep"}
    if not record:
        return base
    index = {name: i for i, name in enumerate(base.classes)}
    report = copy.deepcopy(base.report)
    mapping: dict[str, Sample | None] = {}
    for s in base.samples:
        fix = record.get(relative_path(base, s.path))
        if fix is None or (fix["action"] == "relabel" and fix.get("label") not in index):
            continue
        entry = _report_entry(report.files, relative_path(base, s.path))
        if fix["action"] == "exclude":
            mapping[s.path] = None
            if entry:
                entry.status, entry.reason = "skipped", EXCLUDED_REASON
        elif index[fix["label"]] != s.label:
            mapping[s.path] = Sample(s.path, index[fix["label"]])
            if entry:
                entry.label = fix["label"]
                entry.reason = f"relabelled by health check (was {base.classes[s.label]})"

    def fixed(samples: list[Sample]) -> list[Sample]:
        out = [mapping.get(s.path, s) for s in samples]
        return [s for s in out if s is not None]
    given = None if base.given_split is None else {k: fixed(v) for k, v in base.given_split.items()}
    # the counts' errors and warnings are redone: leaving files out can empty a class
    report.errors = [e for e in report.errors if not _is_count_message(e)]
    report.warnings = [w for w in report.warnings if not _is_count_message(w)]
    train_counts = None if given is None else Counter(base.classes[s.label] for s in given["train"])
    _check_counts(report.counts(), train_counts, report)
    return Dataset(base.classes, fixed(base.samples), report, base.root, given, unfixed=base,
                   fixes_by=base.fixes_by)


def _is_count_message(text: str) -> bool:
    return text.startswith(("no usable images", "only 1 class", "class '", "classes are imbalanced",
                            "classes with few images"))
