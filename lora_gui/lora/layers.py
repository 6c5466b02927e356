"""LoRA wrappers around frozen layers, and the type -> wrapper table that picks one.

A wrapped layer computes ``base_layer(x) + lora_B(lora_A(dropout(x))) * scaling``.
``lora_A`` starts random (kaiming) and ``lora_B`` at zero, so a model equals
its base model exactly right after injection (microsoft/LoRA's recipe).
Sub-module names (``base_layer``, ``lora_A``, ``lora_B``) follow PEFT's so a
state dict maps onto PEFT's layout by renaming keys only.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import LoraError


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


# Which wrapper takes which layer type: the one place a new layer type is added (PEFT's dispatch idea).
WRAPPERS: dict[type, type[LoraLayer]] = {nn.Linear: LoraLinear, nn.Conv2d: LoraConv2d}


def wrapper_for(module: nn.Module) -> type[LoraLayer]:
    """The wrapper class for ``module`` (subclasses of a listed type take its wrapper)."""
    for base, wrapper in WRAPPERS.items():
        if isinstance(module, base):
            return wrapper
    raise LoraError(f"LoRA cannot wrap a {type(module).__name__}; only {', '.join(t.__name__ for t in WRAPPERS)}")


def get_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """(parent module, attribute name) of the sub-module called ``name`` ("" is the model itself)."""
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child
