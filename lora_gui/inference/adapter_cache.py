"""One bounded cache of loaded adapters that every session shares (not one model per session).

Keyed by the adapter file's path, size and modification time: a newer best/ adapter
after more training, or a file replaced in place, loads afresh. At most ``capacity``
models stay in memory; the least recently used one is dropped first.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

from ..store.exports import locate
from .predict import LoadedAdapter, load_adapter

DEFAULT_CAPACITY = 4


def adapter_key(source: str | os.PathLike) -> tuple:
    """(source, adapter file, size, mtime): what identifies one loadable state of an adapter."""
    _, file = locate(source)
    st = Path(file).stat()
    return str(source), str(file), st.st_size, st.st_mtime_ns


class AdapterCache:
    def __init__(self, capacity: int = DEFAULT_CAPACITY):
        self.capacity = capacity
        self._models: OrderedDict[tuple, LoadedAdapter] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple, threading.Lock] = {}
        # called with every model that enters the cache; the app adds the yield gate's ``watch``
        # (training.yield_gate), which this layer may not import, so its trainings step aside
        self.watchers: list = []

    def get(self, source: str | os.PathLike) -> LoadedAdapter:
        """The loaded adapter for ``source`` (loaded now if it is not cached). Errors from locate/load pass through."""
        key = adapter_key(source)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:   # two sessions asking for the same new adapter load it once
            with self._lock:
                if key in self._models:
                    return self._models[key]
            try:
                loaded = load_adapter(source)
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            self.put(source, loaded)
        return loaded

    def put(self, source: str | os.PathLike, loaded: LoadedAdapter) -> None:
        """Keep a model already loaded (the upload check loads it once)."""
        key = adapter_key(source)
        for watch in self.watchers:
            watch(loaded.model)
        with self._lock:
            self._models[key] = loaded
            self._models.move_to_end(key)
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)


ADAPTERS = AdapterCache()
