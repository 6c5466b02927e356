"""Hand back a thread's idle OpenMP team, so that the one thread that trains keeps its speed.

Why: torch on Linux runs its parallel loops on GNU OpenMP (libgomp, shipped inside the torch
wheel). Every thread that runs a parallel loop gets a *team* of helper threads of its own, and
keeps it for as long as the thread lives. libgomp counts the threads of all teams; once there are
more than the CPUs, it lets every helper spin only ~100 times (instead of ~300,000) before it
sleeps in the kernel, so each of the thousands of small parallel loops in a training step pays a
wake-up. One prediction in a web-server thread of the app, or one matrix product in the main
thread, leaves such an idle team behind, and a training thread started later ran at 135-147
images/s instead of 175-199 (EfficientNet-Lite0, 224 px, 2-core EPYC; the CLI's one training
thread never had company). ``release()`` ends the calling thread's team (OpenMP 5's
``omp_pause_resource_all``, which in libgomp pauses only the caller's own team); its next parallel
loop starts a new one in a fraction of a millisecond.

Called by the threads that are about to idle: a training thread that waits for a prediction
(``training.yield_gate``), a prediction as it leaves the gate, and the app's event handlers when
they return (``ui.common.friendly``). Elsewhere (macOS, Windows, an OpenMP other than libgomp,
torch not imported yet) it does nothing; ``LORA_GUI_OPENMP_RELEASE=0`` switches it off.
"""
from __future__ import annotations

import ctypes
import os
import sys

# On unless LORA_GUI_OPENMP_RELEASE=0. With every idle team gone the training's helpers spin at full
# speed between parallel loops; the app's training runs at a lower priority (jobs/background_priority)
# so the web server and a browser on the same machine still go first. (It was off for a while: a
# second tab's status never came with it on, 3 of 3 times; the cause was not the CPU but a race that
# replaced the tab's session at page load, fixed in ui/session.py, and it passes 8 of 8 with it on.)
SWITCH = "LORA_GUI_OPENMP_RELEASE"
_OMP_PAUSE_SOFT = 1   # omp_pause_resource_t: free the threads, keep nothing that a resume needs
_state: dict = {"pause": None}   # the function once found; False once looked for in vain


def _pause_function():
    """``omp_pause_resource_all`` of the libgomp this process has loaded, or None.

    Only the copy already loaded (torch's own, in torch/lib): opening the system's libgomp by
    name would start a second OpenMP runtime that manages none of torch's threads."""
    if _state["pause"] is not None:
        return _state["pause"] or None
    if not sys.platform.startswith("linux") or "torch" not in sys.modules:
        return None   # asked again later: torch (and its libgomp) may not be loaded yet
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = {line.split()[-1] for line in maps if "/libgomp" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            pause = ctypes.CDLL(path).omp_pause_resource_all
        except (OSError, AttributeError):   # an old libgomp without OpenMP 5's pause
            continue
        pause.argtypes, pause.restype = [ctypes.c_int], ctypes.c_int
        _state["pause"] = pause
        return pause
    _state["pause"] = False   # torch is loaded without libgomp: no need to read the maps on every call
    return None


def release() -> bool:
    """End the calling thread's OpenMP team, if it has one; True when libgomp did it.

    Inside a parallel region libgomp refuses (and nothing happens), so it is safe from any hook."""
    if os.environ.get(SWITCH, "").strip() == "0":
        return False
    pause = _pause_function()
    return bool(pause) and pause(_OMP_PAUSE_SOFT) == 0
