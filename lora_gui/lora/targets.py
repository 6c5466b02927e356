"""Which layers LoRA can wrap and which a targets spec selects.

Presets are structural (attention blocks, MLPs, the last third of the residual
blocks), found by timm's class names, so they mean the same in every family.
The classifier head is never a target: it is replaced and trained in full.
"""
from __future__ import annotations

import functools
import inspect
import re
import time
from dataclasses import dataclass

from torch import nn

from ..errors import LoraError
from .layers import LoraLayer, get_parent


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
    parent, child = get_parent(model, name)
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
        picked = _regex_picks(spec[3:], layers)
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


# A pattern typed in a web page runs in the server: a catastrophic one ("(.*.*)*X") would hold a
# core for hours. The `regex` package (the same syntax as `re`) releases the GIL while matching and
# stops a match after a timeout, so a bad pattern costs the person who typed it a second, nobody else.
MAX_TARGET_REGEX = 500
TARGET_REGEX_SECONDS = 1.0


def _regex_picks(pattern: str, layers: list) -> list:
    import regex   # only for a typed pattern
    if len(pattern) > MAX_TARGET_REGEX:
        raise LoraError(f"target regex is {len(pattern)} characters long; keep it under {MAX_TARGET_REGEX} "
                        "or list the layer-name endings instead")
    try:
        rx = regex.compile(pattern)
    except regex.error as exc:
        raise LoraError(f"target regex {pattern!r} is invalid: {exc}") from None
    deadline = time.monotonic() + TARGET_REGEX_SECONDS
    try:
        return [l for l in layers
                if rx.fullmatch(l.name, timeout=max(0.01, deadline - time.monotonic()))]
    except TimeoutError:
        raise LoraError(f"target regex {pattern!r} took over {TARGET_REGEX_SECONDS:.0f} s to match the layer "
                        "names (nested repeats such as (a*)* backtrack without end); write it without "
                        "nested repeats, or list the layer-name endings instead") from None


def _is_preset(spec: str) -> bool:
    return spec in ("auto", "attention", "attention+mlp", "all-linear", "all-conv", "late-blocks")
