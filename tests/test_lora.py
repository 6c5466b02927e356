"""LoRA core (lora_gui/lora.py) on real timm models, built with pretrained=False at small sizes.

Every family the issue names is built for real; each property is checked by value
(torch.equal / relative error), never by "it ran".
"""
from __future__ import annotations

import copy
import functools
import math
import re

import pytest
import timm
import torch
from torch import nn

from lora_gui.config import LoraConfig
from lora_gui.errors import LoraError
from lora_gui.lora.inject import (
    count_parameters,
    estimate_trainable,
    inject_lora,
    lora_layers,
    merge_lora,
    remove_lora,
    train_mode,
    unmerge_lora,
)
from lora_gui.lora.layers import LoraConv2d, LoraLinear
from lora_gui.lora.state import adapter_state_dict, load_adapter_state_dict
from lora_gui.lora.targets import (
    classifier_names,
    head_modules,
    list_layers,
    resolve_targets,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny inputs: one thread is faster, and far faster when the 2 cores are busy
    (OpenMP threads spin-wait for each other). Restored for the other test modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


NUM_CLASSES = 5
SEED = 1234

# name -> (create_model kwargs, input side, presets that must apply besides "auto")
FAMILIES = {
    "vit_tiny_patch16_224": (dict(img_size=32), 32, ["attention", "attention+mlp", "all-linear", "late-blocks"]),
    "deit_tiny_patch16_224": (dict(img_size=32), 32, ["attention", "attention+mlp", "all-linear"]),
    "swin_tiny_patch4_window7_224": (dict(img_size=32, window_size=2), 32,
                                     ["attention", "attention+mlp", "all-linear"]),
    # random init puts ConvNeXt's layer scale at 1e-6, so blocks would barely matter; trained models look like 1.0
    "convnext_atto": (dict(ls_init_value=1.0), 32, ["all-conv", "late-blocks", "attention+mlp"]),
    # zero_init_last=False: random init zeroes each block's last BatchNorm, hiding any change in the block
    "resnet18": (dict(zero_init_last=False), 32, ["all-conv", "late-blocks"]),
    "efficientnet_b0": ({}, 32, ["all-conv", "late-blocks"]),
    "tf_efficientnet_lite0": ({}, 32, ["all-conv", "late-blocks"]),
    "mobilenetv3_small_050": ({}, 32, ["all-conv", "late-blocks"]),
    "mobilenetv4_conv_small": ({}, 32, ["all-conv", "late-blocks"]),
    "regnetx_002": (dict(zero_init_last=False), 32, ["all-conv", "late-blocks"]),
    "eva02_tiny_patch14_224": (dict(img_size=28), 28, ["attention", "attention+mlp", "all-linear"]),
    "levit_128s": (dict(img_size=32), 32, ["attention", "attention+mlp", "all-linear"]),
    "caformer_s18": ({}, 32, ["attention", "attention+mlp", "all-linear", "all-conv"]),
    "repvit_m0_9": ({}, 32, ["all-conv", "late-blocks"]),
}

CASES = [(name, preset) for name, (_, _, presets) in FAMILIES.items() for preset in ["auto"] + presets]


def _create(name: str, seed: int) -> nn.Module:
    kwargs, _, _ = FAMILIES[name]
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **kwargs).eval()
    # Some inits zero a residual branch's last norm (LeViT's bn_weight_init=0), which hides any
    # change inside that branch; trained models never look like that.
    with torch.no_grad():
        for m in model.modules():
            w = getattr(m, "weight", None)
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and w is not None and not w.any():
                w.fill_(1.0)
    return model


@functools.lru_cache(maxsize=None)
def _pristine(name: str, seed: int) -> nn.Module:
    return _create(name, seed)


def build(name: str, seed: int = SEED) -> nn.Module:
    """A fresh model, identical to ``timm.create_model`` after ``torch.manual_seed(seed)``
    (built once per name and deep-copied: the machine has 2 cores)."""
    return copy.deepcopy(_pristine(name, seed))


def shared(name: str) -> nn.Module:
    """The cached model itself, for tests that only read it (never inject or change it)."""
    model = _pristine(name, SEED)
    assert not lora_layers(model), "a test changed the shared model"
    return model


