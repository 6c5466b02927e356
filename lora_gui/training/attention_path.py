"""Attention layers take their explicit path (matmul, softmax, matmul) under bf16 autocast on a CPU.

Why: timm's attention layers call PyTorch's fused ``scaled_dot_product_attention`` when it is
available (their ``fused_attn`` flag). On a CPU in bf16 its backward is the slowest piece of a ViT's
training step by far: ViT-Tiny's last four blocks, batch 16, 224 px, took 420 ms per step fused and
185 ms with the explicit path (the fused backward alone 59 ms per block, 8.6x its own forward), on
the 2-core EPYC of ``benchmarks/``. Its forward is slower too (a whole ViT-Tiny, 32 images: 510
against 420 ms). In fp32 the two paths cost the same, so only bf16 runs switch.

The explicit path is timm's own fallback for the same computation; the switch is an instance
attribute of the training model only (predictions and exports build their own models, and the
saved weights do not change).
"""
from __future__ import annotations

from torch import nn


def apply(model: nn.Module) -> list[str]:
    """Switch every attention layer of ``model`` that has timm's ``fused_attn`` flag on to the
    explicit path; their names."""
    names = []
    for name, module in model.named_modules():
        if getattr(module, "fused_attn", None) is True:
            module.fused_attn = False
            names.append(name)
    return names
