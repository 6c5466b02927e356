"""The merged export: LoRA folded into a plain timm state dict, written and read back."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..backbones.build import size_kwargs
from ..errors import ExportError
from ..lora.inject import remove_lora
from .adapter_check import _check_shapes, _skeleton, build_checked
from .adapter_file import AdapterMeta
from .export_meta import _export_meta, _export_metadata, _load_tensors

MERGED_FILE = "model.safetensors"


MERGE_TOLERANCE = 1e-5


def _probe_input(meta: AdapterMeta, batch: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, *meta.data_config["input_size"], generator=gen)


def _relative_diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    diff = (a.float() - b.float()).abs().max().item()
    return diff, diff / max(b.abs().max().item(), 1e-6)


def _merged_model(tensors: dict, meta: AdapterMeta) -> nn.Module:
    """The trained model with LoRA folded in and the wrappers removed, checked against the unmerged one."""
    model = build_checked(tensors, meta)
    x = _probe_input(meta)
    with torch.no_grad():
        before = model(x)
        remove_lora(model)
        after = model(x)
    _, rel = _relative_diff(after, before)
    if rel > MERGE_TOLERANCE:
        raise ExportError(f"merging LoRA changed the outputs by {rel:.2e} (relative); the export was not written")
    return model.eval()


def _write_merged(file: Path, tensors: dict, meta: AdapterMeta, out: Path) -> Path:
    model = _merged_model(tensors, meta)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / MERGED_FILE), metadata=_export_metadata("merged", meta))
    return out / MERGED_FILE


def load_merged(file: Path) -> tuple[nn.Module, AdapterMeta]:
    """A merged export: a plain timm model, loaded strictly."""
    import timm
    _, meta = _export_meta(file)
    state = _load_tensors(file)
    skeleton = _skeleton(meta)   # names and shapes to check against, before building for real
    _check_shapes({k: tuple(v.shape) for k, v in state.items()},
                  {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}, skeleton, meta, file.name)
    model = timm.create_model(meta.model.name, pretrained=False, num_classes=len(meta.classes),
                              **size_kwargs(meta.model.name, meta.model.image_size))
    model.load_state_dict(state, strict=True)
    return model.eval(), meta