def build_fresh(name: str, seed: int = SEED) -> nn.Module:
    """Really built again (no copy): what rebuilding a base for an adapter does."""
    return _create(name, seed)


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def batch(name: str, seed: int = 0) -> torch.Tensor:
    side = FAMILIES[name][1]
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, side, side, generator=g)


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@torch.no_grad()
def randomise_lora_b(model: nn.Module, seed: int = 7, std: float = 0.02) -> None:
    g = torch.Generator().manual_seed(seed)
    for _, layer in lora_layers(model):
        w = layer.lora_B.weight
        w.copy_(torch.randn(w.shape, generator=g) * std)


@torch.no_grad()
def randomise_head(model: nn.Module, seed: int = 11) -> None:
    g = torch.Generator().manual_seed(seed)
    for h in head_modules(model):
        for p in model.get_submodule(h).parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


# --------------------------------------------------------------------------- #
# The core contract, for every family and every preset that applies to it
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("name,preset", CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_inject_merge_unmerge(name, preset):
    model = build(name)
    x = batch(name)
    base = logits(model, x)
    assert base.shape == (2, NUM_CLASSES)

    wrapped = inject_lora(model, LoraConfig(rank=4, alpha=8, targets=preset))
    assert wrapped, "a preset that applies must wrap something"
    assert len(lora_layers(model)) == len(wrapped)
    # B is zero: exactly the base model, bit for bit
    assert torch.equal(logits(model, x), base)

    # every wrapper is actually called (nothing reads .weight behind its back)
    called = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: called.__setitem__(n, called.get(n, 0) + 1))
             for n, m in lora_layers(model)]
    randomise_lora_b(model)
    unmerged = logits(model, x)
    for h in hooks:
        h.remove()
    assert set(called) == set(wrapped), f"wrappers never called: {sorted(set(wrapped) - set(called))[:5]}"
    assert rel_err(unmerged, base) > 1e-4, "a non-zero lora_B must change the output"

    weights_before = {n: l.base_layer.weight.detach().clone() for n, l in lora_layers(model)}
    merge_lora(model)
    assert all(l.merged for _, l in lora_layers(model))
    merged = logits(model, x)
    assert rel_err(merged, unmerged) < 1e-5
    merged_weights = {n: l.base_layer.weight.detach().clone() for n, l in lora_layers(model)}
    assert any(not torch.equal(merged_weights[n], weights_before[n]) for n in merged_weights)

    merge_lora(model)  # a second merge must not add the delta again
    for n, l in lora_layers(model):
        assert torch.equal(l.base_layer.weight, merged_weights[n])

    unmerge_lora(model)
    assert not any(l.merged for _, l in lora_layers(model))
    for n, l in lora_layers(model):
        assert max_abs(l.base_layer.weight, weights_before[n]) < 1e-6
    if preset == "auto":  # (the weights above already say so; one forward to be sure)
        assert rel_err(logits(model, x), unmerged) < 1e-5
    unmerge_lora(model)  # a second unmerge must not subtract twice
    for n, l in lora_layers(model):
        assert max_abs(l.base_layer.weight, weights_before[n]) < 1e-6

    with pytest.raises(LoraError, match="already has LoRA"):
        inject_lora(model, LoraConfig(rank=4, targets=preset))


