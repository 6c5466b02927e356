"""Strided depthwise convolutions run in fp32 while they train under bf16 autocast on a CPU.

Why: PyTorch's CPU backward of a stride-2 depthwise convolution is about 12x slower in bf16 than
in fp32 (16 x 672 x 17 x 17, 5 x 5 kernel: 41 ms against 3.5 ms on the 2-core EPYC of
``benchmarks/``), while the stride-1 ones are fast in bf16. In EfficientNet-Lite0's default run the
one such convolution behind its first LoRA layer took a third of every training step.

Only the calls autograd will go back through change: an input that requires grad, with grad
mode on. Everything else (the frozen front, the prefix cache, validation, predictions) keeps
bf16, where these convolutions are fast. Nothing about the weights or the saved files changes.
"""
from __future__ import annotations

import types

import torch
from torch import nn


def is_strided_depthwise(module: nn.Module) -> bool:
    return (isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels
            and max(module.stride) > 1)


def _forward(self, x, *args, **kwargs):
    if torch.is_grad_enabled() and x.requires_grad and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return type(self).forward(self, x.float(), *args, **kwargs)
    return type(self).forward(self, x, *args, **kwargs)


def apply(model: nn.Module) -> list[str]:
    """Give every strided depthwise convolution of ``model`` the fp32 backward; their names."""
    names = []
    for name, module in model.named_modules():
        if is_strided_depthwise(module):
            # an instance attribute: the class (and every other model built from it) stays as it is
            module.forward = types.MethodType(_forward, module)
            names.append(name)
    return names
