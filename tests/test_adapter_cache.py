"""The loaded-adapter cache all sessions share (#13.4): bounded, least recently used first out, reloads a changed file."""
from __future__ import annotations

import os
import shutil

from test_export import make_adapter

from lora_gui.inference.adapter_cache import AdapterCache


def test_cache_is_bounded_shared_and_follows_the_file(tmp_path):
    first = make_adapter(tmp_path / "a", "resnet18", image_size=32, classes=2)
    runs = [first.run_dir]
    for i in range(2):   # copies of one adapter in other run folders: other keys, same cheap model
        copy = tmp_path / f"copy{i}" / "resnet18"
        shutil.copytree(first.run_dir, copy)
        runs.append(copy)
    cache = AdapterCache(capacity=2)
    a = cache.get(runs[0])
    assert cache.get(runs[0]) is a          # a second session asking gets the same model, not a copy
    cache.get(runs[1])
    cache.get(runs[2])                      # over capacity: the least recently used (runs[0]) goes
    assert len(cache) == 2
    assert cache.get(runs[0]) is not a
    file = runs[1] / "best" / "adapter.safetensors"
    b = cache.get(runs[1])
    st = file.stat()
    os.utime(file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # newer best/ adapter after more training
    assert cache.get(runs[1]) is not b
