"""The engine's heavy imports (torch, timm, the training and inference stacks), loaded in the
background right after the app has started serving its page (issue #15.3).

The page is laid out without them: every tab imports engine modules inside its handlers. Without
this, the first click that needs the engine (Start, Predict, the Model tab's layer count) would
pay their ~5 s of imports; with it, they are usually loaded before the person gets there, and a
handler that comes earlier simply waits for the import under way (Python's per-module import
locks; lora_gui's import graph has no cycles, tests/test_layering.py).

A plain (non-daemon) thread: a daemon thread still importing torch while the interpreter shuts
down can abort the process; this one makes Ctrl-C wait the few seconds the imports have left.
"""
from __future__ import annotations

import importlib
import sys
import threading
import time
from pathlib import Path

# What the handlers import, heaviest first (the training stack brings torch and timm).
ENGINE_MODULES = (
    "lora_gui.jobs.training_job",
    "lora_gui.backbones.build",
    "lora_gui.lora",
    "lora_gui.inference.adapter_cache",
    "lora_gui.inference.evaluate",
    "lora_gui.inference.calibration",
    "lora_gui.inference.explain",
    "lora_gui.store.exports",
    "lora_gui.store.demo_app_format",
    "lora_gui.health",
)

_done = threading.Event()
seconds: float | None = None   # how long the imports took (the benchmark reads it from the log line)


def _load(workspace: Path | None) -> None:
    global seconds
    started = time.perf_counter()
    try:
        for name in ENGINE_MODULES:
            importlib.import_module(name)
        if workspace is not None:   # the backbones' hub ids, so the next start lays out offline marks without timm
            from .catalog_info import CatalogInfo
            CatalogInfo(workspace).fill_hub_ids()
    except Exception as exc:   # the handler that needs the module will say what is wrong, in its place
        print(f"warning: loading the engine in the background failed ({type(exc).__name__}: {exc})",
              file=sys.stderr)
    finally:
        seconds = time.perf_counter() - started
        _done.set()


def start(workspace: Path | None = None) -> threading.Thread:
    """Begin loading the engine in the background; returns the thread."""
    thread = threading.Thread(target=_load, args=(workspace,), name="lora_gui-engine-warmup")
    thread.start()
    return thread


def wait(timeout: float | None = None) -> bool:
    """True once the engine has been loaded (or failed to); for tests and benchmarks."""
    return _done.wait(timeout)