@pytest.mark.parametrize("name,preset", CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_preset_selects_what_it_names(name, preset):
    model = shared(name)
    wrap, skipped = resolve_targets(model, preset)
    heads = head_modules(model)
    rows = {l.name: l for l in list_layers(model)}
    assert len(set(wrap)) == len(wrap)
    for n in wrap:
        assert n in rows and rows[n].wrappable, n
        assert not under(n, heads), f"{n} is in the head, which is trained in full"
    for n, reason in skipped:
        assert not rows[n].wrappable and reason == rows[n].reason and reason
    picked = [model.get_submodule(n) for n in wrap]
    if preset == "attention":
        assert all(re.search(r"(qkv|qk|kv|q|k|v|proj|q_proj|k_proj|v_proj)(\.ln)?(\.linear)?$", n) for n in wrap), wrap
    if preset in ("attention", "attention+mlp", "late-blocks"):
        assert not any("patch_embed" in n or n.startswith("stem") for n in wrap), wrap
    if preset == "all-linear":
        assert all(isinstance(m, nn.Linear) for m in picked)
        n_linear = sum(isinstance(m, nn.Linear) for n, m in model.named_modules() if not under(n, heads))
        assert len(wrap) + len(skipped) == n_linear
    if preset == "all-conv":
        assert all(isinstance(m, nn.Conv2d) and m.groups == 1 for m in picked)
        n_conv = sum(isinstance(m, nn.Conv2d) for n, m in model.named_modules() if not under(n, heads))
        assert len(wrap) + len(skipped) == n_conv


# exact counts for canonical families (a preset must wrap exactly the layers it names)
EXPECTED_COUNTS = {
    ("vit_tiny_patch16_224", "attention"): 24,        # 12 blocks x (qkv, proj)
    ("vit_tiny_patch16_224", "attention+mlp"): 48,    # + (fc1, fc2)
    ("vit_tiny_patch16_224", "all-linear"): 48,
    ("vit_tiny_patch16_224", "auto"): 16,             # auto = late blocks for every family
    ("vit_tiny_patch16_224", "late-blocks"): 16,      # last 4 of 12 blocks
    ("swin_tiny_patch4_window7_224", "attention"): 24,
    ("swin_tiny_patch4_window7_224", "attention+mlp"): 48,
    ("swin_tiny_patch4_window7_224", "all-linear"): 51,  # + 3 patch-merging reductions
    ("eva02_tiny_patch14_224", "attention"): 24,
    ("caformer_s18", "attention"): 24,                # 12 attention blocks in stages 2-3
    ("levit_128s", "attention"): 24,                  # 9 blocks x 2 + 2 downsamples x 3
    ("resnet18", "all-conv"): 20,
    ("resnet18", "auto"): 5,                          # layer4: 2 blocks x 2 convs + downsample
    ("resnet18", "late-blocks"): 5,
}


@pytest.mark.parametrize("key", sorted(EXPECTED_COUNTS), ids=lambda k: f"{k[0]}-{k[1]}")
def test_preset_counts(key):
    name, preset = key
    wrap, skipped = resolve_targets(shared(name), preset)
    assert len(wrap) == EXPECTED_COUNTS[key]


def test_attention_preset_on_vit_is_exactly_qkv_and_proj():
    model = build("vit_tiny_patch16_224")
    wrap, skipped = resolve_targets(model, "attention")
    assert wrap == [f"blocks.{i}.attn.{n}" for i in range(12) for n in ("qkv", "proj")]
    assert skipped == []


def test_suffix_trap_proj_matches_patch_embed_but_attention_preset_does_not():
    model = build("vit_tiny_patch16_224")
    by_suffix, _ = resolve_targets(model, "proj")
    assert "patch_embed.proj" in by_suffix
    assert len(by_suffix) == 13
    by_preset, _ = resolve_targets(model, "attention")
    assert "patch_embed.proj" not in by_preset
    assert set(by_preset) == (set(by_suffix) - {"patch_embed.proj"}) | {f"blocks.{i}.attn.qkv" for i in range(12)}
    # suffixes match at a '.' boundary only: 'oj' is not a suffix of '...proj'
    with pytest.raises(LoraError, match="match no layer"):
        resolve_targets(model, "oj")
    both, _ = resolve_targets(model, "qkv, fc2")
    assert len(both) == 24 and all(n.endswith((".qkv", ".fc2")) for n in both)


def test_regex_targets_use_fullmatch():
    model = build("vit_tiny_patch16_224")
    assert resolve_targets(model, r"re:blocks\.1\.attn\.qkv")[0] == ["blocks.1.attn.qkv"]
    # re.search would hit blocks.1.* and blocks.10/11.*; fullmatch hits nothing
    with pytest.raises(LoraError, match="match no layer"):
        resolve_targets(model, r"re:blocks\.1")
    hits, _ = resolve_targets(model, r"re:blocks\.1\d?\.mlp\.fc\d")
    assert hits == [f"blocks.{i}.mlp.fc{j}" for i in (1, 10, 11) for j in (1, 2)]
    assert len(resolve_targets(model, r"re:.*attn\.(qkv|proj)")[0]) == 24
    with pytest.raises(LoraError, match="invalid"):
        resolve_targets(model, "re:blocks.(")


def test_unknown_preset_like_spec_and_head_are_refused():
    model = build("resnet18")
    with pytest.raises(LoraError, match="match no layer"):
        resolve_targets(model, "attention")  # a CNN has no attention: a clear error, not an empty model
    with pytest.raises(LoraError, match="match no layer"):
        resolve_targets(model, "fc")  # the head is trained in full, never wrapped


# --------------------------------------------------------------------------- #
# Heads, freezing and the adapter state dict
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("name", list(FAMILIES))
def test_trainable_set_and_adapter_round_trip(name):
    model = build(name)
    wrapped = inject_lora(model, LoraConfig(rank=4, alpha=4))
    heads = head_modules(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    lora_params = {f"{n}.lora_{ab}.weight" for n in wrapped for ab in "AB"}
    head_params = {n for n, _ in model.named_parameters() if under(n, heads)}
    assert head_params, "the head has parameters"
    assert trainable == lora_params | head_params
    # classifier(s) reset for the new class count
    for c in classifier_names(model):
        assert model.get_submodule(c).out_features == NUM_CLASSES

    randomise_lora_b(model)
    randomise_head(model)
    x = batch(name)
    trained = logits(model, x)
    sd = adapter_state_dict(model)
    assert set(sd) >= lora_params | head_params
    for k in sd:
        assert ".lora_A." in k or ".lora_B." in k or under(k.rsplit(".", 1)[0], heads), k
    assert not any(".base_layer." in k for k in sd)

    fresh = build_fresh(name)
    inject_lora(fresh, LoraConfig(rank=4, alpha=4), wrapped)
    assert not torch.equal(logits(fresh, x), trained)
    load_adapter_state_dict(fresh, sd)
    assert torch.equal(logits(fresh, x), trained)

    # merged and stripped back to a plain timm model, it still gives the same answer
    remove_lora(fresh)
    assert not lora_layers(fresh)
    assert rel_err(logits(fresh, x), trained) < 1e-5


def test_levit_tuple_head():
    model = build("levit_128s")
    assert classifier_names(model) == ["head.linear", "head_dist.linear"]
    assert head_modules(model) == ["head", "head_dist"]
    inject_lora(model, LoraConfig(rank=2))
    for h in ("head.linear", "head_dist.linear"):
        lin = model.get_submodule(h)
        assert lin.out_features == NUM_CLASSES and lin.weight.requires_grad
    assert model.head.bn.weight.requires_grad and model.head_dist.bn.weight.requires_grad
    sd = adapter_state_dict(model)
    assert "head_dist.linear.weight" in sd and "head.bn.running_mean" in sd and "head_dist.bn.running_var" in sd


def test_caformer_nested_mlp_head():
    model = build("caformer_s18")
    assert classifier_names(model) == ["head.fc.fc2"]
    assert head_modules(model) == ["head"]
    inject_lora(model, LoraConfig(rank=2))
    assert model.head.fc.fc2.out_features == NUM_CLASSES
    # the MLP head's hidden layer and norm belong with the new classes
    for p in ("head.fc.fc1.weight", "head.norm.weight", "head.fc.fc2.weight"):
        assert dict(model.named_parameters())[p].requires_grad, p


def test_repvit_nested_distilled_head():
    model = build("repvit_m0_9")
    assert classifier_names(model) == ["head.head.l", "head.head_dist.l"]
    assert head_modules(model) == ["head"]
    inject_lora(model, LoraConfig(rank=2))
    assert model.head.head.l.out_features == NUM_CLASSES and model.head.head_dist.l.out_features == NUM_CLASSES
    assert model.head.head.l.weight.requires_grad and model.head.head_dist.l.weight.requires_grad


@pytest.mark.parametrize("train_norm,train_bias", [(True, False), (False, True), (True, True)])
def test_train_norm_and_bias(train_norm, train_bias):
    model = build("vit_tiny_patch16_224")
    cfg = LoraConfig(rank=2, targets="attention", train_norm=train_norm, train_bias=train_bias)
    wrapped = inject_lora(model, cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if ".lora_" in n}
    assert len(lora) == 2 * len(wrapped)
    assert "head.weight" in trainable
    assert ("blocks.0.norm1.weight" in trainable) == train_norm
    assert ("norm.weight" in trainable) == train_norm
    assert ("blocks.0.mlp.fc1.bias" in trainable) == train_bias
    assert ("blocks.0.attn.qkv.base_layer.bias" in trainable) == train_bias
    assert "blocks.0.mlp.fc1.weight" not in trainable
    assert "blocks.0.attn.qkv.base_layer.weight" not in trainable
    assert "pos_embed" not in trainable and "patch_embed.proj.weight" not in trainable
    sd = adapter_state_dict(model)
    assert set(sd) == trainable  # ViT's head has no buffers
    est = estimate_trainable(shared("vit_tiny_patch16_224"), cfg)
    assert est["trainable"] == count_parameters(model)[0]


def test_trained_batchnorm_stats_travel_with_the_adapter():
    """train_norm on a CNN: BatchNorms train, so their running statistics change and
    must be saved, or the reloaded adapter would not reproduce the trained model."""
    cfg = LoraConfig(rank=2, targets="late-blocks", train_norm=True)
    model = build("resnet18")
    wrapped = inject_lora(model, cfg)
    train_mode(model)
    with torch.no_grad():
        model(batch("resnet18", seed=3) * 3 + 1)
    model.eval()
    x = batch("resnet18")
    trained = logits(model, x)
    sd = adapter_state_dict(model)
    assert "bn1.running_mean" in sd and "layer1.0.bn1.running_var" in sd
    fresh = build("resnet18")
    inject_lora(fresh, cfg, wrapped)
    load_adapter_state_dict(fresh, sd)
    assert torch.equal(logits(fresh, x), trained)


def test_load_adapter_refuses_mismatch():
    model = build("resnet18")
    wrapped = inject_lora(model, LoraConfig(rank=4))
    sd = adapter_state_dict(model)
    other_rank = build("resnet18")
    inject_lora(other_rank, LoraConfig(rank=2), wrapped)
    with pytest.raises(LoraError, match="shape"):
        load_adapter_state_dict(other_rank, sd)
    fresh = build("resnet18")
    inject_lora(fresh, LoraConfig(rank=4), wrapped)
    missing = dict(sd)
    missing.pop(next(k for k in sd if ".lora_B." in k))
    with pytest.raises(LoraError, match="missing"):
        load_adapter_state_dict(fresh, missing)
    extra = dict(sd, **{"layer1.0.conv1.weight": fresh.layer1[0].conv1.weight.detach().clone()})
    with pytest.raises(LoraError, match="unexpected"):
        load_adapter_state_dict(fresh, extra)  # a frozen base tensor is not part of an adapter
    merge_lora(fresh)
    with pytest.raises(LoraError, match="unmerge"):
        adapter_state_dict(fresh)


def test_inject_with_explicit_names_is_validated():
    model = build("convnext_atto")
    with pytest.raises(LoraError, match="stages.0.blocks.0.conv_dw"):
        inject_lora(model, LoraConfig(rank=2), ["stages.0.blocks.0.conv_dw"])  # depthwise
    assert not lora_layers(model)
    with pytest.raises(LoraError, match="no_such_layer"):
        inject_lora(model, LoraConfig(rank=2), ["no_such_layer"])
    with pytest.raises(LoraError, match="head"):
        inject_lora(model, LoraConfig(rank=2), ["head.fc"])
    assert not lora_layers(model)
    assert all(p.requires_grad for p in model.parameters()), "a refused injection leaves the model untouched"


# --------------------------------------------------------------------------- #
# Skipped layers, EVA's fused qkv, scaling, dropout, BatchNorm
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("name", ["convnext_atto", "efficientnet_b0", "mobilenetv3_small_050",
                                  "mobilenetv4_conv_small", "regnetx_002", "repvit_m0_9"])
def test_depthwise_convs_reported_as_skipped(name):
    model = shared(name)
    grouped = {n for n, m in model.named_modules()
               if isinstance(m, nn.Conv2d) and m.groups != 1 and not under(n, head_modules(model))}
    assert grouped
    wrap, skipped = resolve_targets(model, "all-conv")
    skipped = dict(skipped)
    assert grouped <= set(skipped)
    assert not grouped & set(wrap)
    assert all("depthwise" in skipped[n] for n in grouped)
    rows = {l.name: l for l in list_layers(model)}
    assert all(not rows[n].wrappable and "depthwise" in rows[n].reason for n in grouped)


def test_eva_fused_qkv_with_q_bias_goes_through_the_wrapper():
    model = build("eva02_tiny_patch14_224")
    attn = model.blocks[0].attn
    assert attn.q_bias is not None and attn.qkv.bias is None  # the F.linear(x, self.qkv.weight, ...) path
    with torch.no_grad():
        for blk in model.blocks:  # non-zero q/v bias, so the bias path matters
            blk.attn.q_bias.normal_(std=0.2)
            blk.attn.v_bias.normal_(std=0.2)
    x = batch("eva02_tiny_patch14_224")
    base = logits(model, x)
    wrapped = inject_lora(model, LoraConfig(rank=4, targets="attention"))
    qkv_names = [n for n in wrapped if n.endswith("attn.qkv")]
    assert len(qkv_names) == 12
    assert torch.equal(logits(model, x), base)
    calls = []
    hooks = [model.get_submodule(n).register_forward_hook(lambda *a, n=n: calls.append(n)) for n in qkv_names]
    with torch.no_grad():
        for n in qkv_names:  # only the qkv wrappers get a non-zero B
            model.get_submodule(n).lora_B.weight.normal_(std=0.02)
    changed = logits(model, x)
    for h in hooks:
        h.remove()
    assert sorted(set(calls)) == sorted(qkv_names)
    assert rel_err(changed, base) > 1e-4
    merge_lora(model)
    assert rel_err(logits(model, x), changed) < 1e-5
    unmerge_lora(model)
    remove_lora(model)
    assert isinstance(model.blocks[0].attn.qkv, nn.Linear)
    assert model.blocks[0].attn.qkv_bias_separate is False  # the plain timm model is back as it was
    assert rel_err(logits(model, x), changed) < 1e-5


@pytest.mark.parametrize("use_rslora", [False, True])
def test_scaling_and_rslora(use_rslora):
    model = build("vit_tiny_patch16_224")
    cfg = LoraConfig(rank=16, alpha=8, targets="attention", use_rslora=use_rslora)
    inject_lora(model, cfg)
    expected = 8 / math.sqrt(16) if use_rslora else 8 / 16
    assert cfg.scaling == pytest.approx(expected)
    assert all(l.scaling == pytest.approx(expected) for _, l in lora_layers(model))
    layer = model.blocks[0].attn.qkv
    with torch.no_grad():
        layer.lora_B.weight.normal_()
        x = torch.randn(3, 192)
        got = layer(x) - layer.base_layer(x)
        want = (x @ layer.lora_A.weight.T @ layer.lora_B.weight.T) * expected
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.delta_weight(), layer.lora_B.weight @ layer.lora_A.weight * expected)


def test_conv_wrapper_maths():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, 3, stride=2, padding=1)
    layer = LoraConv2d(conv, rank=3, alpha=6)
    assert layer.lora_A.stride == (2, 2) and layer.lora_A.padding == (1, 1)
    assert layer.lora_B.kernel_size == (1, 1)
    x = torch.randn(2, 6, 9, 9)
    with torch.no_grad():
        assert torch.equal(layer(x), conv(x))
        layer.lora_B.weight.normal_()
        ref = nn.functional.conv2d(x, conv.weight + layer.delta_weight(), conv.bias, stride=2, padding=1)
        torch.testing.assert_close(layer(x), ref, rtol=1e-4, atol=1e-5)
    assert layer.scaling == 2.0


