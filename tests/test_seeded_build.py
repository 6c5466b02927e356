"""Seeded rebuilds (backbones/seeded.py) give the seed's weights and leave the caller's random stream alone."""
from __future__ import annotations

import threading

import torch

from lora_gui.backbones.build import build_model
from lora_gui.backbones.seeded import seeded_build
from lora_gui.config import ModelConfig

CFG = ModelConfig(name="resnet18", weights="random")


def _weights(seed: int) -> torch.Tensor:
    with seeded_build(seed):
        return build_model(CFG, 3).conv1.weight.detach().clone()


def test_a_rebuild_does_not_reseed_the_callers_stream():
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    _weights(7)                                  # e.g. an export while this thread trains
    assert torch.equal(torch.rand(5), expected)  # without the restore this stream would be seed 7's


def test_concurrent_rebuilds_each_get_their_seeds_weights():
    reference = {seed: _weights(seed) for seed in (1, 2)}
    got, errors = {}, []

    def build(seed):
        try:
            for _ in range(3):
                assert torch.equal(_weights(seed), reference[seed])
            got[seed] = True
        except AssertionError as exc:
            errors.append(exc)
    threads = [threading.Thread(target=build, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and got == {1: True, 2: True}
    assert not torch.equal(reference[1], reference[2])
