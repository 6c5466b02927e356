"""Build a dataset class by class from uploaded files and webcam snapshots.

Each session gets its own folder under the workspace, so two people never
write into each other's classes.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from .images import (
    EXTENSION_FOR_FORMAT,
    MIN_IMAGE_SIDE,
    checked_image,
    probe_image,
    to_rgb,
)
from .scan import Dataset, class_name_problem, is_ignored
from .sources import load_dataset


def _check_class_name(name: str) -> str:
    name = (name or "").strip()
    if not name or class_name_problem(name):
        raise DataError(f"class name {name!r} is not allowed: use up to 100 letters, digits, "
                        f"spaces, - or _, without / or \\, not starting with a dot")
    return name


@dataclass
class AddedImages:
    """What ``add_images`` did: how many new pictures, and each file it left out with why."""

    added: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)

    def summary(self) -> str:
        text = f"{self.added} image(s) added"
        if self.skipped:
            text += f", {len(self.skipped)} left out: " + "; ".join(f"{n} ({why})" for n, why in self.skipped[:5])
        return text


class ClassBuilder:
    """Teachable-Machine style classes, kept under <workspace>/classes/<session_id>/<class>/.

    State lives on disk, so ``dataset()`` is an ordinary folder load. The folder is the page's
    session's: a reloaded page is a new session and starts an empty set (the old folder stays).
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

    def add_images(self, name: str, paths: list) -> AddedImages:
        """Copy image files (PIL images and arrays work too) in.

        Files are named by content hash, so the same picture added twice is
        stored once; files that aren't usable images are left out and listed
        in the result with the reason.
        """
        d, result = self._dir(name), AddedImages()
        for p in paths:
            if not isinstance(p, (str, os.PathLike)):
                try:
                    result.added += self._save_array(d, p)
                except DataError as exc:
                    result.skipped.append(("pasted image", str(exc)))
                continue
            probe = probe_image(p)
            if probe.reason:
                result.skipped.append((Path(p).name, probe.reason))
                continue
            target = d / f"{probe.sha1[:16]}{EXTENSION_FOR_FORMAT.get(probe.format, '')}"
            if not target.exists():
                shutil.copyfile(p, target)
                result.added += 1
        return result

    def add_image_array(self, name: str, array) -> None:
        """Add one webcam frame: a PIL image or an HxW / HxWx3 / HxWx4 array."""
        self._save_array(self._dir(name), array)

    def _save_array(self, d: Path, array) -> int:
        import numpy as np
        from PIL import Image
        checked_image(array)  # before any copy or conversion of its pixels
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