def test_dropout_only_on_the_lora_path():
    torch.manual_seed(0)
    lin = nn.Linear(32, 16)
    layer = LoraLinear(lin, rank=4, alpha=4, dropout=0.5)
    x = torch.randn(8, 32)
    with torch.no_grad():
        layer.train()
        assert torch.equal(layer(x), lin(x))  # B = 0: dropout must not touch the base input
        layer.lora_B.weight.normal_()
        a, b = layer(x), layer(x)
        assert not torch.equal(a, b)  # dropout is active on the LoRA path in training
        # the base part is deterministic: out = base(x) + B(A(dropout(x))) * s, same mask from the same seed
        base = lin(x)
        torch.manual_seed(5)
        out = layer(x)
        torch.manual_seed(5)
        dropped = layer.lora_dropout(x)
        assert (dropped == 0).float().mean().item() == pytest.approx(0.5, abs=0.1)
        torch.testing.assert_close(out, base + layer.lora_B(layer.lora_A(dropped)) * layer.scaling)
        layer.eval()
        e1, e2 = layer(x), layer(x)
        assert torch.equal(e1, e2)
        torch.testing.assert_close(e1 - base, layer.lora_B(layer.lora_A(x)) * layer.scaling)

    # whole model: eval output equals the base exactly, train output's base part is deterministic
    model = build("vit_tiny_patch16_224")
    x = batch("vit_tiny_patch16_224")
    base_eval = logits(model, x)
    model.train()
    base_train = logits(model, x)
    model.eval()
    inject_lora(model, LoraConfig(rank=4, dropout=0.5, targets="attention"))
    assert isinstance(model.blocks[0].attn.qkv.lora_dropout, nn.Dropout)
    assert torch.equal(logits(model, x), base_eval)
    train_mode(model)
    assert torch.equal(logits(model, x), base_train)


