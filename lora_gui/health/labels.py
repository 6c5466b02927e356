"""Suspected wrong labels and outliers, from the images' embeddings.

Wrong labels: out-of-fold predicted probabilities of a linear head (scikit-learn's
LogisticRegression, k-fold so no image is judged by a head that saw it), ranked by cleanlab's
``find_label_issues`` / ``get_label_quality_scores`` (confident learning). Outliers: cleanlab's
``OutOfDistribution`` (mean distance to the k nearest neighbours), flagged when far beyond the
dataset's usual distances, plus images that are blank (no detail at all) whatever their distance.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_FOLDS = 5
BLANK_STD = 2.0          # grey levels: a picture with less spread than this shows nothing
OUTLIER_IQR = 3.0        # far-out points in Tukey's sense (Q3 + 3 IQR) on the kNN-distance score


@dataclass
class LabelSuspect:
    index: int               # into the audited samples
    given: int
    suggested: int
    confidence: float        # out-of-fold probability of the suggested class
    quality: float           # cleanlab's label quality score (low = likely wrong)


def normalise(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def linear_head():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    # strong regularisation: ~1000-d features from a few hundred images; it also converges in few steps
    return make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=100, tol=1e-3))


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """(n, classes) probabilities, each row from a head trained on the other folds."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    folds = int(min(MAX_FOLDS, np.bincount(labels).min()))
    if folds < 2:
        raise ValueError("every class needs at least 2 images for a label check")
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(linear_head(), normalise(features), labels, cv=cv, method="predict_proba")


def label_suspects(features: np.ndarray, labels: np.ndarray, seed: int = 0
                   ) -> tuple[list[LabelSuspect], np.ndarray, np.ndarray]:
    """(suspects most likely wrong first, label quality of every image, out-of-fold probabilities)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    probs = out_of_fold_probabilities(features, labels, seed)
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    # n_jobs=1: its default process pool costs more than the work for a few thousand images (0.3 s vs 0.01 s)
    ranked = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    # cleanlab counts an image as confidently another class only above that class's average
    # confidence; with a dozen images per class and a strongly regularised head the probabilities are
    # compressed, and an obvious swap (two sneakers among sixteen bags, out-of-fold 0.87 sneaker) stays
    # under it: nothing was listed. So an image that the other folds put in another class, giving its
    # own label less than chance (1/k), is listed too; the order stays cleanlab's quality score.
    own = probs[np.arange(len(labels)), labels]
    clear = np.flatnonzero((probs.argmax(axis=1) != labels) & (own < 1.0 / probs.shape[1]))
    ranked = sorted({int(i) for i in ranked} | {int(i) for i in clear}, key=lambda i: (quality[i], i))
    suspects = [LabelSuspect(int(i), int(labels[i]), int(probs[i].argmax()), float(probs[i].max()),
                             float(quality[i])) for i in ranked]
    return suspects, quality, probs


@dataclass
class Outlier:
    index: int
    score: float             # cleanlab's out-of-distribution score: 0 far from everything, 1 typical
    reason: str


def outliers(features: np.ndarray, pixel_std: np.ndarray) -> tuple[list[Outlier], np.ndarray]:
    """(outliers, most unusual first; every image's score)."""
    from cleanlab.outlier import OutOfDistribution
    n = len(features)
    k = int(min(10, n - 1))
    if k < 1:
        return [], np.ones(n)
    scores = OutOfDistribution(params={"k": k}).fit_score(features=normalise(features), verbose=False)
    # the score is exp(-t * distance); Tukey's far-out rule on the distance (its -log)
    dist = -np.log(np.maximum(scores, 1e-30))
    q1, q3 = np.percentile(dist, [25, 75])
    far = dist > q3 + OUTLIER_IQR * max(q3 - q1, 1e-9)
    found = []
    for i in np.argsort(scores, kind="stable"):
        if pixel_std[i] < BLANK_STD:
            found.append(Outlier(int(i), float(scores[i]), "blank image: no detail in it"))
        elif far[i]:
            found.append(Outlier(int(i), float(scores[i]), "unlike every other image"))
    return found, scores
