"""The decoded-image cache: pixels decoded once, reused every epoch (and by every loader thread)."""
from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict

from PIL import Image

from .images import load_rgb


def image_nbytes(im: Image.Image) -> int:
    bands = len(im.getbands())
    return im.width * im.height * bands


class DecodedCache:
    """Thread-safe LRU of decoded RGB images, bounded in bytes.

    Decoding a JPEG costs far more than the augmentations applied to it, and
    the same files are read every epoch, so keeping the (pre-shrunk) pixels
    in memory makes later epochs much faster. Images are shrunk to
    ``max_side`` on the shorter side before caching; pick it a bit above the
    transform's resize size (``cache_max_side``) so crops lose no detail that
    the model would have seen. Callers must not modify returned images.

    With DataLoader worker processes each worker holds its own copy, so the
    cache pays off most with ``num_workers=0`` or persistent workers.
    """

    def __init__(self, max_bytes: int, max_side: int | None = None):
        self.max_bytes = max(0, int(max_bytes))
        self.max_side = max_side
        self.hits = 0
        self.misses = 0
        self.bytes = 0
        self._items: OrderedDict[str, tuple[Image.Image, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str) -> Image.Image:
        key = os.fspath(path)
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return item[0]
            self.misses += 1
        # decode outside the lock so loader threads decode in parallel
        im = load_rgb(key, self.max_side)
        size = image_nbytes(im)
        if size > self.max_bytes:
            return im
        with self._lock:
            if key not in self._items:
                self._items[key] = (im, size)
                self.bytes += size
            while self.bytes > self.max_bytes and self._items:
                _, (_, old) = self._items.popitem(last=False)
                self.bytes -= old
        return im

    def __len__(self) -> int:
        return len(self._items)

    @property
    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "bytes": self.bytes, "items": len(self._items)}

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.bytes = 0

    # Worker processes started with "spawn" (macOS, Windows) pickle the
    # dataset; locks can't be pickled and shipping the pixels would be slow.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_items"] = OrderedDict()
        state["bytes"] = 0
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()


def cache_max_side(data_config: dict, margin: float = 1.15) -> int:
    """Shorter-side bound for cached images, from timm's resolved data config.

    timm's eval transform resizes the shorter side to input_size / crop_pct
    before cropping; a 15% margin keeps random crops sharp.
    """
    size = data_config["input_size"]
    side = max(size[-2:]) if isinstance(size, (tuple, list)) else int(size)
    crop_pct = data_config.get("crop_pct") or 1.0
    return math.ceil(math.ceil(side / crop_pct) * margin)