def test_train_mode_keeps_frozen_batchnorm_stats():
    model = build("resnet18")
    inject_lora(model, LoraConfig(rank=2))
    stats = {n: b.clone() for n, b in model.named_buffers() if "running" in n or "num_batches" in n}
    train_mode(model)
    assert model.training
    assert all(l.training for _, l in lora_layers(model))
    assert not model.bn1.training and not model.layer4[0].bn1.training
    out = model(batch("resnet18") * 2 + 1)
    out.sum().backward()
    for n, b in model.named_buffers():
        if n in stats:
            assert torch.equal(b, stats[n]), f"frozen BatchNorm statistics changed: {n}"
    assert model.layer4[0].conv1.lora_B.weight.grad is not None
    assert model.layer4[0].conv1.base_layer.weight.grad is None


def test_train_mode_leaves_trainable_head_batchnorm_training():
    model = build("levit_128s")
    inject_lora(model, LoraConfig(rank=2))
    train_mode(model)
    assert model.head.bn.training  # the head is trained in full
    assert not model.stem.conv1.bn.training
    before = model.head.bn.running_mean.clone()
    frozen = model.stem.conv1.bn.running_mean.clone()
    with torch.no_grad():
        model(batch("levit_128s"))
    assert not torch.equal(model.head.bn.running_mean, before)
    assert torch.equal(model.stem.conv1.bn.running_mean, frozen)


