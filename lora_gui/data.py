"""Labelled image datasets from every shape people keep them in.

The public face of the data layer; other modules import from here only.
``load_dataset`` turns a folder, an archive or a CSV into a ``Dataset``
whose ``report`` accounts for every file. Scanning rules live in
``dataset_scan``, hostile-input handling in ``archives``, decoding, the
decoded-image cache and transforms in ``images``. No UI code.
"""
from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import tempfile
from pathlib import Path

from .archives import ArchiveLimits, extract_archive, is_archive_name, place_uploads
from .dataset_scan import (Dataset, FileReport, Sample, ValidationReport, build_dataset,
                           is_ignored, unwrap)
from .images import (EXTENSION_FOR_FORMAT, MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE, DataError,
                     DecodedCache, ImageDataset, build_transform, cache_max_side, load_rgb,
                     probe_image, to_rgb)

__all__ = [
    "DataError", "ArchiveLimits", "MAX_IMAGE_PIXELS", "MIN_IMAGE_SIDE", "FileReport",
    "ValidationReport", "Sample", "Dataset", "load_dataset", "dataset_from_files", "ClassBuilder",
    "split_dataset", "split_counts", "example_dataset_path", "build_transform", "ImageDataset",
    "DecodedCache", "cache_max_side", "load_rgb", "class_distribution_figure", "gallery_items",
]


def load_dataset(source: str | os.PathLike, workspace: str | os.PathLike,
                 limits: ArchiveLimits | None = None) -> Dataset:
    """A folder, an archive (.zip/.tar/.tar.gz/.tgz) or a CSV file -> Dataset.

    Bad individual files never raise: ``report`` lists them as skipped with
    the reason. DataError only when the source itself is unusable (missing,
    unsupported, a hostile or damaged archive). Archives are unpacked under
    ``<workspace>/datasets/``; nothing is written anywhere else.
    """
    path = Path(source).expanduser()
    if not str(source).strip() or not path.exists():
        raise DataError(f"'{source}' does not exist: give a folder of class folders, a "
                        f".zip/.tar/.tar.gz archive or a .csv file")
    if path.is_dir():
        return build_dataset(unwrap(path), path)
    if path.suffix.lower() == ".csv":
        return build_dataset(path.parent, path.parent, csv_file=path)
    if is_archive_name(path):
        folder = extract_archive(path, workspace, limits)
        return build_dataset(unwrap(folder), folder)
    raise DataError(f"{path.name}: unsupported file type '{path.suffix}'; give a folder, a "
                    f".zip/.tar/.tar.gz/.tgz archive or a .csv file")


def dataset_from_files(files: list[str], relative_paths: list[str], workspace) -> Dataset:
    """Rebuild a folder dropped in the browser under <workspace>/uploads/ and load it.

    ``files`` are the server's temp copies (Gradio keeps base names only);
    ``relative_paths`` the browser's webkitRelativePath of each, in order.
    """
    base = Path(workspace) / "uploads"
    base.mkdir(parents=True, exist_ok=True)
    dest = Path(tempfile.mkdtemp(dir=base))
    not_placed = place_uploads(files, relative_paths, dest)
    ds = load_dataset(dest, workspace)
    ds.report.files += [FileReport(rel, "skipped", why) for rel, why in not_placed]
    if not_placed:
        ds.report.warnings.append(f"{len(not_placed)} uploaded file(s) could not be put back in their "
                                  f"folders; drop the folder again, or upload it as a zip")
    return ds


def _check_class_name(name: str) -> str:
    name = (name or "").strip()
    # a leading dot would make the folder hidden, and hidden files are ignored
    if not name or name.startswith(".") or re.search(r"[/\\\x00-\x1f]", name) or len(name) > 100:
        raise DataError(f"class name {name!r} is not allowed: use up to 100 letters, digits, "
                        f"spaces, - or _, without / or \\, not starting with a dot")
    return name


