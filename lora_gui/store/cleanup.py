"""Old browser uploads, unpacked archives, builds and other staging folders are removed; run data never is.

The app copies what people give it into the workspace: folders dropped in the
browser (``uploads/``), unpacked archives (``datasets/``), the per-class builder's
images (``classes/``), uploaded starting weights (``weights/``) and adapters
uploaded for testing (``uploaded_adapters/``); it also builds export zips and demo
apps (``exports/``), which it hands out through Gradio's cache. On a server that
runs for weeks these pile up. At start-up the app removes such folders that have
not changed for ``keep_days`` days, except any folder a run still needs: the files
its ``split.json`` lists (resuming, testing and evaluating an old run keep working)
and the weights file its ``config.json`` starts from (resuming needs it). Only
folders directly inside those areas are candidates, links are never followed, and
nothing outside the workspace is touched.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from ..errors import DamagedRun
from .records import RunRecord, SplitRecord

STAGING = ("uploads", "datasets", "classes", "weights", "uploaded_adapters", "exports")
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


def _needed_files(run_folder: Path) -> list[str]:
    """Every file outside the run folder that the run reads again: its images and starting weights."""
    files: list[str] = []
    try:
        record = SplitRecord.read(run_folder)
        files += [p for p, _ in record.train + record.val]
    except (DamagedRun, FileNotFoundError):
        pass    # an unreadable split protects nothing, and is not ours to fix
    try:
        weights = RunRecord.read(run_folder).config.model.weights_file
        files += [weights] if weights else []
    except (DamagedRun, FileNotFoundError):
        pass
    return files


def _referenced(workspace: Path) -> set[str]:
    """The staging folders (absolute paths) that some run needs a file from."""
    prefixes = {os.path.abspath(workspace / area) + os.sep for area in STAGING}
    prefixes |= {os.path.realpath(workspace / area) + os.sep for area in STAGING}
    used: set[str] = set()
    runs = {p.parent for p in workspace.glob("*/split.json")} | {p.parent for p in workspace.glob("*/config.json")}
    for run in runs:
        for path in map(os.path.abspath, _needed_files(run)):
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