# --------------------------------------------------------------------------- #
# Counting and listing for the UI
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("name", list(FAMILIES))
def test_estimate_trainable_matches_injection(name):
    cfg = LoraConfig(rank=8, targets="auto")
    est = estimate_trainable(shared(name), cfg)
    model = build(name)
    wrapped = inject_lora(model, cfg)
    trainable, total = count_parameters(model)
    assert est["layers"] == wrapped
    assert est["trainable"] == trainable
    assert est["total"] == total
    assert est["lora_params"] == sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    assert est["share"] == pytest.approx(trainable / total)
    assert 0 < est["share"] < 1
    again = estimate_trainable(model, cfg)  # on the injected model: the same answer
    assert (again["layers"], again["lora_params"], again["trainable"]) == (wrapped, est["lora_params"], trainable)


@pytest.mark.parametrize("name", ["resnet18", "convnext_atto", "levit_128s"])
def test_estimate_trainable_with_norm_and_bias(name):
    cfg = LoraConfig(rank=4, targets="auto", train_norm=True, train_bias=True)
    est = estimate_trainable(shared(name), cfg)
    model = build(name)
    inject_lora(model, cfg)
    assert est["trainable"] == count_parameters(model)[0]
    assert est["other_params"] > 0


def test_list_layers_rows():
    rows = {r.name: r for r in list_layers(shared("resnet18"))}
    conv1 = rows["conv1"]
    assert (conv1.type, conv1.shape, conv1.params, conv1.wrappable) == ("Conv2d", "64x3x7x7", 64 * 3 * 49, True)
    assert "fc" not in rows  # the head is not a LoRA candidate
    assert len(rows) == 20
    vit = {r.name: r for r in list_layers(shared("vit_tiny_patch16_224"))}
    qkv = vit["blocks.0.attn.qkv"]
    assert (qkv.type, qkv.shape, qkv.params) == ("Linear", "576x192", 576 * 192 + 576)
    assert "head" not in vit and "patch_embed.proj" in vit
    dw = {r.name: r for r in list_layers(shared("convnext_atto"))}["stages.0.blocks.0.conv_dw"]
    assert not dw.wrappable and "depthwise" in dw.reason
    # after injection the list still shows the original layers, not the wrappers' parts
    model = build("vit_tiny_patch16_224")
    inject_lora(model, LoraConfig(rank=2, targets="attention"))
    assert [r.name for r in list_layers(model)] == list(vit)


