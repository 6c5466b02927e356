"""Labelled image datasets from every shape people keep them in.

The public face of the data layer: ``load_dataset`` turns a folder, an
archive or a CSV into a ``Dataset`` whose ``report`` accounts for every
file; plus splitting, previews, browser folder drops and the per-class
builder. Unsafe unpacking lives in ``archives``, decoding and transforms in
``images``. No UI code.
"""
from __future__ import annotations

import csv
import os
import random
import re
import shutil
import tempfile
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .archives import ArchiveLimits, extract_archive, is_archive_name, safe_parts
from .images import (EXTENSION_FOR_FORMAT, MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE, DataError,
                     DecodedCache, ImageDataset, build_transform, cache_max_side, load_rgb,
                     probe_image)

__all__ = [
    "DataError", "ArchiveLimits", "MAX_IMAGE_PIXELS", "MIN_IMAGE_SIDE", "FileReport",
    "ValidationReport", "Sample", "Dataset", "load_dataset", "dataset_from_files", "ClassBuilder",
    "split_dataset", "split_counts", "example_dataset_path", "build_transform", "ImageDataset",
    "DecodedCache", "cache_max_side", "load_rgb", "class_distribution_figure", "gallery_items",
]

FEW_PER_CLASS = 10
IMBALANCE_RATIO = 5.0
_SYSTEM_FILES = {"thumbs.db", "ehthumbs.db", "desktop.ini"}
_SYSTEM_DIRS = {"__macosx", "$recycle.bin", "system volume information"}
_TRAIN_DIRS = ("train", "training")
_VAL_DIRS = ("val", "valid", "validation", "test")  # the first one present is used
_CSV_FILE_COLUMNS = ("filename", "file", "path", "image", "filepath", "image_path")
_CSV_LABEL_COLUMNS = ("label", "class", "category")


@dataclass
class FileReport:
    path: str            # relative, as the user knows it (inside their folder or archive)
    status: str          # "used" | "skipped"
    reason: str = ""
    label: str = ""


@dataclass
class ValidationReport:
    files: list[FileReport] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Used images per class, classes sorted."""
        c = Counter(f.label for f in self.files if f.status == "used" and f.label)
        return dict(sorted(c.items()))

    def as_rows(self) -> list[list[str]]:
        return [[f.path, f.label, f.status, f.reason] for f in self.files]

    def summary(self) -> str:
        counts = self.counts()
        skipped = Counter(f.reason.split(" (")[0].split(" of ")[0]
                          for f in self.files if f.status == "skipped")
        lines = [f"{sum(counts.values())} images used in {len(counts)} classes, "
                 f"{sum(skipped.values())} files skipped"
                 + (f" ({', '.join(f'{n} {r}' for r, n in skipped.most_common())})" if skipped else "")]
        if counts:
            lines.append("Classes: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        lines += [f"Error: {e}" for e in self.errors] + [f"Warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def raise_if_blocking(self) -> None:
        if self.errors:
            raise DataError("The dataset can't be used for training yet:\n"
                            + "\n".join(f"- {e}" for e in self.errors))


@dataclass
class Sample:
    path: str    # absolute path of a decodable image file
    label: int


@dataclass
class Dataset:
    classes: list[str]
    samples: list[Sample]
    report: ValidationReport
    root: str
    given_split: dict[str, list[Sample]] | None = None

    def class_counts(self) -> dict[str, int]:
        c = Counter(s.label for s in self.samples)
        return {name: c.get(i, 0) for i, name in enumerate(self.classes)}


def _ignored(name: str) -> bool:
    """System clutter people never meant as data; skipped without a report line."""
    return name.startswith(".") or name.lower() in _SYSTEM_FILES or name.lower() in _SYSTEM_DIRS


def _walk(top: Path) -> list[Path]:
    """All non-ignored files under ``top``, sorted, without following folder links."""
    found = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if not _ignored(d))
        found += [Path(dirpath, f) for f in filenames if not _ignored(f)]
    return sorted(found)


def _entries(folder: Path) -> tuple[list[Path], list[Path]]:
    items = sorted(p for p in folder.iterdir() if not _ignored(p.name))
    return [p for p in items if p.is_dir()], [p for p in items if not p.is_dir()]


def _unwrap(folder: Path) -> Path:
    """Step into a lone wrapping folder (``myset.zip`` -> ``myset/cat/...``).

    Only when that folder itself holds folders or a CSV: a lone folder of
    images is one class, and saying so beats calling it "no class folders".
    """
    while True:
        dirs, files = _entries(folder)
        if files or len(dirs) != 1:
            return folder
        inner_dirs, inner_files = _entries(dirs[0])
        if not inner_dirs and not any(f.suffix.lower() == ".csv" for f in inner_files):
            return folder
        folder = dirs[0]


def _read_csv(path: Path) -> list[tuple[str, str]]:
    """(filename, label) rows; DataError if the header names no usable columns."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"could not read {path.name}: {exc}. Save it as UTF-8 CSV.") from None
    header = [h.strip().lower() for h in rows[0]] if rows else []
    fcol = next((header.index(c) for c in _CSV_FILE_COLUMNS if c in header), None)
    lcol = next((header.index(c) for c in _CSV_LABEL_COLUMNS if c in header), None)
    if fcol is None or lcol is None:
        raise DataError(f"{path.name} needs a header row naming its columns, e.g. 'filename,label' "
                        f"(file column: {'/'.join(_CSV_FILE_COLUMNS)}; label column: "
                        f"{'/'.join(_CSV_LABEL_COLUMNS)})")
    width = max(fcol, lcol) + 1
    return [(r[fcol].strip(), r[lcol].strip()) for r in rows[1:] if len(r) >= width and any(r)]


