"""What an adapter holds: the tensors training changed, and loading them back by name."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..errors import LoraError
from .inject import lora_layers
from .targets import _in, head_modules

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

def mark_calibrated(model: nn.Module, names: Iterable[str]) -> None:
    """Say that these norms' buffers belong to the adapter (before saving or loading one)."""
    for name in names:
        module = model.get_submodule(name)
        if not isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise ValueError(f"{name} is a {type(module).__name__}, not a BatchNorm")
        setattr(module, CALIBRATED_NORM, True)