# --------------------------------------------------------------------------- #
# Presets name the same thing in other families; layers LoRA could not merge are skipped
# --------------------------------------------------------------------------- #

def test_cait_attention_preset_is_attention_only():
    """CaiT names its attentions ...Attn, and its class-attention *block* class contains
    'ClassAttn': the preset must still wrap only the attention's own layers."""
    torch.manual_seed(0)
    model = timm.create_model("cait_xxs24_224", pretrained=False, img_size=32, num_classes=NUM_CLASSES)
    wrap, _ = resolve_targets(model, "attention")
    assert not any(".mlp." in n or "patch_embed" in n for n in wrap), [n for n in wrap if ".mlp." in n][:3]
    assert {f"blocks_token_only.1.attn.{p}" for p in ("q", "k", "v", "proj")} <= set(wrap)
    assert {f"blocks.23.attn.{p}" for p in ("qkv", "proj", "proj_l", "proj_w")} <= set(wrap)
    assert len(wrap) == 24 * 4 + 2 * 4
    assert resolve_targets(model, "auto") == resolve_targets(model, "late-blocks")


class _StdConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = timm.layers.StdConv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 3)

    def get_classifier(self):
        return self.fc

    def forward(self, x):
        return self.fc(self.conv(self.stem(x)).mean((2, 3)))