def _labelled_csv(folder: Path) -> Path | None:
    csvs = [p for p in _entries(folder)[1] if p.suffix.lower() == ".csv"]
    for p in sorted(csvs, key=lambda p: p.name.lower() != "labels.csv"):
        try:
            _read_csv(p)
            return p
        except DataError:
            continue
    return None


def _plan(root: Path, csv_file: Path | None):
    """Decide the layout: (candidates, skipped, split_of) before any decoding.

    candidates: (path, label) to probe; skipped: (path, reason) known without
    decoding; split_of: path -> "train"/"val" for split layouts.
    """
    candidates, skipped, split_of = [], [], {}
    csv_file = csv_file or _labelled_csv(root)
    if csv_file is not None:
        listed = {}
        for name, label in _read_csv(csv_file):
            parts = safe_parts(name)
            path = csv_file.parent.joinpath(*parts) if parts else None
            if path is None:
                skipped.append((csv_file.parent / name.replace("..", "__"), "unsafe path in CSV"))
            elif not label:
                skipped.append((path, "no label in CSV"))
            elif path in listed:
                if listed[path] != label:
                    skipped.append((path, f"listed twice in CSV with different labels ({listed[path]}, {label})"))
            elif not path.is_file():
                skipped.append((path, "listed in CSV but missing"))
            else:
                listed[path] = label
                candidates.append((path, label))
        if csv_file.parent == root:  # a folder source: account for the rest of it too
            skipped += [(p, "not listed in CSV") for p in _walk(root)
                        if p not in listed and p != csv_file and p.suffix.lower() != ".csv"]
        return candidates, skipped, split_of
    dirs, files = _entries(root)
    by_name = {d.name.lower(): d for d in dirs}
    train = next((by_name[n] for n in _TRAIN_DIRS if n in by_name), None)
    val = next((by_name[n] for n in _VAL_DIRS if n in by_name), None)
    splits = {"train": train, "val": val} if train and val else {"": root}
    for split, top in splits.items():
        for p in _walk(top):
            rel = p.relative_to(top).parts
            if len(rel) < 2:
                skipped.append((p, "not in a class folder"))
            else:
                candidates.append((p, rel[0]))
                if split:
                    split_of[p] = split
    if train and val:
        for d in dirs:
            if d not in (train, val):
                skipped += [(p, f"not in {train.name}/ or {val.name}/") for p in _walk(d)]
        skipped += [(p, f"not in {train.name}/ or {val.name}/") for p in files]
    return candidates, skipped, split_of


