"""How many more images each class needs: a learning curve of linear heads on the embeddings.

Method: train the same linear head as the label check on stratified subsets of the training
images (20 %, 40 %, ..., 100 % of each class, 2 seeds each) and score it on the validation images.
Per class, its validation recall against its training-image count n is fitted with the inverse
power law ``recall(n) = a - b * n^(-c)`` (scipy ``curve_fit``, 0 <= a <= 1, b, c > 0); when that
fit fails (flat or noisy points) a log-linear fit ``recall = p + q * ln n`` is used instead. The
fit predicts the recall at twice the images and the images needed to come within 2 points of its
ceiling ``a``.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from .labels import linear_head, normalise

FRACTIONS = (0.2, 0.4, 0.6, 0.8, 1.0)
SEEDS = 2
NEAR_CEILING = 0.02


@dataclass
class ClassCurve:
    name: str
    n_train: int
    counts: list[float]          # mean training images of this class at each fraction
    recall: list[float]          # mean validation recall at each fraction
    method: str                  # "power law" | "log-linear" | "too few images"
    recall_at_double: float | None
    images_for_ceiling: int | None   # total images for this class to come near the ceiling
    ceiling: float | None

    @property
    def more_needed(self) -> int | None:
        return None if self.images_for_ceiling is None else max(0, self.images_for_ceiling - self.n_train)


def _subset(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep.append(rng.choice(idx, max(1, round(len(idx) * fraction)), replace=False))
    return np.concatenate(keep)


def _fit(n: np.ndarray, r: np.ndarray) -> tuple[str, callable, float | None]:
    from scipy.optimize import curve_fit

    def power(x, a, b, c):
        return a - b * np.power(x, -c)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (a, b, c), _ = curve_fit(power, n, r, p0=(min(1.0, r.max() + 0.05), 1.0, 0.5),
                                     bounds=([0, 0, 0.01], [1, 100, 3]), maxfev=5000)
        if np.all(np.isfinite([a, b, c])):
            return "power law", (lambda x: float(power(x, a, b, c))), float(a)
    except (RuntimeError, ValueError):
        pass
    q, p = np.polyfit(np.log(n), r, 1)
    return "log-linear", (lambda x: float(min(1.0, p + q * math.log(x)))), None


def _needed(predict, ceiling: float | None, n_now: int) -> int | None:
    if ceiling is None:
        return None
    target = ceiling - NEAR_CEILING
    if predict(n_now) >= target:
        return n_now
    for n in range(n_now, 100 * n_now + 1, max(1, n_now // 20)):  # the first n that gets there
        if predict(n) >= target:
            return n
    return None


def learning_curve(features: np.ndarray, labels: np.ndarray, train: np.ndarray, val: np.ndarray,
                   classes: list[str], seed: int = 0) -> list[ClassCurve]:
    """One ClassCurve per class; ``train``/``val`` are index arrays into features/labels."""
    X, y = normalise(features), labels
    counts = np.zeros((len(FRACTIONS), len(classes)))
    recall = np.zeros((len(FRACTIONS), len(classes)))
    rng = np.random.default_rng(seed)
    for fi, fraction in enumerate(FRACTIONS):
        for _ in range(SEEDS if fraction < 1.0 else 1):
            part = train[_subset(y[train], fraction, rng)]
            weight = 1.0 / (SEEDS if fraction < 1.0 else 1)
            counts[fi] += weight * np.bincount(y[part], minlength=len(classes))
            if len(np.unique(y[part])) < 2:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pred = linear_head().fit(X[part], y[part]).predict(X[val])
            for c in range(len(classes)):
                mask = y[val] == c
                recall[fi, c] += weight * (float((pred[mask] == c).mean()) if mask.any() else 0.0)
    out = []
    for c, name in enumerate(classes):
        n_now = int((y[train] == c).sum())
        has_val = bool((y[val] == c).any())
        if not has_val or counts[0, c] < 2 or len(set(counts[:, c])) < 3:
            out.append(ClassCurve(name, n_now, counts[:, c].tolist(), recall[:, c].tolist(),
                                  "too few images", None, None, None))
            continue
        method, predict, ceiling = _fit(counts[:, c], recall[:, c])
        out.append(ClassCurve(name, n_now, counts[:, c].tolist(), recall[:, c].tolist(), method,
                              predict(2 * n_now), _needed(predict, ceiling, n_now), ceiling))
    return out
