"""LoRA for timm vision models: wrap, freeze, merge, save.

A wrapped layer computes ``base_layer(x) + lora_B(lora_A(dropout(x))) * scaling``.
``lora_A`` starts random (kaiming) and ``lora_B`` at zero, so a model equals
its base model exactly right after injection (microsoft/LoRA's recipe).
Sub-module names (``base_layer``, ``lora_A``, ``lora_B``) follow PEFT's so a
state dict maps onto PEFT's layout by renaming keys only.
"""
from __future__ import annotations

import functools
import inspect
import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from .config import LoraConfig


class LoraError(ValueError):
    """A LoRA operation was refused; the message says why."""


class LoraLayer(nn.Module):
    """Common part of the Linear and Conv2d wrappers."""

    def __init__(self, base_layer: nn.Module, rank: int, alpha: float, dropout: float, use_rslora: bool):
        super().__init__()
        self.base_layer = base_layer
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / (math.sqrt(rank) if use_rslora else rank)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def reset_lora_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        return out + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the LoRA update into the base weight; refuses NaN/inf (PEFT's safe_merge)."""
        if self.merged:
            return  # merging twice must never add the delta twice
        delta = self.delta_weight()
        merged = self.base_layer.weight + delta.to(self.base_layer.weight.dtype)
        if not torch.isfinite(merged).all():
            raise LoraError("merging would put NaN/inf into the weights; the adapter is broken "
                            "(train again with a lower learning rate)")
        self.base_layer.weight.copy_(merged)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        self.base_layer.weight.sub_(self.delta_weight().to(self.base_layer.weight.dtype))
        self.merged = False


class LoraLinear(LoraLayer):
    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False):
        super().__init__(base_layer, rank, alpha, dropout, use_rslora)
        w = base_layer.weight
        self.lora_A = nn.Linear(base_layer.in_features, rank, bias=False, device=w.device, dtype=w.dtype)
        self.lora_B = nn.Linear(rank, base_layer.out_features, bias=False, device=w.device, dtype=w.dtype)
        self.reset_lora_parameters()

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling


class LoraConv2d(LoraLayer):
    """LoRA on a regular (groups=1) convolution: A is a k x k conv to ``rank``
    channels with the base's stride and padding, B a 1x1 conv back up."""

    def __init__(self, base_layer: nn.Conv2d, rank: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False):
        super().__init__(base_layer, rank, alpha, dropout, use_rslora)
        w = base_layer.weight
        self.lora_A = nn.Conv2d(base_layer.in_channels, rank, base_layer.kernel_size, base_layer.stride,
                                base_layer.padding, bias=False, device=w.device, dtype=w.dtype)
        self.lora_B = nn.Conv2d(rank, base_layer.out_channels, 1, bias=False, device=w.device, dtype=w.dtype)
        self.reset_lora_parameters()

    def delta_weight(self) -> torch.Tensor:
        b = self.lora_B.weight.flatten(1)                       # (out, r)
        a = self.lora_A.weight                                  # (r, in, kh, kw)
        return torch.einsum("or,rikl->oikl", b, a) * self.scaling


# --------------------------------------------------------------------------- #
# Finding the head and the candidate layers
# --------------------------------------------------------------------------- #

