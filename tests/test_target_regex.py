"""A `re:` LoRA target typed in the page runs in the server: a pattern that backtracks without end
must cost its author about a second and a message, and never hold the other threads (#15 review)."""
from __future__ import annotations

import threading
import time

import pytest
import timm

from lora_gui.errors import LoraError
from lora_gui.lora import resolve_targets
from lora_gui.lora.targets import TARGET_REGEX_SECONDS


@pytest.fixture(scope="module")
def resnet():
    return timm.create_model("resnet18", pretrained=False, num_classes=3)


@pytest.fixture(scope="module")
def convnext():   # layer names of 20-27 characters ("stages.0.blocks.0.mlp.drop1")
    return timm.create_model("convnext_atto", pretrained=False, num_classes=3)


def test_a_regex_picks_layers_by_full_match(resnet):
    wrap, _ = resolve_targets(resnet, r"re:layer4\.\d\.conv\d")
    assert wrap == ["layer4.0.conv1", "layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2"]
    with pytest.raises(LoraError, match=r"target regex '\(' is invalid"):
        resolve_targets(resnet, "re:(")
    with pytest.raises(LoraError, match="600 characters long; keep it under 500"):
        resolve_targets(resnet, "re:" + "a" * 600)


def test_a_catastrophic_regex_stops_after_its_budget_and_leaves_the_other_threads_running(convnext):
    # about a second per 27-character name (with re or regex): minutes over the model's 177 names
    ticks, stop = [], threading.Event()

    def other_user():   # a thread of the same server: it must keep getting the interpreter
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.01)

    t = threading.Thread(target=other_user)
    t.start()
    started = time.monotonic()
    try:
        with pytest.raises(LoraError, match=r"took over 1 s to match the layer names .*nested repeats"):
            resolve_targets(convnext, r"re:(.|..|...)*[0-9]{3}")
    finally:
        stop.set()
        t.join()
    spent = time.monotonic() - started
    assert TARGET_REGEX_SECONDS <= spent < TARGET_REGEX_SECONDS + 5, spent
    # the other thread ran all along: no gap of a whole budget between two of its ticks
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert len(ticks) > 10 and max(gaps) < TARGET_REGEX_SECONDS / 2, (len(ticks), max(gaps))
