"""Corrections made on the spot (Demo tab): an image the model got wrong, saved under the class it really is.

Copy-on-fix: the user's own data folder is never written to. Each fix is one PNG in
``<workspace>/fixes/<run>/<class>/<sha256 of the pixels>.png``, so clicking twice on the
same image writes it once, and a retrain (``jobs.retrain_job``) trains on the run's own
training images plus these.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from .images import to_rgb
from .scan import Sample, class_name_problem

FIXES_DIR = "fixes"
MAX_FIX_SIDE = 1024   # a webcam frame or a phone photo is shrunk to this: training never needs more


def fixes_dir(workspace: str | os.PathLike, run_name: str) -> Path:
    if not run_name or run_name in (".", "..") or "/" in run_name or "\\" in run_name:
        raise DataError(f"bad run name {run_name!r}")
    return Path(workspace) / FIXES_DIR / run_name


def _png_bytes(image) -> bytes:
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3) or image.size == 0:
            raise DataError(f"not an image: an array of shape {image.shape}")
        image = Image.fromarray(np.ascontiguousarray(image).astype(np.uint8))
    if not isinstance(image, Image.Image):
        raise DataError("no image to add: upload one or take a webcam picture first")
    im = to_rgb(image)
    im.thumbnail((MAX_FIX_SIDE, MAX_FIX_SIDE))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def add_fix(workspace: str | os.PathLike, run_name: str, classes: list[str], true_class: str,
            image) -> tuple[Path, bool]:
    """Save ``image`` (PIL or an HxWx3 array) as an example of ``true_class``; (path, newly written?)."""
    if true_class not in classes:
        raise DataError(f"pick the right class from the list ({', '.join(classes[:10])}); "
                        f"{true_class!r} is not one of the model's classes")
    root = fixes_dir(workspace, run_name)
    folder = root / true_class
    # a class name is a folder name here: a model trained before CSV labels were checked (or a
    # hand-edited classes file) could carry "../x"; nothing is written outside the run's fixes
    problem = class_name_problem(true_class) or (
        "it leads out of the corrections folder" if folder.resolve().parent != root.resolve() else "")
    if problem:
        raise DataError(f"the class name {true_class!r} cannot be used as a folder name ({problem}); "
                        "retrain with that class renamed")
    data = _png_bytes(image)
    path = folder / f"{hashlib.sha256(data).hexdigest()[:20]}.png"
    if path.is_file():
        return path, False
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"   # atomic: a half-written PNG is never trained on
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path, True


def fixed_samples(workspace: str | os.PathLike, run_name: str, classes: list[str]) -> list[Sample]:
    """The fixes saved for a run, as training samples (class folders not among ``classes`` are ignored)."""
    root = fixes_dir(workspace, run_name)
    out = []
    for label, name in enumerate(classes):
        folder = root / name
        if folder.is_dir():
            out += [Sample(str(p.resolve()), label) for p in sorted(folder.glob("*.png"))]
    return out


def count_fixes(workspace: str | os.PathLike, run_name: str, classes: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in fixed_samples(workspace, run_name, classes):
        counts[classes[s.label]] = counts.get(classes[s.label], 0) + 1
    return counts
