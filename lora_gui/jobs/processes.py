"""How many processes a local multi-process (torchrun) run would use: no torch unless the GPUs are counted.

Apart from ``torchrun_job`` (which loads the training stack) so the app lays out its Train tab
before the engine is imported (issue #15.3): the environment variable answers at once, the GPU
count once torch is loaded.
"""
from __future__ import annotations

import os
import sys

PROCESSES_ENV = "LORA_GUI_PROCESSES"


def requested_processes() -> int | None:
    """``$LORA_GUI_PROCESSES`` when set to a whole number of processes, else None."""
    raw = os.environ.get(PROCESSES_ENV, "").strip()
    if raw:
        if raw.isdigit() and int(raw) >= 1:
            return int(raw)
        print(f"warning: ignoring {PROCESSES_ENV}={raw!r}: it must be a whole number of processes, "
              "e.g. 2", file=sys.stderr)
    return None


def local_gpu_count() -> int:
    import torch
    return torch.cuda.device_count()


def offered_processes() -> int:
    """Processes a local multi-process run uses: ``$LORA_GUI_PROCESSES`` if set, else one per GPU."""
    requested = requested_processes()
    return local_gpu_count() if requested is None else requested
