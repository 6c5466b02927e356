"""Random starting weights: give the frozen BatchNorms the statistics of the user's images.

A BatchNorm fresh from timm's random init has running mean 0 and variance 1,
which describe nothing. lora_gui keeps frozen norms in eval mode (so a saved
adapter reproduces the trained model and the frozen prefix can be cached), so
with such statistics the activations are not normalised at all: they grow or
fade layer by layer, a random ResNet gives nearly the same features for every
image, and LoRA on its later blocks learns little (benchmarks/: 16.5 % held-out
accuracy against 27.5 % for a plain loop that trains with BatchNorm in training
mode). One pass over the training images with cumulative averages
(``momentum=None``, as ``torch.optim.swa_utils.update_bn`` does) sets them once;
they are frozen again afterwards. A model rebuilt from the same seed would not
have them, so the calibrated modules are marked (``lora.CALIBRATED_NORM``) and
their buffers travel with the adapter.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable

import torch
from torch import nn

from ..lora.state import mark_calibrated as mark

MAX_IMAGES = 1024  # running averages settle long before; bounds the set-up time on big datasets
# A fixed batch size, not the training one: the average of per-batch variances depends on
# it, and the statistics must not change with the batch size or the number of processes.
# Small, because what a forward pass at full resolution allocates stays in the process's
# heap afterwards (8 rather than 16: ~40 MB less peak memory for resnet18 at 224 px, no slower).
BATCH_SIZE = 8


def wanted(switch: str, weights: str) -> bool:
    """'auto': only for random weights; pretrained statistics are better than a few hundred images'."""
    return switch == "on" or (switch == "auto" and weights == "random")


def frozen_norms(model: nn.Module) -> list[str]:
    """BatchNorms that keep running statistics and train nothing (these stay in eval mode)."""
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            and not any(p.requires_grad for p in m.parameters())]



@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[torch.Tensor], forward=None) -> list[str]:
    """Recompute the frozen BatchNorms' running statistics over ``batches``; returns their names.

    Everything else stays in eval mode (no dropout, no drop-path) during the pass."""
    names = frozen_norms(model)
    if not names:
        return []
    norms = [model.get_submodule(n) for n in names]
    was_training, momenta = model.training, [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over every batch, equal weights
        m.train()
    seen = 0
    try:
        for x in batches:
            if len(x) < 2:  # a lone last image: BatchNorm refuses one value per channel (1x1 maps)
                continue
            (forward or model)(x)
            seen += len(x)
            if seen >= MAX_IMAGES:
                break
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
            m.eval()
        model.train(was_training)
        if was_training:  # train_mode's rule: frozen norms stay in eval mode
            for m in norms:
                m.eval()
    if seen == 0:
        raise ValueError("no images to calibrate the BatchNorm statistics on")
    mark(model, names)
    return names


@contextmanager
def lone_sample(model: torch.nn.Module, batch_size: int):
    """For a batch of one image, the BatchNorms still in training mode (a head's BatchNorm1d in
    LeViT or RepViT) use their running statistics, as in evaluation: one value per channel gives
    no batch statistics ("Expected more than 1 value per channel when training").

    Chosen over dropping the lone last batch: that would change the batches per epoch, the
    schedule, the step count and the resume positions (which count samples), and leave an
    image out of every epoch; this changes only how that one batch is normalised.
    """
    switched = [m for m in model.modules()
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training] if batch_size == 1 else []
    for m in switched:
        m.eval()
    try:
        yield
    finally:
        for m in switched:
            m.train()
