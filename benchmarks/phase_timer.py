"""Timers wrapped around the engine's pieces from the outside (nothing under lora_gui/ is edited).

Each wrapped call adds its wall time to the path of the phases open around it
("prefix cache > decode + transform"), so nested pieces are shown inside their parent and
the top level adds up to the run. ``restore`` puts the originals back.
"""
from __future__ import annotations

import functools
import time
from collections import defaultdict
from contextlib import contextmanager


class PhaseTimer:
    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.stack: list[str] = []
        self._undo: list[tuple] = []

    @contextmanager
    def phase(self, label: str):
        self.stack.append(label)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[" > ".join(self.stack)] += time.perf_counter() - t0
            self.stack.pop()

    def wrap(self, owner, name: str, label: str) -> None:
        own = name in vars(owner)   # else inherited (a mixin's method): restore by deleting
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            with self.phase(label):
                return original(*args, **kwargs)
        setattr(owner, name, timed)
        self._undo.append((owner, name, original if own else None))

    def restore(self) -> None:
        for owner, name, original in reversed(self._undo):
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        self._undo.clear()

    def report(self, total: float) -> dict[str, float]:
        """Seconds per phase path, top-level 'training steps' = the loop minus what is inside it,
        and 'other' = the run minus its top-level phases."""
        out = {k: round(v, 3) for k, v in sorted(self.seconds.items(), key=lambda kv: -kv[1])}
        for parent in [k for k in out if k in ("prepare", "train loop")]:
            inner = sum(v for k, v in out.items() if k.startswith(parent + " > ") and k.count(" > ") == 1)
            out[f"{parent} > (rest)"] = round(out[parent] - inner, 3)
        top = sum(v for k, v in out.items() if " > " not in k)
        out["other (outside the phases)"] = round(total - top, 3)
        return out

    @classmethod
    def engine(cls) -> PhaseTimer:
        """A timer around every piece of a default run (see floor.py's docstring).

        Pieces an older engine (``floor.py --before``) does not have are left out and listed in
        ``missing``: its phases then add up to fewer named pieces, not to a wrong total."""
        import importlib

        from lora_gui import lora
        from lora_gui.training import batches, loop, prefix_cache
        try:
            transforms = importlib.import_module("lora_gui.data.transforms")
        except ImportError:   # before the start-up split of data/images.py
            transforms = importlib.import_module("lora_gui.data.images")
        try:
            probe = importlib.import_module("lora_gui.training.probe")
        except ImportError:   # before issue 15's first model
            probe = None
        t = cls()
        t.missing = []
        trainer = loop.Trainer
        for owner, name, label in [
                (trainer, "prepare", "prepare"), (loop, "build_model", "build model"),
                (lora, "inject_lora", "inject LoRA"), (trainer, "_calibrate_norms", "BatchNorm calibration"),
                (prefix_cache, "plan", "prefix plan"), (batches, "_compute", "prefix cache"),
                (transforms.ImageDataset, "__getitem__", "decode + transform"),
                (trainer, "_write_config", "config + split files"), (trainer, "_train", "train loop"),
                (trainer, "evaluate", "validation"), (trainer, "_save_adapter", "save adapter"),
                (trainer, "_flush_and_checkpoint", "checkpoint"), (trainer, "_optimizer_step", "optimizer step"),
                (trainer, "_micro_batch", "forward + backward"),
                (trainer, "_first_model", "first model (linear probe)"),   # issue 15's probe: newer engines
                (probe, "features", "pooled features"), (probe, "fit_head", "head fit")]:
            if hasattr(owner, name):
                t.wrap(owner, name, label)
            else:
                t.missing.append(label)
        return t
