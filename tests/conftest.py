"""Shared test fixtures."""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _write_image(path: Path, size: tuple[int, int]) -> None:
    # pixels seeded from the path: reruns write identical files, while two
    # paths never produce byte-identical (duplicate) images by accident
    rng = np.random.default_rng(zlib.crc32(path.as_posix().encode()))
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def make_image_folder(tmp_path):
    """Write small real images: ``make_image_folder({"cat/1.png": (16, 16)}, "set")``.

    ``layout`` maps relative paths to sizes (None: 16x16), or is a list of
    relative paths; the format follows the extension. Returns the folder.
    """
    def make(layout, name: str = "images") -> Path:
        root = tmp_path / name
        root.mkdir(parents=True, exist_ok=True)
        items = layout.items() if isinstance(layout, dict) else ((p, None) for p in layout)
        for rel, size in items:
            _write_image(root / rel, size or (16, 16))
        return root
    return make