class ClassBuilder:
    """Teachable-Machine style classes, kept under <workspace>/classes/<session_id>/<class>/.

    State lives on disk, so a page reload with the same session id finds
    the classes again, and ``dataset()`` is an ordinary folder load.
    """

    def __init__(self, workspace, session_id: str):
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", session_id or ""):
            raise DataError(f"session id {session_id!r} must be 1-64 letters, digits, - or _")
        self.workspace = Path(workspace)
        self.root = self.workspace / "classes" / session_id
        self.root.mkdir(parents=True, exist_ok=True)

    def _dir(self, name: str) -> Path:
        d = self.root / _check_class_name(name)
        if not d.is_dir():
            raise DataError(f"there is no class '{name}'; add it first")
        return d

    def _check_free(self, name: str, ignore: str = "") -> None:
        if any(c.lower() == name.lower() and c != ignore for c in self.classes()):
            raise DataError(f"a class called '{name}' already exists; pick another name")

    def add_class(self, name: str) -> None:
        name = _check_class_name(name)
        self._check_free(name)
        (self.root / name).mkdir()

    def rename_class(self, old: str, new: str) -> None:
        src, new = self._dir(old), _check_class_name(new)
        self._check_free(new, ignore=src.name)  # "cat" -> "Cat" is allowed
        src.rename(self.root / new)

    def delete_class(self, name: str) -> None:
        shutil.rmtree(self._dir(name))

    def add_images(self, name: str, paths: list) -> int:
        """Copy image files (PIL images and arrays work too) in; returns how many were new.

        Files are named by content hash, so the same picture added twice is
        stored once; files that aren't usable images are left out.
        """
        d, added = self._dir(name), 0
        for p in paths:
            if not isinstance(p, (str, os.PathLike)):
                added += self._save_array(d, p)
                continue
            probe = probe_image(p)
            if probe.reason:
                continue
            target = d / f"{probe.sha1[:16]}{EXTENSION_FOR_FORMAT.get(probe.format, '')}"
            if not target.exists():
                shutil.copyfile(p, target)
                added += 1
        return added

    def add_image_array(self, name: str, array) -> None:
        """Add one webcam frame: a PIL image or an HxW / HxWx3 / HxWx4 array."""
        self._save_array(self._dir(name), array)

    def _save_array(self, d: Path, array) -> int:
        import numpy as np
        from PIL import Image
        if isinstance(array, Image.Image):
            im = array
        else:
            a = np.asarray(array)
            if a.dtype.kind == "f":  # some webcam paths hand out floats in [0, 1]
                a = np.clip(a * 255.0, 0, 255).round()
            if a.ndim == 3 and a.shape[2] == 1:
                a = a[:, :, 0]
            if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
                raise DataError(f"webcam image has shape {a.shape}; expected HxW, HxWx3 or HxWx4")
            im = Image.fromarray(np.ascontiguousarray(a.astype(np.uint8)))
        if min(im.size) < MIN_IMAGE_SIDE:
            raise DataError(f"image too small ({im.width}x{im.height})")
        im = to_rgb(im)
        target = d / f"{hashlib.sha1(im.tobytes()).hexdigest()[:16]}.png"  # PNG: lossless
        if target.exists():
            return 0
        im.save(target)
        return 1

    def classes(self) -> dict[str, int]:
        """Class name -> number of images, sorted by name."""
        return {d.name: sum(1 for f in d.iterdir() if f.is_file() and not is_ignored(f.name))
                for d in sorted(self.root.iterdir()) if d.is_dir() and not is_ignored(d.name)}

    def dataset(self) -> Dataset:
        return load_dataset(self.root, self.workspace)


def split_dataset(ds: Dataset, val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(train, val): the given train/val folders, else a stratified split.

    Each class is shuffled with its own seed derived from (seed, class
    name), so adding a class doesn't reshuffle the others. A class with at
    least 2 images gets at least one validation image (when val_fraction >
    0) and keeps at least one for training.
    """
    if ds.given_split is not None:
        return list(ds.given_split["train"]), list(ds.given_split["val"])
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"validation fraction must be in [0, 1), got {val_fraction!r}")
    train, val = [], []
    for label, name in enumerate(ds.classes):
        items = sorted((s for s in ds.samples if s.label == label), key=lambda s: s.path)
        random.Random(f"{seed}:{name}").shuffle(items)  # str seeds are stable across runs
        n_val = round(len(items) * val_fraction)
        if val_fraction > 0 and len(items) >= 2:
            n_val = min(max(1, n_val), len(items) - 1)
        val += items[:n_val]
        train += items[n_val:]
    return train, val


def split_counts(train: list[Sample], val: list[Sample], classes: list[str]) -> list[list]:
    """Rows [class, n_train, n_val] for a table."""
    rows = [[name, 0, 0] for name in classes]
    for col, part in ((1, train), (2, val)):
        for s in part:
            rows[s.label][col] += 1
    return rows


def example_dataset_path() -> Path:
    """The built-in Fashion-MNIST sample (assets/example, beside the package)."""
    return Path(__file__).resolve().parent.parent / "assets" / "example"


def class_distribution_figure(ds_or_counts):
    """Bar chart of images per class.

    Accepts a Dataset, a {class: count} dict, or split_counts rows (then
    train and validation are stacked).
    """
    import plotly.graph_objects as go
    fig = go.Figure()
    if isinstance(ds_or_counts, Dataset):
        ds_or_counts = ds_or_counts.class_counts()
    if isinstance(ds_or_counts, dict):
        fig.add_bar(x=list(ds_or_counts), y=list(ds_or_counts.values()), name="images")
    else:
        rows = list(ds_or_counts)
        fig.add_bar(x=[r[0] for r in rows], y=[r[1] for r in rows], name="train")
        fig.add_bar(x=[r[0] for r in rows], y=[r[2] for r in rows], name="validation")
        fig.update_layout(barmode="stack")
    fig.update_layout(title="Images per class", xaxis_title="class", yaxis_title="images",
                      height=320, margin=dict(l=40, r=20, t=50, b=40))
    return fig


def gallery_items(ds: Dataset, per_class: int = 4) -> list[tuple[str, str]]:
    """(path, class name) pairs, ``per_class`` spread-out samples of each class."""
    items = []
    for label, name in enumerate(ds.classes):
        paths = [s.path for s in ds.samples if s.label == label]
        step = max(1, len(paths) // max(1, per_class))
        items += [(p, name) for p in paths[::step][:per_class]]
    return items
