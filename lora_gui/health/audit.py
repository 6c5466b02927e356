"""The health check of a dataset: wrong labels, near-duplicates and leaks, outliers, the classes
that need more images, and a 2-D map of all images. The CLI's ``audit`` and the app's Health
check step both call ``run_audit``; neither changes the dataset (fixes go to ``data.fixes``).
"""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from threadpoolctl import threadpool_limits

from ..config import DataConfig, ModelConfig
from ..data import Dataset, split_dataset
from ..data.fixes import read_fixes, relative_path
from . import curve, duplicates, labels
from .embeddings import embed_paths

Progress = Callable[[float, str], None]
KINDS = ("label", "leak", "label conflict", "duplicate", "exact duplicate", "outlier")


@dataclass
class Finding:
    kind: str                 # one of KINDS
    paths: list[str]          # absolute; the first is the one a fix applies to
    labels: list[str]         # given label of each path
    suggested: str | None     # for kind "label": the class the images say
    score: float              # kind-specific: confidence, cosine similarity, outlier score
    note: str = ""

    def as_json(self, ds: Dataset) -> dict:
        return {"kind": self.kind, "files": self.paths, "relative": [relative_path(ds, p) for p in self.paths],
                "given_labels": self.labels, "suggested_label": self.suggested,
                "score": round(self.score, 4), "note": self.note}


@dataclass
class AuditResult:
    classes: list[str]
    paths: list[str]
    given: list[int]
    parts: list[str]                      # "train" | "val" per image
    findings: list[Finding]
    curves: list[curve.ClassCurve]
    map_xy: np.ndarray                    # (n, 2) PCA projection of the embeddings
    seconds: dict = field(default_factory=dict)
    decisions: dict = field(default_factory=dict)  # the fixes record at audit time

    def of_kind(self, *kinds: str) -> list[Finding]:
        return [f for f in self.findings if f.kind in kinds]

    def as_json(self, ds: Dataset) -> dict:
        return {"classes": self.classes, "images": len(self.paths),
                "counts": {k: len(self.of_kind(k)) for k in KINDS},
                "findings": [f.as_json(ds) for f in self.findings],
                "more_images": [{"class": c.name, "train_images": c.n_train, "method": c.method,
                                 "recall_now": round(c.recall[-1], 4),
                                 "recall_at_double": None if c.recall_at_double is None else round(c.recall_at_double, 4),
                                 "more_images_needed": c.more_needed} for c in self.curves],
                "seconds": {k: round(v, 2) for k, v in self.seconds.items()}}


def _exact_duplicates(ds: Dataset) -> list[Finding]:
    """Byte-identical files the scan already left out (kept copy named in the report)."""
    base = ds.unfixed or ds
    by_rel = {relative_path(base, s.path): s for s in base.samples}
    # report paths are relative to what the user gave, maybe a folder above the root: find that prefix
    prefix = next((f.path[:-len(r)] for f in base.report.files for r in [relative_path(base, s.path)
                   for s in base.samples[:1]] if f.status == "used" and f.path.endswith(r)), "")
    out = []
    for f in base.report.files:
        if f.status == "skipped" and f.reason.startswith("duplicate of "):
            kept = f.reason[len("duplicate of "):]
            kept_sample = next((s for r, s in by_rel.items() if kept == r or kept.endswith("/" + r)), None)
            inside = f.path[len(prefix):] if f.path.startswith(prefix) else f.path
            paths = [os.path.join(base.root, inside)] + ([kept_sample.path] if kept_sample else [])
            out.append(Finding("exact duplicate", paths, [f.label] + ([base.classes[kept_sample.label]]
                               if kept_sample else []), None, 1.0, f"already left out: same bytes as {kept}"))
    return out


def run_audit(ds: Dataset, workspace: str | os.PathLike, model: ModelConfig | None = None,
              split: DataConfig | None = None, progress: Progress | None = None) -> AuditResult:
    """Audit ``ds`` as it stands (fixes already applied are respected: excluded files are gone)."""
    progress = progress or (lambda f, m: None)
    split = split or DataConfig()
    if len(ds.samples) < 4 or len(ds.classes) < 2:
        raise ValueError("the health check needs at least 2 classes and 4 images")
    train, val = split_dataset(ds, split.val_fraction, split.split_seed)
    samples = train + val
    paths = [s.path for s in samples]
    y = np.array([s.label for s in samples])
    parts = ["train"] * len(train) + ["val"] * len(val)
    seconds, t = {}, time.time()
    features = embed_paths(paths, workspace, model,
                           lambda d, n: progress(0.75 * d / max(1, n), f"embedding images {d}/{n}"))
    seconds["embeddings"] = time.time() - t
    # One BLAS thread for the small problems that follow (logistic regressions on ~1,000 x 1,280
    # features, kNN, PCA): with OpenBLAS's two threads beside torch's on a 2-core CPU, one fit of the
    # label check took 5-14 s instead of 0.3 s (benchmarks/README.md, health check).
    with threadpool_limits(limits=1, user_api="blas"):
        findings, curves, map_xy = _analyse(ds, features, paths, y, parts, len(train), seconds, progress)
    progress(1.0, "done")
    return AuditResult(ds.classes, paths, y.tolist(), parts, findings, curves, map_xy, seconds,
                       read_fixes(workspace, ds))


def _analyse(ds: Dataset, features: np.ndarray, paths: list[str], y: np.ndarray, parts: list[str],
             n_train: int, seconds: dict, progress: Progress):
    """Every finding, the learning curves and the map, from the embeddings (times into ``seconds``)."""
    t = time.time()
    progress(0.78, "checking labels")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's ConvergenceWarning: a few steps are enough here
        suspects, _, _ = labels.label_suspects(features, y) if np.bincount(y).min() >= 2 else ([], None, None)
    seconds["labels"], t = time.time() - t, time.time()
    findings = [Finding("label", [paths[s.index]], [ds.classes[s.given]], ds.classes[s.suggested], s.confidence,
                        f"label quality {s.quality:.2f}") for s in suspects]
    progress(0.85, "looking for duplicates and leaks")
    sigs = duplicates.signatures(paths)
    for p in duplicates.near_duplicates(sigs, features, y, parts):
        # the validation copy first: that is the one to leave out of a leak
        i, j = (p.second, p.first) if parts[p.second] == "val" and parts[p.first] == "train" else (p.first, p.second)
        findings.append(Finding(p.kind, [paths[i], paths[j]], [ds.classes[y[i]], ds.classes[y[j]]],
                                None, p.cosine, f"{parts[i]}/{parts[j]}, phash {p.phash_bits} bits apart, "
                                f"cosine {p.cosine:.3f}"))
    findings += _exact_duplicates(ds)
    seconds["duplicates"], t = time.time() - t, time.time()
    progress(0.9, "looking for outliers")
    found, _ = labels.outliers(features, np.array([s.pixel_std for s in sigs]))
    findings += [Finding("outlier", [paths[o.index]], [ds.classes[y[o.index]]], None, o.score, o.reason)
                 for o in found]
    seconds["outliers"], t = time.time() - t, time.time()
    progress(0.93, "learning curve")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        curves = (curve.learning_curve(features, y, np.arange(n_train), np.arange(n_train, len(paths)),
                                       ds.classes) if n_train < len(paths) else [])
    seconds["learning_curve"], t = time.time() - t, time.time()
    from sklearn.decomposition import PCA
    map_xy = PCA(n_components=2, random_state=0).fit_transform(labels.normalise(features))
    seconds["map"] = time.time() - t
    return findings, curves, map_xy