def test_weight_standardised_conv_is_skipped_with_the_reason():
    torch.manual_seed(0)
    model = _StdConvNet().eval()
    rows = {l.name: l for l in list_layers(model)}
    assert not rows["stem"].wrappable and "weight" in rows["stem"].reason
    wrap, skipped = resolve_targets(model, "all-conv")
    assert wrap == ["conv"] and [n for n, _ in skipped] == ["stem"]
    # why: a StdConv2d standardises W + dW in forward, so a merged LoRA is not the unmerged one
    layer = LoraConv2d(model.stem, rank=2, alpha=2)
    with torch.no_grad():
        layer.lora_B.weight.normal_(std=0.5)
        x = torch.randn(1, 3, 8, 8)
        before = layer(x)
        layer.merge()
        assert rel_err(layer(x), before) > 1e-3


class _DwAttention(nn.Module):  # an "attention" with nothing LoRA can wrap
    def __init__(self, c):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)

    def forward(self, x):
        return x * self.dw(x).sigmoid()


class _Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.attn = _DwAttention(c)
        self.pw = nn.Conv2d(c, c, 1)

    def forward(self, x):
        return x + self.pw(self.attn(x))


class _GatedCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(*[_Block(8) for _ in range(3)])
        self.fc = nn.Linear(8, 3)

    def get_classifier(self):
        return self.fc

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def test_auto_falls_back_to_late_blocks_when_attention_cannot_be_wrapped():
    model = _GatedCnn()
    with pytest.raises(LoraError, match="match no layer"):
        resolve_targets(model, "attention")
    wrap, skipped = resolve_targets(model, "auto")
    assert wrap == ["blocks.2.pw"]
    assert skipped == [("blocks.2.attn.dw", "grouped/depthwise conv (not supported by LoRA wrappers)")]


# #13.13: more timm families, trained end to end with the defaults (targets auto, flip, batch 16)
# from random weights at 64 px. 17 training images, so the last batch of the epoch holds one
# image (the BatchNorm1d in LeViT's and RepViT's heads used to crash on it), and FastViT's
# frozen-prefix cut used to look for its `stages` list, which its forward never calls.
TRAINED_FAMILIES = ["fastvit_t8", "repvit_m1", "levit_128s", "efficientvit_b0", "edgenext_xx_small"]
# also checked by hand the same way (each 30-90 s here): mobilevitv2_050, ghostnetv2_100, tiny_vit_5m_224, hgnetv2_b0


@pytest.fixture(scope="module")
def seventeen_train_images(tmp_path_factory):
    from conftest import write_colour_folder
    root = write_colour_folder(tmp_path_factory.mktemp("families") / "data", per_class=7, side=40)
    (root / "class_2" / "06.png").unlink()  # 20 images: 3 validation, 17 training
    return root


@pytest.mark.parametrize("name", TRAINED_FAMILIES)
def test_family_trains_with_the_defaults_or_is_refused_first(name, seventeen_train_images, tmp_path):
    from lora_gui.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from lora_gui.jobs.device_queue import DeviceQueue
    from lora_gui.jobs.training_job import TrainingJob
    cfg = RunConfig(model=ModelConfig(name=name, weights="random", image_size=64),
                    data=DataConfig(source=str(seventeen_train_images)), train=TrainConfig(epochs=1))
    job = TrainingJob(cfg, workspace=str(tmp_path), run_dir=str(tmp_path / "run"), queue=DeviceQueue()).start()
    assert job.wait(300)
    assert len(job.run.split().train) == 17
    if job.status == "failed":  # refused before training, with the reason (never a crash mid-epoch)
        assert job.failure_kind == "input" and not job.snapshot().step_rows, job.message
    else:
        assert job.status == "finished", job.message
