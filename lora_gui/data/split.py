"""The stratified, seeded train/validation split."""
from __future__ import annotations

import random

from ..errors import DataError
from .scan import Dataset, Sample


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
