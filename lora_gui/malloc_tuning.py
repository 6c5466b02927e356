"""Keep freed tensor memory in the process's heap between batches (glibc's own knobs, nothing preloaded).

Why: by default glibc serves every allocation above 128 KB-32 MB with its own ``mmap`` and hands
it back to the OS when freed. A network's activations are such blocks, allocated and freed on
every batch, so each batch pays a page fault per 4 KB page it touches again. On the 2-core EPYC
these benchmarks ran on, bf16 EfficientNet-Lite0 inference went from 90-100 images/s (1.3 s of
system time per 192 images) to 155-175 images/s (no system time) with the settings below;
``benchmarks/floor.py`` measures both. PyTorch's CPU tuning guide suggests jemalloc or tcmalloc
for the same reason; these settings get the same effect without a library to install.

``tune()`` must run before the process starts other threads: a thread that already has its own
malloc arena keeps it, and the thresholds do little there. ``M_ARENA_MAX=1`` puts every thread
that comes later (the training thread, the web server's) in the main heap, where they apply.
The price is memory the heap keeps after a peak (up to ``TRIM`` bytes free at its top);
``release()`` hands it back at the end of a job.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt(3) parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -2, -3, -8
MMAP_THRESHOLD = 256 << 20  # blocks above this still get their own mapping (a big cache is returned at once)
TRIM = 512 << 20            # free memory kept at the heap's top before it is handed back
TOP_PAD = 64 << 20          # the heap grows in steps of at least this much
# a user who set glibc's environment variables or preloaded another allocator has chosen already
_USER_CHOICES = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
OFF_SWITCH = "LORA_GUI_MALLOC_TUNING"  # '0' leaves malloc as it is

_state = {"done": None}


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def tune() -> str:
    """Apply the settings once per process; what was done, in a few words (for logs and tests)."""
    if _state["done"] is not None:
        return _state["done"]
    _state["done"] = _tune()
    return _state["done"]


def _tune() -> str:
    if os.environ.get(OFF_SWITCH, "").strip() == "0":
        return f"off ({OFF_SWITCH}=0)"
    preload = os.environ.get("LD_PRELOAD", "")
    if any(os.environ.get(v) for v in _USER_CHOICES) or "malloc" in preload:
        return "left as set in the environment"
    libc = _libc()
    if libc is None:
        return "not glibc: left as it is"
    ok = all(libc.mallopt(p, v) == 1 for p, v in ((_M_ARENA_MAX, 1), (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                                                  (_M_TRIM_THRESHOLD, TRIM), (_M_TOP_PAD, TOP_PAD)))
    return "tuned" if ok else "glibc refused a setting: partly tuned"


def release() -> None:
    """Hand the heap's free pages back to the OS (after a job: the heap keeps up to TRIM otherwise)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
