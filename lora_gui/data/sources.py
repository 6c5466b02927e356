"""The one entry point for datasets: a folder, an archive, a CSV, an upload or the example."""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from ..errors import DataError
from .archives import ArchiveLimits, extract_archive, is_archive_name, place_uploads
from .bundled import source_path
from .files import file_type
from .fixes import apply_fixes
from .images import EXTENSION_FOR_FORMAT, KNOWN_UNSUPPORTED
from .scan import Dataset, FileReport, build_dataset, unwrap


def load_dataset(source: str | os.PathLike, workspace: str | os.PathLike,
                 limits: ArchiveLimits | None = None, scan_seconds: float | None = None,
                 fixes_by: str = "") -> Dataset:
    """A folder, an archive (.zip/.tar/.tar.gz/.tgz), a CSV file, or the word ``example`` (the
    built-in example dataset, when there is no file of that name) -> Dataset.

    Bad individual files never raise: ``report`` lists them as skipped with
    the reason. DataError only when the source itself is unusable (missing,
    unsupported, a hostile or damaged archive, or a scan longer than
    ``scan_seconds``, default ``scan.SCAN_SECONDS``). Archives are unpacked under
    ``<workspace>/datasets/``; nothing is written anywhere else. ``fixes_by``: whose health-check
    record applies ("" the workspace's own; the app names one per person when it serves several).
    """
    ds = _load(source, workspace, limits, scan_seconds)
    ds.fixes_by = fixes_by
    return apply_fixes(ds, workspace)  # the health check's record


def _load(source, workspace, limits: ArchiveLimits | None, scan_seconds: float | None) -> Dataset:
    path = source_path(source)   # `example` is the built-in example dataset
    if not str(source).strip() or not path.exists():
        raise DataError(f"'{source}' does not exist: give a folder of class folders, a "
                        f".zip/.tar/.tar.gz archive or a .csv file")
    if path.is_dir():
        return build_dataset(unwrap(path), path, scan_seconds=scan_seconds)
    if not stat.S_ISREG(path.stat().st_mode):  # a FIFO or a device would block or never end
        raise DataError(f"'{source}' is not a regular file ({file_type(path.stat().st_mode)}): give a folder "
                        f"of class folders, a .zip/.tar/.tar.gz archive or a .csv file")
    if path.suffix.lower() == ".csv":
        return build_dataset(path.parent, path.parent, csv_file=path, scan_seconds=scan_seconds)
    if is_archive_name(path):
        folder = extract_archive(path, workspace, limits)
        return build_dataset(unwrap(folder), folder, scan_seconds=scan_seconds)
    if path.suffix.lower() in _PICTURE_SUFFIXES:
        raise DataError(f"{path.name} is one picture: give the folder that holds the class folders "
                        f"(perhaps {path.parent.parent}), an archive of it or a .csv file")
    raise DataError(f"{path.name}: unsupported file type '{path.suffix}'; give a folder, a "
                    f".zip/.tar/.tar.gz/.tgz archive or a .csv file")


_PICTURE_SUFFIXES = {*EXTENSION_FOR_FORMAT.values(), ".jpeg", ".tiff", *KNOWN_UNSUPPORTED}


def dataset_from_files(files: list[str], relative_paths: list[str], workspace, fixes_by: str = "") -> Dataset:
    """Rebuild a folder dropped in the browser under <workspace>/uploads/ and load it.

    ``files`` are the server's temp copies (Gradio keeps base names only);
    ``relative_paths`` the browser's webkitRelativePath of each, in order.
    """
    base = Path(workspace) / "uploads"
    base.mkdir(parents=True, exist_ok=True)
    dest = Path(tempfile.mkdtemp(dir=base))
    try:
        not_placed = place_uploads(files, relative_paths, dest)
    except DataError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    ds = load_dataset(dest, workspace, fixes_by=fixes_by)
    ds.report.files += [FileReport(rel, "skipped", why) for rel, why in not_placed]
    if not_placed:
        ds.report.warnings.append(f"{len(not_placed)} uploaded file(s) could not be put back in their "
                                  f"folders; drop the folder again, or upload it as a zip")
    return ds


def gallery_items(ds: Dataset, per_class: int = 4) -> list[tuple[str, str]]:
    """(path, class name) pairs, ``per_class`` spread-out samples of each class."""
    items = []
    for label, name in enumerate(ds.classes):
        paths = [s.path for s in ds.samples if s.label == label]
        step = max(1, len(paths) // max(1, per_class))
        items += [(p, name) for p in paths[::step][:per_class]]
    return items