def _check_counts(counts: dict[str, int], train_counts: dict[str, int] | None,
                  report: ValidationReport) -> None:
    if not counts:
        report.errors.append("no usable images found: put each class's images in its own folder "
                             "(<folder>/<class>/<image>) or add a CSV with filename,label")
        return
    if len(counts) < 2:
        report.errors.append(f"only 1 class ({next(iter(counts))}); training needs at least 2 "
                             f"classes: add a folder of images for another class")
    for name, n in counts.items():
        if n < 2:
            report.errors.append(f"class '{name}' has only {n} usable image; each class needs at "
                                 f"least 2 (one to train on, one to check against): add more")
        elif n < FEW_PER_CLASS:
            report.warnings.append(f"class '{name}' has only {n} images; {FEW_PER_CLASS} or more "
                                   f"per class give much better results")
        if train_counts is not None and not train_counts.get(name):
            report.errors.append(f"class '{name}' has no training images: add some to train/{name}/")
    big, small = max(counts, key=counts.get), min(counts, key=counts.get)
    if counts[small] and counts[big] / counts[small] > IMBALANCE_RATIO:
        report.warnings.append(f"classes are imbalanced: '{big}' has {counts[big]} images, '{small}' "
                               f"only {counts[small]}; the model may favour '{big}'. Add images "
                               f"to the small classes if you can")


def _build(root: Path, report_base: Path, csv_file: Path | None = None) -> Dataset:
    candidates, skipped, split_of = _plan(root, csv_file)
    rel = lambda p: Path(os.path.relpath(p, report_base)).as_posix()  # noqa: E731
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        probes = list(pool.map(lambda c: probe_image(c[0]), candidates))
    report = ValidationReport(files=[FileReport(rel(p), "skipped", reason) for p, reason in skipped])
    first_with_hash: dict[str, str] = {}
    used: list[tuple[Path, str]] = []
    # sorted so the kept copy of a duplicate is the same on every run
    # (and in a train/val layout it is the train copy, so val can't leak)
    for (path, label), probe in sorted(zip(candidates, probes), key=lambda t: rel(t[0][0])):
        r = rel(path)
        reason = probe.reason
        if not reason and probe.sha1 in first_with_hash:
            reason = f"duplicate of {first_with_hash[probe.sha1]}"
        report.files.append(FileReport(r, "skipped" if reason else "used", reason, label))
        if not reason:
            first_with_hash[probe.sha1] = r
            used.append((path, label))
    report.files.sort(key=lambda f: f.path)
    classes = sorted({label for _, label in used})
    index = {c: i for i, c in enumerate(classes)}
    samples = [Sample(str(p.resolve()), index[label]) for p, label in used]
    given = None
    train_counts = None
    if split_of:
        given = {"train": [], "val": []}
        for (p, _), s in zip(used, samples):
            given[split_of[p]].append(s)
        train_counts = Counter(classes[s.label] for s in given["train"])
    _check_counts(report.counts(), train_counts, report)
    return Dataset(classes, samples, report, str(root.resolve()), given)


def load_dataset(source: str | os.PathLike, workspace: str | os.PathLike,
                 limits: ArchiveLimits | None = None) -> Dataset:
    """A folder, an archive (.zip/.tar/.tar.gz/.tgz) or a CSV file -> Dataset.

    Bad individual files never raise: they are listed in ``report`` as skipped
    with the reason. DataError only when the source itself is unusable.
    """
    path = Path(source).expanduser()
    if not str(source).strip() or not path.exists():
        raise DataError(f"'{source}' does not exist: give a folder of class folders, a "
                        f".zip/.tar/.tar.gz archive or a .csv file")
    if path.is_dir():
        return _build(_unwrap(path), path)
    if path.suffix.lower() == ".csv":
        return _build(path.parent, path.parent, csv_file=path)
    if is_archive_name(path):
        folder = extract_archive(path, workspace, limits)
        return _build(_unwrap(folder), folder)
    raise DataError(f"{path.name}: unsupported file type '{path.suffix}'; give a folder, a "
                    f".zip/.tar/.tar.gz/.tgz archive or a .csv file")


def _fresh_dir(workspace, kind: str) -> Path:
    base = Path(workspace) / kind
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=base))


