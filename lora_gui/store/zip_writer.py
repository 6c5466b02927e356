"""A zip for a download button, written whole or not at all."""
from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path


def write_zip(zip_path: Path, members: Iterable[tuple[Path, str]]) -> Path:
    """Write (file, name in the zip) ``members`` to ``zip_path`` under a temporary name of its own
    beside it (same file system, so os.replace is atomic): several builds into one folder each
    write their own file, and the last one wins whole."""
    fd, partial = tempfile.mkstemp(prefix=f".{zip_path.name}.", suffix=".partial", dir=zip_path.parent)
    try:
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as zf:
            for file, name in members:
                zf.write(file, arcname=name)
        os.chmod(partial, 0o644)   # mkstemp makes it private to this user; a download is not
        os.replace(partial, zip_path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return zip_path
