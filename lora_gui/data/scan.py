"""Reading a folder of labelled images into a Dataset with a full report.

Decides the layout (class folders, train/val split folders, or a flat
folder with a CSV of filename,label), checks every file and derives the
blocking errors and warnings. ``lora_gui.data`` is the public face; this
module holds the record types and the scanning rules.
"""
from __future__ import annotations

import csv
import io
import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from .archives import safe_parts
from .files import read_regular
from .images import probe_image
from .walk import SCAN_SECONDS, Scan, is_ignored  # noqa: F401  (SCAN_SECONDS, is_ignored: re-exported)

FEW_PER_CLASS = 10
IMBALANCE_RATIO = 5.0
_TRAIN_DIRS = ("train", "training")
_VAL_DIRS = ("val", "valid", "validation", "test")  # the first one present is used
_CSV_FILE_COLUMNS = ("filename", "file", "path", "image", "filepath", "image_path")
_CSV_LABEL_COLUMNS = ("label", "class", "category")
MAX_CSV_BYTES = 64 * 1024**2
MAX_CLASS_NAME = 100


def class_name_problem(name: str) -> str:
    """Why ``name`` cannot be a class name, or "". A class name becomes a folder name (the
    class builder's folders, the Demo tab's corrections, exports), so it may not hold a path."""
    if name.startswith("."):   # a hidden folder, and ".." climbs out of the folder it is made in
        return "starts with a dot"
    if re.search(r"[/\\\x00-\x1f]", name):
        return "holds / or \\ or a control character"
    if len(name) > MAX_CLASS_NAME:
        return f"is longer than {MAX_CLASS_NAME} characters"
    return ""


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
        lines = [f"{_n(sum(counts.values()), 'image')} used in {_n(len(counts), 'class')}, "
                 f"{_n(sum(skipped.values()), 'file')} skipped"
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
    unfixed: Dataset | None = None  # before the health check's fixes (data.fixes), when any applied
    fixes_by: str = ""   # whose health-check record applies: "" the workspace's own (data.fixes)

    def class_counts(self) -> dict[str, int]:
        c = Counter(s.label for s in self.samples)
        return {name: c.get(i, 0) for i, name in enumerate(self.classes)}


def unwrap(folder: Path) -> Path:
    """Step into a lone wrapping folder (``myset.zip`` -> ``myset/cat/...``).

    Only when that folder itself holds folders or a CSV: a lone folder of
    images is one class, and saying so beats calling it "no class folders".
    """
    quiet = Scan(folder)  # only looks; the real scan reports what is skipped
    while True:
        dirs, files = quiet.entries(folder)
        if files or len(dirs) != 1:
            return folder
        inner_dirs, inner_files = quiet.entries(dirs[0])
        if not inner_dirs and not any(f.suffix.lower() == ".csv" for f in inner_files):
            return folder
        folder = dirs[0]


def _read_csv(path: Path) -> list[tuple[str, str]]:
    """(filename, label) rows; DataError if the header names no usable columns."""
    try:
        text = read_regular(path, MAX_CSV_BYTES).decode("utf-8-sig")
        # spreadsheets in many locales save "CSV" with ';' (or tabs) between columns
        first = text.split("\n", 1)[0]
        sep = next((c for c in (",", ";", "\t") if c in first), ",")
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=sep))
    except DataError as exc:
        raise DataError(f"could not read {path.name}: {str(exc).removeprefix(f'{path}: ')}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
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
    csvs = [p for p in Scan(folder).entries(folder)[1] if p.suffix.lower() == ".csv"]
    for p in sorted(csvs, key=lambda p: p.name.lower() != "labels.csv"):
        try:
            _read_csv(p)
            return p
        except DataError:
            continue
    return None


def _plan(scan: Scan, csv_file: Path | None):
    """Decide the layout: (candidates, skipped, split_of) before any decoding.

    candidates: (path, label) to probe; skipped: (path, reason) known without
    decoding; split_of: path -> "train"/"val" for split layouts.
    """
    # a CSV given as the source labels only what it lists; one found in a
    # folder source means the rest of that folder must be accounted for too
    walk_rest = csv_file is None
    csv_file = csv_file or _labelled_csv(scan.root)
    if csv_file is not None:
        candidates, skipped = _plan_csv(scan, csv_file, walk_rest)
        return candidates, skipped, {}
    return _plan_folders(scan)


def _plan_csv(scan: Scan, csv_file: Path, walk_rest: bool):
    """(candidates, skipped) for a CSV of file,label lines; with ``walk_rest`` every file of the
    folder that the CSV does not list is reported as skipped."""
    candidates, skipped = [], []
    listed, labels, mentioned = {}, {}, set()
    for name, label in _read_csv(csv_file):
        parts = safe_parts(name)
        path = csv_file.parent.joinpath(*parts) if parts else None
        mentioned.add(path)
        if not name:
            skipped.append((f"{csv_file.name}, a line with label {label!r}", "no file name in CSV"))
        elif path is None:
            skipped.append((name, "unsafe path in CSV"))
        elif not label:
            skipped.append((path, "no label in CSV"))
        elif problem := class_name_problem(label):
            skipped.append((path, f"label {label!r} in CSV {problem}: rename that class in the CSV"))
        elif path in labels:  # listed again: one line for the file, whatever the count
            labels[path].append(label)
        else:
            scan.tick()
            kind = scan.kind(path) if os.path.lexists(path) else "listed in CSV but missing"
            labels[path] = [label]
            if kind == "file":
                listed[path] = label
            elif kind == "dir":
                skipped.append((path, "listed in CSV but is a folder"))
            elif kind == "listed in CSV but missing":
                skipped.append((path, kind))
    for path, label in listed.items():
        named = list(dict.fromkeys(labels[path]))
        if len(named) > 1:
            skipped.append((path, f"listed {len(labels[path])} times in CSV with different labels "
                                  f"({', '.join(named)})"))
        else:
            candidates.append((path, label))
    if walk_rest:
        skipped += [(p, "not listed in CSV") for p in scan.walk(scan.root)
                    if p not in mentioned and p != csv_file and p.suffix.lower() != ".csv"]
    return candidates, skipped


def _plan_folders(scan: Scan):
    """(candidates, skipped, split_of) for class folders, or train/ + val/ folders of class folders."""
    root = scan.root
    candidates, skipped, split_of = [], [], {}
    dirs, files = scan.entries(root)
    by_name = {d.name.lower(): d for d in dirs}
    train = next((by_name[n] for n in _TRAIN_DIRS if n in by_name), None)
    val = next((by_name[n] for n in _VAL_DIRS if n in by_name), None)
    splits = {"train": train, "val": val} if train and val else {"": root}
    for split, top in splits.items():
        for p in scan.walk(top):
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
                skipped += [(p, f"not in {train.name}/ or {val.name}/") for p in scan.walk(d)]
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
    few = []
    for name, n in counts.items():
        if n < 2:
            report.errors.append(f"class '{name}' has only {n} usable image; each class needs at "
                                 f"least 2 (one to train on, one to check against): add more")
        elif n < FEW_PER_CLASS:
            few.append((name, n))
        if train_counts is not None and not train_counts.get(name):
            report.errors.append(f"class '{name}' has no training images: add some to train/{name}/")
    if len(few) == 1:
        report.warnings.append(f"class '{few[0][0]}' has only {few[0][1]} images; {FEW_PER_CLASS} or more "
                               f"per class give much better results")
    elif few:   # one line, not one per class (a set of 14 small classes gave 14 lines)
        listed = ", ".join(f"'{name}' {n}" for name, n in few[:6]) + (f" and {len(few) - 6} more" if len(few) > 6 else "")
        report.warnings.append(f"classes with few images: {listed}; {FEW_PER_CLASS} or more per class give "
                               f"much better results")
    big, small = max(counts, key=counts.get), min(counts, key=counts.get)
    if counts[small] and counts[big] / counts[small] > IMBALANCE_RATIO:
        report.warnings.append(f"classes are imbalanced: '{big}' has {counts[big]} images, '{small}' "
                               f"only {counts[small]}; the model may favour '{big}'. Add images "
                               f"to the small classes if you can")


def build_dataset(root: Path, report_base: Path, csv_file: Path | None = None,
                  scan_seconds: float | None = None) -> Dataset:
    """Scan ``root`` into a Dataset; DataError when it takes longer than ``scan_seconds``
    (default ``SCAN_SECONDS``)."""
    scan = Scan(root, scan_seconds)
    candidates, skipped, split_of = _plan(scan, csv_file)
    # what the walk refused (links out, FIFOs, devices, hidden folders), one line each
    seen = {p for p, _ in skipped}
    skipped += [(p, why) for p, why in dict(scan.skipped).items() if p not in seen]

    def rel(p) -> str:  # str: an unsafe CSV entry, reported as written
        return p if isinstance(p, str) else Path(os.path.relpath(p, report_base)).as_posix()

    def probe(candidate):
        scan.tick()  # the time limit holds while decoding too
        return probe_image(candidate[0])
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        probes = list(pool.map(probe, candidates))
    report = ValidationReport(files=[FileReport(rel(p), "skipped", reason) for p, reason in skipped])
    first_with_hash: dict[str, str] = {}
    used: list[tuple[Path, str]] = []  # stable order: train, then val, each by path
    # sorted so the kept copy of a duplicate is the same on every run; in a
    # train/val layout train comes first, so the val copy is the one dropped
    order = sorted(zip(candidates, probes), key=lambda t: (split_of.get(t[0][0], "") == "val", rel(t[0][0])))
    for (path, label), probe in order:
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
    if csv_file is None and not split_of:
        # a class folder with nothing usable in it is no class: say so, or it silently vanishes
        empty = [d.name for d in scan.entries(root)[0] if d.name not in index]
        if empty:
            report.warnings.append(f"{_n(len(empty), 'folder')} without usable pictures, so not "
                                   f"{'a class' if len(empty) == 1 else 'classes'}: "
                                   + ", ".join(f"'{name}'" for name in empty[:8])
                                   + "; add pictures to it, or remove it")
    return Dataset(classes, samples, report, str(root.resolve()), given)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "es" if noun.endswith("s") else "s")
