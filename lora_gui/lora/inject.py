"""The verbs on a model: inject LoRA, choose what trains, merge, unmerge, remove, count."""
from __future__ import annotations

from torch import nn

from ..config import LoraConfig
from ..errors import LoraError
from .layers import LoraLayer, get_parent, wrapper_for
from .targets import (
    _base_of,
    _in,
    _reads_weight_directly,
    head_modules,
    list_layers,
    resolve_targets,
)


def lora_layers(model: nn.Module):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def inject_lora(model: nn.Module, cfg: LoraConfig, layer_names: list[str] | None = None) -> list[str]:
    """Wrap the chosen layers, freeze the rest, unfreeze LoRA + head (+norm/bias).

    Returns the exact names of the wrapped layers (recorded in config.json).
    """
    if lora_layers(model):
        raise LoraError("this model already has LoRA layers; build a fresh model instead of injecting twice")
    if layer_names is None:
        layer_names, _ = resolve_targets(model, cfg.targets)
    else:
        _check_layer_names(model, layer_names)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in layer_names:
        parent, child = get_parent(model, name)
        base = getattr(parent, child)
        restore = {}
        if hasattr(parent, "qkv_bias_separate") and _reads_weight_directly(parent, child):
            # EVA: qkv = F.linear(x, self.qkv.weight, q/k/v bias) would bypass the wrapper;
            # the separate-bias path computes the same through self.qkv(x)
            restore["qkv_bias_separate"] = parent.qkv_bias_separate
            parent.qkv_bias_separate = True
        cls = wrapper_for(base)
        wrapper = cls(base, cfg.rank, cfg.alpha, cfg.dropout, cfg.use_rslora)
        wrapper.parent_restore = restore  # put back by remove_lora
        setattr(parent, child, wrapper)
    set_trainable(model, cfg)
    return list(layer_names)


def _check_layer_names(model: nn.Module, layer_names: list[str]) -> None:
    """Explicit layer names (e.g. from an adapter's metadata) must be wrappable candidates."""
    if len(set(layer_names)) != len(layer_names):
        dup = next(n for n in layer_names if layer_names.count(n) > 1)
        raise LoraError(f"layer {dup!r} is listed twice")
    rows = {l.name: l for l in list_layers(model)}
    heads = head_modules(model)
    for name in layer_names:
        if _in(name, heads):
            raise LoraError(f"layer {name!r} is part of the classifier head, which is trained in full; "
                            "LoRA does not wrap it")
        row = rows.get(name)
        if row is None:
            raise LoraError(f"{type(model).__name__} has no Linear/Conv2d layer named {name!r}")
        if not row.wrappable:
            raise LoraError(f"layer {name!r} cannot take LoRA: {row.reason}")


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)) or "Norm" in type(m).__name__


def set_trainable(model: nn.Module, cfg: LoraConfig) -> None:
    for _, layer in lora_layers(model):
        layer.lora_A.weight.requires_grad_(True)
        layer.lora_B.weight.requires_grad_(True)
    for head in head_modules(model):
        for p in model.get_submodule(head).parameters():
            p.requires_grad_(True)
    for name, m in model.named_modules():
        if cfg.train_norm and _is_norm(m):
            for p in m.parameters(recurse=False):
                p.requires_grad_(True)
        if cfg.train_bias and getattr(m, "bias", None) is not None and isinstance(m.bias, nn.Parameter):
            m.bias.requires_grad_(True)


def train_mode(model: nn.Module) -> nn.Module:
    """model.train(), but frozen BatchNorms stay in eval mode: otherwise their
    running statistics drift during training and the saved adapter (which
    holds no frozen buffers) would not reproduce the trained model."""
    model.train()
    for m in model.modules():
        if (isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats
                and not any(p.requires_grad for p in m.parameters())):
            m.eval()
    return model


def merge_lora(model: nn.Module) -> None:
    for _, layer in lora_layers(model):
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    for _, layer in lora_layers(model):
        layer.unmerge()


def remove_lora(model: nn.Module) -> nn.Module:
    """Merge and put the plain base layers back: the result is an ordinary timm model."""
    for name, layer in lora_layers(model):
        layer.merge()
        parent, child = get_parent(model, name)
        setattr(parent, child, layer.base_layer)
        for attr, value in getattr(layer, "parent_restore", {}).items():
            setattr(parent, attr, value)
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) counted on the model as it is now (base weights counted once)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def estimate_trainable(model: nn.Module, cfg: LoraConfig) -> dict:
    """What ``inject_lora`` would train, without touching the model (for the UI)."""
    names, skipped = resolve_targets(model, cfg.targets)
    lora = 0
    for n in names:
        m = _base_of(model, n)
        if isinstance(m, nn.Linear):
            lora += cfg.rank * (m.in_features + m.out_features)
        else:
            k = m.kernel_size[0] * m.kernel_size[1]
            lora += cfg.rank * (m.in_channels * k + m.out_channels)
    head = sum(p.numel() for h in head_modules(model) for p in model.get_submodule(h).parameters())
    extra = 0
    heads = head_modules(model)
    for name, m in model.named_modules():
        if _in(name, heads):
            continue
        if cfg.train_norm and _is_norm(m):
            extra += sum(p.numel() for p in m.parameters(recurse=False))
        elif cfg.train_bias and isinstance(getattr(m, "bias", None), nn.Parameter):
            extra += m.bias.numel()
    total = sum(p.numel() for p in model.parameters()) + lora
    trainable = lora + head + extra
    return {"layers": names, "skipped": skipped, "lora_params": lora, "head_params": head,
            "other_params": extra, "trainable": trainable, "total": total,
            "share": trainable / total if total else 0.0}