def dataset_from_files(files: list[str], relative_paths: list[str], workspace) -> Dataset:
    """Rebuild a folder dropped in the browser and load it.

    ``files`` are the server's temp copies (base names only); ``relative_paths``
    the browser's webkitRelativePath for each, in the same order. Gradio
    stores byte-identical files once, so the lists can differ in length:
    then each relative path takes the file with its base name.
    """
    dest = _fresh_dir(workspace, "uploads")
    files = [str(f) for f in files]
    rels = [str(r) for r in (relative_paths or [])]
    placed: dict[str, str] = {}       # relative path -> source file
    unplaced: list[tuple[str, str]] = []
    if len(rels) == len(files) and all(Path(f).name == Path(r.replace("\\", "/")).name
                                       for f, r in zip(files, rels)):
        pairs = list(zip(rels, files))
    else:
        by_name = defaultdict(list)
        for f in files:
            by_name[Path(f).name].append(f)
        pairs, matched = [], set()
        for r in rels:
            cands = by_name.get(Path(r.replace("\\", "/")).name)
            if cands:
                pairs.append((r, cands[0]))
                matched.add(cands[0])
            else:
                unplaced.append((r, "not received from the browser"))
        unplaced += [(Path(f).name, "could not be placed: its folder is unknown")
                     for f in files if f not in matched]
    for r, f in pairs:
        parts = safe_parts(r)
        if not parts:
            unplaced.append((r, "unsafe path"))
        elif "/".join(parts) in placed:
            unplaced.append((r, "listed twice"))
        else:
            placed["/".join(parts)] = f
            target = dest.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
    ds = load_dataset(dest, workspace)
    ds.report.files += [FileReport(r, "skipped", why) for r, why in unplaced]
    if unplaced:
        ds.report.warnings.append(f"{len(unplaced)} uploaded files could not be placed in their "
                                  f"folders; drop the folder again or upload a zip instead")
    return ds


def _check_class_name(name: str) -> str:
    name = (name or "").strip()
    if not name or name in (".", "..") or name.startswith(".") or re.search(r"[/\\\x00-\x1f]", name):
        raise DataError(f"class name {name!r} is not allowed: use letters, digits, spaces, - or _, "
                        f"without / or \\ and not starting with a dot")
    if len(name) > 100:
        raise DataError("class name is too long: keep it under 100 characters")
    return name


class ClassBuilder:
    """Teachable-Machine style classes, kept under <workspace>/classes/<session>/<class>/."""

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

    def _taken(self, name: str, ignore: str = "") -> bool:
        return any(c.lower() == name.lower() and c != ignore for c in self.classes())

    def add_class(self, name: str) -> None:
        name = _check_class_name(name)
        if self._taken(name):
            raise DataError(f"a class called '{name}' already exists; pick another name")
        (self.root / name).mkdir()

    def rename_class(self, old: str, new: str) -> None:
        src, new = self._dir(old), _check_class_name(new)
        if self._taken(new, ignore=src.name):
            raise DataError(f"a class called '{new}' already exists; pick another name")
        src.rename(self.root / new)

    def delete_class(self, name: str) -> None:
        shutil.rmtree(self._dir(name))

    def add_images(self, name: str, paths: list) -> int:
        """Copy image files (or PIL images / arrays) into the class; returns how many were new.

        Files are named by content hash, so adding the same picture twice
        doesn't count it twice; non-images are left out.
        """
        d, added = self._dir(name), 0
        for p in paths:
            if not isinstance(p, (str, os.PathLike)):
                added += self._save_array(d, p)
                continue
            probe = probe_image(p)
            target = d / f"{probe.sha1[:16]}{EXTENSION_FOR_FORMAT.get(probe.format, '')}"
            if not probe.reason and not target.exists():
                shutil.copyfile(p, target)
                added += 1
        return added

    def add_image_array(self, name: str, array) -> None:
        """Add one webcam frame: a PIL image or an HxW / HxWx3 / HxWx4 array."""
        self._save_array(self._dir(name), array)

    def _save_array(self, d: Path, array) -> int:
        import hashlib
        import numpy as np
        from PIL import Image
        im = array if isinstance(array, Image.Image) else None
        if im is None:
            a = np.asarray(array)
            if a.dtype.kind == "f":  # webcam libraries hand out floats in [0, 1]
                a = np.clip(a * 255.0, 0, 255).round()
            if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
                raise DataError(f"webcam image has shape {a.shape}; expected HxW or HxWx3")
            im = Image.fromarray(np.ascontiguousarray(a.astype(np.uint8).squeeze()))
        if min(im.size) < MIN_IMAGE_SIDE:
            raise DataError(f"image too small ({im.width}x{im.height})")
        im = load_rgb_from_image(im)
        target = d / f"{hashlib.sha1(im.tobytes()).hexdigest()[:16]}.png"
        if target.exists():
            return 0
        im.save(target)
        return 1

    def classes(self) -> dict[str, int]:
        return {d.name: sum(1 for f in d.iterdir() if f.is_file() and not _ignored(f.name))
                for d in sorted(self.root.iterdir()) if d.is_dir() and not _ignored(d.name)}

    def dataset(self) -> Dataset:
        return load_dataset(self.root, self.workspace)
