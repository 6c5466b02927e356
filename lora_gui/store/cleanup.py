"""Old browser uploads, unpacked archives and class-builder folders are removed; run data never is.

The app copies what people give it into the workspace: folders dropped in the
browser (``uploads/``), unpacked archives (``datasets/``) and the per-class
builder's images (``classes/``). On a server that runs for weeks these pile up.
At start-up the app removes such folders that have not changed for
``keep_days`` days, except any folder a run still trains or evaluates from
(its ``split.json`` lists the files): resuming, testing and evaluating an old
run keep working. Only folders directly inside those three are candidates, links
are never followed, and nothing outside the workspace is touched.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from ..errors import DamagedRun
from .records import SplitRecord

STAGING = ("uploads", "datasets", "classes")
DEFAULT_KEEP_DAYS = 7.0


def _newest_mtime(folder: Path) -> float:
    newest = folder.lstat().st_mtime
    for root, dirs, files in os.walk(folder):  # os.walk does not follow links
        for name in dirs + files:
            try:
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
            except OSError:
                pass
    return newest


def _referenced(workspace: Path) -> set[str]:
    """The staging folders (absolute paths) that some run's split.json names a file in."""
    prefixes = {os.path.abspath(workspace / area) + os.sep for area in STAGING}
    prefixes |= {os.path.realpath(workspace / area) + os.sep for area in STAGING}
    used: set[str] = set()
    for split in workspace.glob("*/split.json"):
        try:
            record = SplitRecord.read(split.parent)
        except DamagedRun:
            continue  # an unreadable split protects nothing, and is not ours to fix
        paths = [p for p, _ in record.train + record.val]
        for path in map(os.path.abspath, paths):
            for prefix in prefixes:
                if path.startswith(prefix):
                    used.add(prefix + path[len(prefix):].split(os.sep, 1)[0])
    return used


def stale_folders(workspace, keep_days: float = DEFAULT_KEEP_DAYS, now: float | None = None) -> list[Path]:
    """Staging folders unchanged for ``keep_days`` that no run uses (what ``clean`` would remove)."""
    root = Path(workspace)
    if keep_days <= 0 or not root.is_dir():
        return []
    cutoff = (now or time.time()) - keep_days * 86400
    used = _referenced(root)
    stale = []
    for area in STAGING:
        base = root / area
        if not base.is_dir() or base.is_symlink():
            continue
        for folder in sorted(base.iterdir()):
            if folder.is_symlink() or not folder.is_dir():
                continue
            if os.path.abspath(folder) in used or os.path.realpath(folder) in used:
                continue
            if _newest_mtime(folder) < cutoff:
                stale.append(folder)
    return stale


def clean(workspace, keep_days: float = DEFAULT_KEEP_DAYS) -> tuple[list[Path], int]:
    """Remove the stale folders; returns (removed, bytes freed)."""
    removed, freed = [], 0
    for folder in stale_folders(workspace, keep_days):
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())
        try:
            shutil.rmtree(folder)
        except OSError:
            continue  # in use or not ours to delete: leave it
        removed.append(folder)
        freed += size
    return removed, freed


GRADIO_CACHE = ".gradio_cache"


def gradio_cache_dir(workspace) -> Path:
    """Where the app's Gradio keeps uploads and the files it hands out (GRADIO_TEMP_DIR): inside the workspace."""
    return Path(workspace) / GRADIO_CACHE


def clear_gradio_cache(workspace) -> None:
    """Empty the Gradio cache at start: its files belonged to pages of the previous server, now gone."""
    cache = gradio_cache_dir(workspace)
    if cache.is_symlink():
        cache.unlink()
    elif cache.is_dir():
        shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