def classifier_names(model: nn.Module) -> list[str]:
    """Names of the classifier module(s), from timm's pretrained_cfg (a name or a tuple)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier")
    if isinstance(names, str):
        names = [names]
    names = [n for n in (names or []) if _has_module(model, n)]
    if not names and hasattr(model, "get_classifier"):
        clf = model.get_classifier()
        clfs = clf if isinstance(clf, (tuple, list)) else [clf]
        by_id = {id(m): n for n, m in model.named_modules()}
        names = [by_id[id(c)] for c in clfs if id(c) in by_id and by_id[id(c)]]
    if not names:
        raise LoraError(f"cannot find the classifier head of {type(model).__name__}")
    return names


def head_modules(model: nn.Module) -> list[str]:
    """Modules trained in full: the classifier(s) and, when nested (``head.fc``,
    CAFormer's ``head.fc.fc2``), the whole top-level head container they sit in,
    whose norm / pre-logits MLP belongs with the new classes."""
    roots = []
    for name in classifier_names(model):
        top = name.split(".")[0]
        root = top if "." in name and top.startswith("head") else name
        if root not in roots:
            roots.append(root)
    return roots


def _has_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


def _in(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@dataclass
class LayerInfo:
    name: str
    type: str
    shape: str
    params: int
    wrappable: bool
    reason: str = ""   # why it cannot be wrapped


# Subclasses whose forward computes exactly F.linear / F.conv2d of their own weight
# (up to input padding that a 1x1 kernel never needs); any other subclass may transform
# its weight (e.g. weight standardisation), so a merged LoRA would not equal the unmerged one.
_PLAIN_LINEAR = ("Linear",)
_PLAIN_CONV = ("Conv2d", "Conv2dSame", "Conv2dSameExport")


def _skip_reason(model: nn.Module, name: str, module: nn.Module) -> str:
    cls = type(module).__name__
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return "grouped/depthwise conv (not supported by LoRA wrappers)"
        if module.padding_mode != "zeros" or module.dilation != (1, 1):
            return "dilated or non-zero-padded conv"
        if cls in ("Conv2dSame", "Conv2dSameExport") and module.kernel_size != (1, 1):
            return "TF-style dynamic 'same' padding"
        if cls not in _PLAIN_CONV and type(module).forward is not nn.Conv2d.forward:
            return f"{cls} transforms its weight in forward (e.g. weight standardisation); LoRA could not be merged"
    elif cls not in _PLAIN_LINEAR and type(module).forward is not nn.Linear.forward:
        return f"{cls} has its own forward; LoRA could not be merged exactly"
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if _reads_weight_directly(parent, child) and not hasattr(parent, "qkv_bias_separate"):
        return f"{type(parent).__name__} reads .weight directly, bypassing any wrapper"
    return ""


@functools.lru_cache(maxsize=None)
def _forward_source(cls: type) -> str:
    try:
        return inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return ""


def _reads_weight_directly(parent: nn.Module, child: str) -> bool:
    # EVA, BEiT and Swin-V2 call F.linear(x, self.qkv.weight, ...) which would skip LoRA.
    return f"self.{child}.weight" in _forward_source(type(parent))


def _base_of(model: nn.Module, name: str) -> nn.Module:
    """The original layer at ``name``: the module itself, or a wrapper's ``base_layer``."""
    m = model.get_submodule(name)
    return m.base_layer if isinstance(m, LoraLayer) else m


def list_layers(model: nn.Module) -> list[LayerInfo]:
    """Every Linear / Conv2d outside the head, with whether LoRA can wrap it.

    On a model that already has LoRA, wrapped layers are listed under their own
    name (as the layer they wrap), never as their base_layer / lora_A / lora_B parts.
    """
    heads = head_modules(model)
    rows = []
    wrappers: list[str] = []
    for name, m in model.named_modules():
        if _in(name, heads) or _in(name, wrappers):
            continue
        if isinstance(m, LoraLayer):
            wrappers.append(name)
            base, reason = m.base_layer, ""
        elif isinstance(m, (nn.Linear, nn.Conv2d)):
            base, reason = m, _skip_reason(model, name, m)
        else:
            continue
        rows.append(LayerInfo(name, type(base).__name__, "x".join(map(str, base.weight.shape)),
                              sum(p.numel() for p in base.parameters(recurse=False)), not reason, reason))
    return rows


# --------------------------------------------------------------------------- #
# Target presets: structural, so they mean the same across families
# --------------------------------------------------------------------------- #

def _inside_class(model: nn.Module, pattern: str) -> list[str]:
    rx = re.compile(pattern)
    return [n for n, m in model.named_modules() if n and rx.search(type(m).__name__)]


def _innermost_inside_class(model: nn.Module, pattern: str) -> list[str]:
    """Like ``_inside_class`` but only the innermost matches: a block class that merely
    contains an attention module (``AttentionBlock``, MaxViT's ``PartitionAttentionCl``)
    would otherwise drag its MLP into the "attention" preset."""
    names = _inside_class(model, pattern)
    return [n for n in names if not any(o.startswith(n + ".") for o in names)]


# Attention modules by class name: timm's "...Attention" classes, plus the transformer
# attentions named "...Attn" (CaiT, XCiT, Twins, CoaT). Conv-style "...Attn" gates
# (CBAM's ChannelAttn/SpatialAttn, SplitAttn, SelectiveKernelAttn, ...) are not attention blocks.
_ATTENTION = (r"Attention|^(ClassAttn|TalkingHeadAttn|CrossCovarianceAttn|GlobalSubSampleAttn"
              r"|LocallyGroupedAttn|FactorAttnConvRelPosEnc)$")
_MLP = "Mlp|SwiGLU|FeedForward"

_BLOCK_CLASS = re.compile(r"Block|Bottleneck|InvertedResidual|DepthwiseSeparable|EdgeResidual")


def _block_prefixes(model: nn.Module) -> list[str]:
    """Ordered names of the model's innermost residual blocks, found by timm's
    block class names (Block, BasicBlock, Bottleneck, InvertedResidual, ...)."""
    names = [n for n, m in model.named_modules() if n and _BLOCK_CLASS.search(type(m).__name__)]
    # keep only the innermost level: a block that contains blocks is a stage
    return [n for n in names if not any(o != n and o.startswith(n + ".") for o in names)]


def preset_targets(model: nn.Module, preset: str, layers: list[LayerInfo] | None = None) -> list[str]:
    layers = list_layers(model) if layers is None else layers
    if preset == "auto":
        # Every family: the last third of the blocks. Early features transfer as they are, the
        # frozen front can then be computed once per image (prefix_cache), and the validation
        # accuracy stayed level with LoRA everywhere (benchmarks/README.md).
        try:
            chosen = preset_targets(model, "late-blocks", layers)
        except LoraError:
            chosen = []
        by_name = {l.name: l for l in layers}
        if any(by_name[n].wrappable for n in chosen):
            return chosen
        preset = "attention+mlp" if _inside_class(model, _ATTENTION) else "all-conv"
    if preset in ("attention", "attention+mlp"):
        scopes = _innermost_inside_class(model, _ATTENTION)
        if preset == "attention+mlp":
            scopes += _innermost_inside_class(model, _MLP)
        chosen = [l.name for l in layers if _in(l.name, scopes)]
    elif preset == "all-linear":
        chosen = [l.name for l in layers if isinstance(_base_of(model, l.name), nn.Linear)]
    elif preset == "all-conv":
        chosen = [l.name for l in layers if isinstance(_base_of(model, l.name), nn.Conv2d)]
    elif preset == "late-blocks":
        # The last third of the blocks, plus any layer after them (e.g. conv_head):
        # the early layers' features transfer as they are, and a frozen prefix can be cached.
        blocks = _block_prefixes(model)
        if not blocks:
            raise LoraError("preset 'late-blocks' found no repeated blocks in this model; choose another preset")
        first = blocks[max(0, len(blocks) - max(1, len(blocks) // 3))]
        order = [n for n, _ in model.named_modules()]
        start = order.index(first)
        chosen = [l.name for l in layers if order.index(l.name) >= start]
    else:
        raise LoraError(f"unknown target preset {preset!r}; choose one of auto, " + ", ".join(
            ("attention", "attention+mlp", "all-linear", "all-conv", "late-blocks")))
    return chosen


def resolve_targets(model: nn.Module, targets: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Turn a targets spec into (layers to wrap, [(layer, why skipped)]).

    Spec: a preset name, ``re:<regex>`` (fullmatch on the module name) or a
    comma-separated list of name suffixes matched at a ``.`` boundary.
    Only layers the rule actually selects are reported as skipped.
    """
    layers = list_layers(model)
    spec = targets.strip()
    if spec.startswith("re:"):
        try:
            rx = re.compile(spec[3:])
        except re.error as exc:
            raise LoraError(f"target regex {spec[3:]!r} is invalid: {exc}") from None
        picked = [l for l in layers if rx.fullmatch(l.name)]
    elif "," in spec or not _is_preset(spec):
        suffixes = [s.strip() for s in spec.split(",") if s.strip()]
        picked = [l for l in layers if any(l.name == s or l.name.endswith("." + s) for s in suffixes)]
    else:
        names = set(preset_targets(model, spec, layers))
        picked = [l for l in layers if l.name in names]
    wrap = [l.name for l in picked if l.wrappable]
    skipped = [(l.name, l.reason) for l in picked if not l.wrappable]
    if not wrap:
        raise LoraError(f"targets {targets!r} match no layer that LoRA can wrap in this model; "
                        "pick a preset or check the layer list")
    return wrap, skipped


def _is_preset(spec: str) -> bool:
    return spec in ("auto", "attention", "attention+mlp", "all-linear", "all-conv", "late-blocks")


# --------------------------------------------------------------------------- #
# Verbs: inject, merge, unmerge, state dicts
# --------------------------------------------------------------------------- #

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
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, child)
        restore = {}
        if hasattr(parent, "qkv_bias_separate") and _reads_weight_directly(parent, child):
            # EVA: qkv = F.linear(x, self.qkv.weight, q/k/v bias) would bypass the wrapper;
            # the separate-bias path computes the same through self.qkv(x)
            restore["qkv_bias_separate"] = parent.qkv_bias_separate
            parent.qkv_bias_separate = True
        cls = LoraLinear if isinstance(base, nn.Linear) else LoraConv2d
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
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.base_layer)
        for attr, value in getattr(layer, "parent_restore", {}).items():
            setattr(parent, attr, value)
    return model


CALIBRATED_NORM = "lora_gui_calibrated_norm"  # set by norm_calibration: its buffers are the adapter's


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only what training changed: LoRA tensors, the head (with its buffers),
    and any norm/bias parameters that were trained, with the buffers of the
    modules they belong to (a trained BatchNorm's running statistics change too,
    since ``train_mode`` leaves it in training mode), and the buffers of frozen
    BatchNorms whose statistics were recomputed (``norm_calibration``)."""
    if any(l.merged for _, l in lora_layers(model)):
        raise LoraError("unmerge the model before saving its adapter")
    keep = {n for n, p in model.named_parameters() if p.requires_grad}
    for mname, m in model.named_modules():
        if getattr(m, CALIBRATED_NORM, False) or any(p.requires_grad for p in m.parameters(recurse=False)):
            keep.update(f"{mname}.{b}" if mname else b for b, _ in m.named_buffers(recurse=False))
    heads = head_modules(model)
    full = model.state_dict()
    return {k: v.detach().clone() for k, v in full.items()
            if k in keep or _in(k.rsplit(".", 1)[0], heads) or ".lora_" in k}


def load_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load an adapter onto a model with the same LoRA layout; refuses any mismatch by name."""
    expected = adapter_state_dict(model)
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s), e.g. {missing[0]}")
        if extra:
            own = model.state_dict()
            frozen = [k for k in extra if k in own]
            what = (" (frozen base tensors are not part of an adapter)" if frozen == extra else "")
            parts.append(f"{len(extra)} unexpected tensor(s), e.g. {(frozen or extra)[0]}{what}")
        raise LoraError("adapter does not fit this model: " + "; ".join(parts))
    own = model.state_dict()
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise LoraError(f"adapter tensor {k} has shape {tuple(v.shape)} but the model expects "
                            f"{tuple(own[k].shape)} (another rank, class count or base model?)")
    model.load_state_dict(state, strict=False)


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
