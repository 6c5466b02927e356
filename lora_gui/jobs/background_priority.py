"""The app's training runs at a lower CPU priority than the web server and the browser.

In the app a training is background work: the page, its status polls and a prediction
must answer while it runs. On a 2-core laptop the training's thread team fills both
cores, and at equal priority the server (and a browser on the same machine) only gets
its fair share between them.
Raising the training thread's nice value lets every other thread go first when it has
work; on an idle machine the training still gets all of the CPU (a nice value only
weighs runnable threads against each other), so it trains as fast as before.

Linux only: there a thread's nice value is its own and is inherited by the threads it
starts, so lowering it before the first parallel loop also lowers the OpenMP helper threads
torch starts for it (and any data-loader process it forks). It must be called first thing
in the training thread. Elsewhere it does nothing. ``LORA_GUI_TRAIN_NICE`` sets the amount
(0 turns it off); the CLI does not call it (there the training is the foreground work).
"""
from __future__ import annotations

import os
import sys
import threading

SWITCH = "LORA_GUI_TRAIN_NICE"
DEFAULT_NICE = 10   # CFS weight 110 against 1024 at nice 0: others get ~90 % of a contended core


def nice_increment() -> int:
    """How much the app lowers a training thread's priority (``LORA_GUI_TRAIN_NICE``, default 10)."""
    raw = os.environ.get(SWITCH, "").strip()
    if not raw:
        return DEFAULT_NICE
    try:
        return max(0, min(19, int(raw)))
    except ValueError:
        return DEFAULT_NICE


def lower_this_thread() -> int | None:
    """Lower the calling thread's priority by ``nice_increment()``; its new nice value, or None
    where nothing changed (not Linux, switched off, or the system refused)."""
    step = nice_increment()
    if step == 0 or not sys.platform.startswith("linux"):
        return None
    tid = threading.get_native_id()
    try:
        # PRIO_PROCESS with a thread id acts on that one thread under Linux (not on the process)
        now = os.getpriority(os.PRIO_PROCESS, tid)
        target = min(19, now + step)
        os.setpriority(os.PRIO_PROCESS, tid, target)
        return os.getpriority(os.PRIO_PROCESS, tid)
    except OSError:
        return None
