"""Frozen-prefix caching: the cached path gives the same logits and gradients as the full model."""
from __future__ import annotations

import pytest
import timm
import torch

from lora_gui import lora
from lora_gui.config import LoraConfig
from lora_gui.training import prefix_cache

FAMILIES = [("vit_tiny_patch16_224", {"img_size": 64}), ("resnet18", {}), ("tf_efficientnet_lite0", {}),
            ("convnext_atto", {}), ("mobilenetv3_small_050", {}), ("eva02_tiny_patch14_224", {"img_size": 56})]


def _model(name, kwargs):
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False, num_classes=3, **kwargs)
    lora.inject_lora(m, LoraConfig(targets="late-blocks"))
    for _, layer in lora.lora_layers(m):
        torch.nn.init.normal_(layer.lora_B.weight, std=0.05)  # a non-trivial adapter
    return m.eval()


@pytest.mark.parametrize("name,kwargs", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_cached_path_equals_full_model(name, kwargs):
    m = _model(name, kwargs)
    size = 64 if "img_size" not in kwargs else kwargs["img_size"]
    x = torch.randn(3, 3, size, size)
    plan = prefix_cache.plan(m, x)
    assert plan.reason == "" and plan.stubs, plan.reason
    assert lora.lora_layers(m)[0][0].startswith(plan.boundary + ".") or plan.boundary in lora.lora_layers(m)[0][0]
    cached = plan.capture(m, x)

    full = m(x)
    full.square().sum().backward()
    grads_full = {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad}
    m.zero_grad()
    with plan.feeding(m) as feed:
        feed(cached)
        short = m(plan.dummy_input(len(x), tuple(x.shape[1:]), x.device))
    short.square().sum().backward()
    assert torch.allclose(full, short, rtol=1e-5, atol=1e-6)
    for n, p in m.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.grad, grads_full[n], rtol=1e-4, atol=1e-6), n
    # the stubs are gone afterwards: the model is whole again
    assert torch.equal(m(x), full)


@pytest.mark.parametrize("name,kwargs", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_one_pass_gives_the_cache_and_the_pooled_features(name, kwargs):
    """The pass that fills a new run's cache also returns the classifier's input (the linear
    probe's features): the same cached tensor as ``capture``, the same features as timm's head."""
    from lora_gui.lora.targets import classifier_names
    m = _model(name, kwargs)
    size = kwargs.get("img_size", 64)
    x = torch.randn(3, 3, size, size)
    plan = prefix_cache.plan(m, x)
    cached, pooled = plan.capture_with_features(m, x, classifier_names(m)[0])
    assert torch.equal(cached, plan.capture(m, x))
    with torch.no_grad():
        expected = m.forward_head(m.forward_features(x), pre_logits=True)
    torch.testing.assert_close(pooled, expected)
    assert not any(mod._forward_pre_hooks for mod in m.modules())   # nothing left hooked


def test_no_prefix_when_the_first_layer_trains():
    torch.manual_seed(0)
    m = timm.create_model("resnet18", pretrained=False, num_classes=3)
    lora.inject_lora(m, LoraConfig(targets="all-conv"))
    plan = prefix_cache.plan(m, torch.randn(2, 3, 64, 64))
    assert "no frozen prefix" in plan.reason


def test_trainer_uses_the_cache_by_default_and_records_it(tmp_path, make_image_folder):
    import json

    from lora_gui.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from lora_gui.jobs.training_job import TrainingJob
    root = make_image_folder({f"{c}/{i}.png": (32, 32) for c in "abc" for i in range(6)}, "set")
    runs = {}
    for aug in ("flip", "light"):
        cfg = RunConfig(model=ModelConfig(name="resnet18", weights="random", image_size=32),
                        data=DataConfig(source=str(root), augmentation=aug), train=TrainConfig(epochs=1, batch_size=4))
        job = TrainingJob(cfg, workspace=str(tmp_path / aug)).start()
        assert job.wait(120) and job.status == "finished", job.message
        runs[aug] = json.loads(job.run.config_file.read_text())["speed"]
    assert runs["flip"]["cache_frozen_prefix"] is True
    assert runs["light"]["cache_frozen_prefix"] is False
    assert "changes images every epoch" in runs["light"]["cache_frozen_prefix_note"]
