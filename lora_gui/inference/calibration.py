"""An honest "not sure": temperature scaling fitted on a run's validation split, and the
confidence threshold below which an answer is "not sure — looks most like X".

Temperature scaling (Guo et al., 2017) divides the logits by one number T fitted by
L-BFGS on the validation negative log-likelihood: the ranking (and so the accuracy) never
changes, only how sure the probabilities claim to be. The threshold is then chosen
against ``coverage_curve``: for each threshold, the share of validation answers that are
kept (top probability >= threshold) and how many of those are right.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch.nn import functional as F

from ..data.decoded_cache import cache_max_side
from ..data.images import load_rgb
from ..errors import DataError
from ..store.calibration_file import Calibration, read_calibration, write_calibration
from .evaluate import _check_run_classes, _label_index, find_run_dir, read_split
from .predict import LoadedAdapter

THRESHOLDS = [round(i / 20, 2) for i in range(20)]   # 0.00, 0.05 ... 0.95
TARGET_ACCURACY = 0.95   # the default threshold keeps answers this accurate, if that keeps at least half
MIN_COVERAGE = 0.5


def validation_logits(loaded: LoadedAdapter, run_dir: str | os.PathLike,
                      batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw logits [N, classes], labels [N]) of the run's validation images, decoded as evaluation does."""
    run = find_run_dir(run_dir)
    if run is None:
        raise DataError("this model is not inside a run folder, so it has no validation split to calibrate on; "
                        "pick a run trained in lora_gui (Runs tab)")
    _check_run_classes(run, list(loaded.classes))
    items = [(str(p), _label_index(label, list(loaded.classes))) for p, label in read_split(run)]
    max_side = cache_max_side(loaded.meta.data_config)
    logits, labels = [], []
    for start in range(0, len(items), batch_size):
        tensors, chunk_labels = [], []
        for path, label in items[start:start + batch_size]:
            try:
                tensors.append(loaded.transform(load_rgb(path, max_side)))
            except DataError:
                continue   # unreadable now: left out, as evaluate_run does
            chunk_labels.append(label)
        if tensors:
            with torch.inference_mode():
                logits.append(loaded.model(torch.stack(tensors).to(loaded.device)).float().cpu())
            labels += chunk_labels
    if not labels:
        raise DataError("none of the validation images could be read; were the data files moved or deleted?")
    return torch.cat(logits), torch.tensor(labels)


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / T)."""
    return float(F.cross_entropy(logits.float() / temperature, labels))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The T minimising the validation NLL of logits / T (L-BFGS on log T, so T stays positive)."""
    logits, labels = logits.detach().float(), labels.detach().long()
    right = int((logits.argmax(dim=-1) == labels).sum())
    if right in (0, len(labels)):
        # every answer right (or every one wrong): the NLL keeps falling as T goes to 0 (or infinity),
        # so the split says nothing about over- or under-confidence; leave the probabilities alone
        return 1.0
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    if not math.isfinite(t):
        return 1.0
    t = min(max(t, 0.05), 50.0)   # a degenerate split (all right, all wrong) must not give absurd values
    return t if nll(logits, labels, t) <= nll(logits, labels, 1.0) else 1.0


def coverage_curve(probs: torch.Tensor, labels: torch.Tensor, thresholds=THRESHOLDS) -> list[dict]:
    """Per threshold: coverage (share of answers with top probability >= threshold) and the
    accuracy of those kept answers (None when none is kept)."""
    top, pred = probs.max(dim=-1)
    right = pred == labels
    rows = []
    for th in thresholds:
        kept = top >= th
        n = int(kept.sum())
        rows.append({"threshold": float(th), "coverage": n / len(labels),
                     "accuracy": float(right[kept].float().mean()) if n else None})
    return rows


def default_threshold(curve: list[dict]) -> float:
    """The lowest threshold whose kept answers reach TARGET_ACCURACY while keeping MIN_COVERAGE; else 0.5."""
    for row in curve:
        if row["accuracy"] is not None and row["accuracy"] >= TARGET_ACCURACY and row["coverage"] >= MIN_COVERAGE:
            return row["threshold"]
    return 0.5


def adapter_dir(loaded: LoadedAdapter, source: str | os.PathLike) -> Path:
    """Where calibration.json goes: beside the adapter file that was loaded (a run's best/)."""
    if loaded.source_file is not None:
        return Path(loaded.source_file).parent
    p = Path(source)
    return p / "best" if (p / "best").is_dir() else (p if p.is_dir() else p.parent)


def calibrate(loaded: LoadedAdapter, run_dir: str | os.PathLike, threshold: float | None = None,
              save: bool = True) -> Calibration:
    """Fit T on the run's validation split, compute the coverage/accuracy curve at that T, pick
    (or keep) the threshold, save calibration.json beside the adapter and use it in ``loaded``."""
    logits, labels = validation_logits(loaded, run_dir)
    t = fit_temperature(logits, labels)
    curve = coverage_curve((logits / t).softmax(dim=-1), labels)
    cal = Calibration(temperature=t, threshold=default_threshold(curve) if threshold is None else threshold,
                      nll_before=nll(logits, labels), nll_after=nll(logits, labels, t), curve=curve)
    if save:
        write_calibration(adapter_dir(loaded, run_dir), cal)
    loaded.calibration = cal
    return cal


def set_threshold(loaded: LoadedAdapter, source: str | os.PathLike, threshold: float) -> Calibration:
    """Change only the threshold (the slider), keeping the fitted temperature; saved."""
    where = adapter_dir(loaded, source)
    cal = loaded.calibration or read_calibration(where) or Calibration()
    cal = Calibration(cal.temperature, float(threshold), cal.nll_before, cal.nll_after, cal.curve)
    write_calibration(where, cal)
    loaded.calibration = cal
    return cal


def verdict(loaded: LoadedAdapter, top: list[tuple[str, float]]) -> tuple[bool, str]:
    """(not sure?, a sentence for people) for one image's top-k from ``predict``."""
    if not top:
        return True, "not sure"
    name, p = top[0]
    cal = loaded.calibration
    if cal is not None and cal.unsure(p):
        return True, f"Not sure — looks most like {name} ({p:.0%}, below the {cal.threshold:.0%} threshold)"
    return False, f"{name} ({p:.0%})"
