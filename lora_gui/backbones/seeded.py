"""Seeded model builds that no other thread can disturb.

A model's random weights (a backbone started from ``weights="random"``, every LoRA ``A``
matrix, a fresh head) come from torch's one process-wide generator. A run records only the
seed, and rebuilding the same weights later (resume, test, export, the PEFT export's base
weights) means drawing the same numbers in the same order again. Two builds at once in one
process (the app trains in one thread while another loads or exports an adapter) would
interleave their draws and both get other weights than their seed promises. Every seeded
build therefore happens inside ``seeded_build(seed)``: one at a time, from the seed.

The generator's state is put back afterwards: a rebuild (a test, an export) made while a run
trains must not reseed the training thread's own stream of random numbers (dropout,
augmentation), or the run would no longer be the one its seed describes. What remains: numbers
the training thread draws *during* a rebuild's fraction of a second come from the rebuild's
stream, and vice versa. That touches only a run that starts from random base weights (a
pretrained base is read from its file, and LoRA's matrices are loaded, not drawn, on a rebuild).
"""
from __future__ import annotations

import contextlib
import threading

import torch

_LOCK = threading.RLock()


@contextlib.contextmanager
def seeded_build(seed: int, restore: bool = True):
    """Hold the build lock and seed torch's generator; build (and inject LoRA) inside the block.

    ``restore=False`` is for the training thread itself: its run goes on drawing from the seed's
    stream after the build, as it always has (a run is reproducible from its seed alone)."""
    with _LOCK:
        state = torch.get_rng_state()
        torch.manual_seed(seed)
        try:
            yield
        finally:
            if restore:
                torch.set_rng_state(state)
