"""Walking a dataset folder without ever hanging or leaving it.

Only regular files and folders inside the dataset root are opened: a link is followed only
when what it points to is inside the root, FIFOs, sockets and devices are reported and left
alone (opening a FIFO blocks forever; /dev/zero never ends), and a scan has a time limit.
"""
from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from ..errors import DataError
from .files import file_type

SCAN_SECONDS = 120.0   # a scan that takes longer is stopped (DataError) rather than holding a worker
_SYSTEM_FILES = {"thumbs.db", "ehthumbs.db", "desktop.ini"}
_SYSTEM_DIRS = {"__macosx", "$recycle.bin", "system volume information"}


def is_ignored(name: str) -> bool:
    """System clutter people never meant as data; skipped without a report line."""
    return name.startswith(".") or name.lower() in _SYSTEM_FILES or name.lower() in _SYSTEM_DIRS


_TOOL_DIRS = {".git", ".svn", ".hg", ".ipynb_checkpoints", ".cache", ".trash", ".trashes", ".fseventsd",
              ".spotlight-v100", ".thumbnails", ".temporaryitems"}


def _is_hidden_dir(name: str) -> bool:
    """A folder someone hid (".secret/"): its images are left out, but the report says so
    (folders that tools keep, such as .git, stay silent clutter)."""
    return name.startswith(".") and name not in (".", "..") and name.lower() not in _TOOL_DIRS


class Scan:
    """One scan of a dataset folder: its root, its time limit and what it skipped on the way.

    Only regular files and folders inside the root are ever opened: a link is followed only
    when what it points to is inside the root, and FIFOs, sockets and devices are reported
    and left alone (opening a FIFO blocks forever; /dev/zero never ends).
    """

    def __init__(self, root: Path, seconds: float | None = None):
        self.root = Path(root)
        self.real_root = os.path.realpath(root)
        self.seconds = SCAN_SECONDS if seconds is None else seconds
        self.deadline = time.monotonic() + self.seconds
        self.files_seen = 0
        self.skipped: list[tuple[Path, str]] = []

    def tick(self) -> None:
        """Called per file: past the time limit, stop with a DataError saying how far it got."""
        self.files_seen += 1
        if time.monotonic() > self.deadline:
            raise DataError(f"scanning {self.root} took longer than {self.seconds:g} s "
                            f"({self.files_seen} files scanned so far) and was stopped; point to a smaller "
                            "folder (only the images to train on), or split the dataset")

    def kind(self, path: Path) -> str:
        """'dir', 'file', or a reason to skip ``path`` (recorded in ``skipped``)."""
        try:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                real = os.path.realpath(path)
                if real != self.real_root and not real.startswith(self.real_root.rstrip(os.sep) + os.sep):
                    return self._skip(path, "link to outside the dataset folder (not followed)")
                st = os.stat(path)
        except OSError as exc:
            return self._skip(path, f"unreadable ({exc.strerror or exc})")
        if stat.S_ISDIR(st.st_mode):
            return "dir"
        if stat.S_ISREG(st.st_mode):
            return "file"
        return self._skip(path, f"not a regular file ({file_type(st.st_mode)})")

    def _skip(self, path: Path, reason: str) -> str:
        self.skipped.append((path, reason))
        return reason

    def entries(self, folder: Path) -> tuple[list[Path], list[Path]]:
        """(folders, files) directly in ``folder``, sorted; links out, specials and hidden folders reported."""
        dirs, files = [], []
        try:
            names = sorted(os.listdir(folder))
        except OSError as exc:
            self._skip(folder, f"unreadable folder ({exc.strerror or exc})")
            return [], []
        for name in names:
            path = folder / name
            if is_ignored(name):
                if _is_hidden_dir(name) and os.path.isdir(path) and name.lower() not in _SYSTEM_DIRS:
                    self._skip(path, "hidden folder (its name starts with a dot); rename it to use its images")
                continue
            self.tick()
            kind = self.kind(path)
            if kind == "dir":
                dirs.append(path)
            elif kind == "file":
                files.append(path)
        return dirs, files

    def walk(self, top: Path) -> list[Path]:
        """All regular, non-ignored files under ``top``, sorted; each real folder visited once
        (so a link loop inside the root cannot recurse forever)."""
        found, seen, todo = [], set(), [top]
        while todo:
            folder = todo.pop()
            real = os.path.realpath(folder)
            if real in seen:
                continue
            seen.add(real)
            dirs, files = self.entries(folder)
            found += files
            todo += dirs
        return sorted(found)


