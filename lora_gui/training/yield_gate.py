"""Predictions first: a training in the app's process steps aside while a prediction runs.

The app trains and predicts in one process, on the same cores. Two torch jobs at once each
start a thread team as wide as the machine, so they oversubscribe it and a prediction takes
about twice as long; leaving a core free for predictions instead costs the training half of a
2-core machine all the time. So the trainer uses every core, and at *yield points* a few
milliseconds apart (before each residual block runs, and as each trainable tensor's gradient
arrives in the backward pass) it waits while a prediction is running. A prediction model holds
the gate around its forward (``watch``), so a prediction waits at most one block, not a step.

With nobody predicting a yield point is one integer read: the CLI and an idle app train at
full speed. Whoever is about to idle also hands back its OpenMP thread team (``openmp_teams``):
the training before it waits, the prediction as it leaves. Two teams alive at once on a small
machine slow both (libgomp stops letting their threads spin), so each side then gets the machine
as it would alone.
"""
from __future__ import annotations

import threading
import time

from torch import nn

from .. import openmp_teams
from ..lora.targets import _block_prefixes

# a safety net, not a schedule: a prediction takes tens of milliseconds; were a prediction's
# count ever left behind, training would go on after this long instead of stopping for good
MAX_WAIT_S = 2.0


class YieldGate:
    def __init__(self, max_wait_s: float = MAX_WAIT_S):
        self._cond = threading.Condition()
        self._active = 0
        self.max_wait_s = max_wait_s
        self.yields = 0          # times a training stepped aside (tests and benchmarks read it)
        self.waited_s = 0.0
        self.trainers_waiting = 0

    # the prediction's side ------------------------------------------------------
    def enter(self) -> None:
        with self._cond:
            self._active += 1

    def leave(self) -> None:
        with self._cond:
            self._active = max(0, self._active - 1)
            if not self._active:
                self._cond.notify_all()
        openmp_teams.release()   # this (prediction) thread's team, before the training resumes

    @property
    def busy(self) -> bool:
        return self._active > 0

    def watch(self, model: nn.Module) -> nn.Module:
        """Hold the gate around every forward of ``model`` (a prediction model); once per model."""
        if not getattr(model, "_yield_gate_watched", False):
            model.register_forward_pre_hook(lambda module, args: self.enter())
            # always_call: a forward that raises still lets the training go on
            model.register_forward_hook(lambda module, args, out: self.leave(), always_call=True)
            model._yield_gate_watched = True
        return model

    # the training's side --------------------------------------------------------
    def give_way(self) -> None:
        """Wait while a prediction runs (at most ``max_wait_s``); at once when none does."""
        if not self._active:
            return
        t0 = time.perf_counter()
        openmp_teams.release()   # the prediction gets the machine's cores, not a sleeping team beside it
        with self._cond:
            self.trainers_waiting += 1
            try:
                self._cond.wait_for(lambda: not self._active, timeout=self.max_wait_s)
            finally:
                self.trainers_waiting -= 1
        self.yields += 1
        self.waited_s += time.perf_counter() - t0

    def install(self, model: nn.Module) -> list:
        """Yield points in a training model; returns the hook handles (``remove()`` each to undo)."""
        handles = [model.get_submodule(name).register_forward_pre_hook(lambda module, args: self.give_way())
                   for name in _block_prefixes(model)]
        handles += [p.register_hook(self._on_grad) for p in model.parameters() if p.requires_grad]
        return handles

    def _on_grad(self, grad):
        self.give_way()   # returns nothing: the gradient goes on unchanged


# the app's one gate: its trainings give way to its predictions
PREDICTIONS = YieldGate()
