"""Evaluate a trained adapter on its run's validation split: accuracy, per-class
precision / recall / F1, confusion matrix, and the images it got wrong.

No UI code: the Test tab shows what ``evaluate_run`` returns and draws the matrix
(``ui.charts.confusion_figure``). Images are decoded the way
training decoded its validation images (``load_rgb`` shrunk to
``cache_max_side``) and go through the model's own eval transform, so the
accuracy here matches the validation accuracy the run reported.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..data.decoded_cache import cache_max_side
from ..data.images import load_rgb
from ..errors import DataError
from ..store.records import RunRecord, SplitRecord
from .predict import LoadedAdapter, load_adapter


@dataclass
class EvalResult:
    classes: list[str]
    accuracy: float
    confusion: list[list[int]]   # confusion[true][predicted] = number of images
    per_class: list[dict]        # {"class", "precision", "recall", "f1", "support"}, in class order
    misclassified: list[tuple[str, str, str, float]] = field(default_factory=list)
    # (path, true class, predicted class, probability of the prediction), most confident first
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (path, why) images that could not be read

    @property
    def total(self) -> int:
        return sum(map(sum, self.confusion))

    @property
    def correct(self) -> int:
        return sum(self.confusion[i][i] for i in range(len(self.classes)))

    @property
    def macro(self) -> dict:
        """Unweighted means over the classes that have validation images."""
        rows = [r for r in self.per_class if r["support"]] or self.per_class
        n = max(1, len(rows))
        return {k: sum(r[k] for r in rows) / n for k in ("precision", "recall", "f1")}


def _safe_div(a: float, b: float) -> float:
    return a / b if b else 0.0   # scikit-learn's zero_division=0


def metrics_from_predictions(true: list[int], pred: list[int], classes: list[str]) -> tuple[float, list[list[int]], list[dict]]:
    """(accuracy, confusion matrix, per-class rows) from label indices."""
    if len(true) != len(pred):
        raise ValueError(f"{len(true)} labels but {len(pred)} predictions")
    k = len(classes)
    confusion = [[0] * k for _ in range(k)]
    for t, p in zip(true, pred):
        confusion[t][p] += 1
    rows = []
    for i, name in enumerate(classes):
        tp = confusion[i][i]
        support = sum(confusion[i])
        predicted = sum(confusion[r][i] for r in range(k))
        precision, recall = _safe_div(tp, predicted), _safe_div(tp, support)
        rows.append({"class": name, "precision": precision, "recall": recall,
                     "f1": _safe_div(2 * precision * recall, precision + recall), "support": support})
    accuracy = _safe_div(sum(confusion[i][i] for i in range(k)), len(true))
    return accuracy, confusion, rows


def find_run_dir(source: str | os.PathLike | None) -> Path | None:
    """The run folder that ``source`` (a run folder, its best/ or last/ folder, or an adapter file in one) belongs to."""
    if not source:
        return None
    p = Path(source)
    for candidate in (p, p.parent, p.parent.parent):
        # config.json alone makes a run: one whose split.json is missing is still a run (read_split
        # then says so), not an adapter from elsewhere
        if (candidate / "config.json").is_file():
            return candidate
    return None


def read_split(run_dir: str | os.PathLike, part: str = "val") -> list[tuple[str, int | str]]:
    """The (path, label) pairs of one part of a run's split.json (``DamagedRun`` if it is missing or damaged)."""
    items = getattr(SplitRecord.read(run_dir), part)
    if not items and part == "val":
        raise DataError(f"run {Path(run_dir).name} has no validation images (it was trained with validation "
                        "fraction 0); train with a validation fraction above 0 to evaluate")
    return list(items)


def _label_index(label, classes: list[str]) -> int:
    if isinstance(label, str) and not label.isdigit():
        if label not in classes:
            raise DataError(f"validation label {label!r} is not one of the model's classes ({', '.join(classes[:10])})")
        return classes.index(label)
    i = int(label)
    if not 0 <= i < len(classes):
        raise DataError(f"validation label {i} is out of range: the model has {len(classes)} classes")
    return i


def _check_run_classes(run_dir: Path | None, classes: list[str]) -> None:
    if run_dir is None:
        return
    saved = RunRecord.read(run_dir).classes
    if list(saved) != list(classes):
        raise DataError(f"the adapter's classes ({', '.join(classes[:6])}) are not those of run {run_dir.name} "
                        f"({', '.join(saved[:6])}); evaluate the run with its own adapter")


def evaluate_run(run_dir_or_loaded: str | os.PathLike | LoadedAdapter, samples: list | None = None,
                 batch_size: int = 32, *, run_dir: str | os.PathLike | None = None, device: str = "cpu",
                 progress: Callable[[int, int], None] | None = None) -> EvalResult:
    """Evaluate a run folder's adapter (or an already loaded one) on ``samples``.

    ``samples`` are (path, label) pairs, the label a class index or name; when
    None they are the validation split of the run (``split.json``). Pass
    ``run_dir`` with a LoadedAdapter to evaluate it on that run's split.
    ``progress(done, total)`` is called after each batch. Unreadable images
    are left out and listed in ``skipped``; if none can be read, DataError.
    """
    if isinstance(run_dir_or_loaded, LoadedAdapter):
        loaded = run_dir_or_loaded
    else:
        run_dir = run_dir if run_dir is not None else run_dir_or_loaded
        loaded = load_adapter(run_dir_or_loaded, device=device)
    classes = list(loaded.classes)
    run = find_run_dir(run_dir)
    if samples is None:
        if run is None:
            raise FileNotFoundError("this adapter is not inside a run folder, so it has no validation split; "
                                    "evaluate a run from the Runs tab")
        samples = read_split(run)
    _check_run_classes(run, classes)
    items = [(str(path), _label_index(label, classes)) for path, label in samples]
    if not items:
        raise DataError("no validation images to evaluate")
    max_side = cache_max_side(loaded.meta.data_config) if loaded.meta is not None else None
    true, pred, probs, paths, skipped = [], [], [], [], []
    batch_size = max(1, int(batch_size))
    for start in range(0, len(items), batch_size):
        tensors, labels, names = [], [], []
        for path, label in items[start:start + batch_size]:
            try:
                tensors.append(loaded.transform(load_rgb(path, max_side)))
            except DataError as exc:
                skipped.append((path, str(exc)))
                continue
            labels.append(label)
            names.append(path)
        if tensors:
            with torch.inference_mode():
                p = loaded.model(torch.stack(tensors).to(loaded.device)).float().softmax(dim=-1)
            top, idx = p.max(dim=-1)
            true += labels
            pred += idx.tolist()
            probs += top.tolist()
            paths += names
        if progress is not None:
            progress(min(start + batch_size, len(items)), len(items))
    if not true:
        path, why = skipped[0]
        raise DataError(f"none of the {len(items)} validation images could be read (e.g. {why}); "
                        "were the data files moved or deleted?")
    accuracy, confusion, rows = metrics_from_predictions(true, pred, classes)
    wrong = [(path, classes[t], classes[p], prob) for path, t, p, prob in zip(paths, true, pred, probs) if t != p]
    wrong.sort(key=lambda w: -w[3])
    return EvalResult(classes, accuracy, confusion, rows, wrong, skipped)
