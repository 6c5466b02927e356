"""Refuse an adapter whose tensors do not fit the model its metadata describes.

Every tensor is checked against the rebuilt model's layout (on the meta device,
no memory) before any of it is loaded, so a mismatched or edited adapter is
refused with a message that names the mismatch instead of loading partly.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from ..backbones.build import size_kwargs
from ..errors import AdapterError, LoraError
from ..lora.inject import inject_lora
from ..lora.state import adapter_state_dict
from ..lora.targets import classifier_names
from .adapter_file import AdapterMeta, build_from_adapter, mark_calibrated_norms


def _quiet_build(fn, *args):
    # build_model warns that random weights learn poorly: true when training, noise when loading.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*starts from random weights")
        return fn(*args)


def _skeleton(meta: AdapterMeta) -> nn.Module:
    """The base model's layout on the meta device: shapes, no memory, no weights loaded."""
    import timm
    name = meta.model.name
    if not timm.is_model(name):
        raise AdapterError(f"the adapter names base model {name!r}, which timm {timm.__version__} does not have")
    # a ViT trained at another resolution has position embeddings of that size
    kwargs = dict(pretrained=False, num_classes=len(meta.classes), **size_kwargs(name, meta.model.image_size))
    try:
        with torch.device("meta"):
            return timm.create_model(name, **kwargs)
    except Exception:  # a few models compute at init; build them for real
        return timm.create_model(name, **kwargs)


def _check_data_config(dc: dict) -> None:
    # Bounded, because the metadata sizes every tensor the transform makes: a forged
    # 100000 x 100000 input size would exhaust memory on the first image.
    size, n = dc.get("input_size"), None
    if isinstance(size, (list, tuple)) and len(size) == 3 and all(isinstance(v, int) for v in size):
        n = size[0] if size[0] in (1, 3) and all(16 <= v <= 2048 for v in size[1:]) else None
    if n is None or any(not isinstance(dc.get(k), (list, tuple)) or len(dc[k]) != n for k in ("mean", "std")):
        raise AdapterError(f"adapter metadata: the data config is invalid (input size {size!r}; expected "
                           "channels, height, width with 16-2048 pixels, and a mean and std per channel)")


def check_adapter_fits(tensors: dict[str, torch.Tensor], meta: AdapterMeta) -> nn.Module:
    """Refuse, with the reason, an adapter whose tensors do not fit the model its metadata describes.

    Returns the LoRA-injected model skeleton (meta device) that the tensors were checked against.
    """
    classes = meta.classes
    if len(classes) < 2 or len(set(classes)) != len(classes) or not all(isinstance(c, str) and c for c in classes):
        raise AdapterError("adapter metadata: the class names must be at least 2 distinct, non-empty names")
    _check_data_config(meta.data_config)
    model = _skeleton(meta)
    name, modules = meta.model.name, dict(model.named_modules())
    if len(set(meta.layers)) != len(meta.layers):
        raise AdapterError("adapter metadata lists a LoRA layer twice (edited metadata?)")
    for layer in meta.layers:
        if layer not in modules:
            raise AdapterError(f"adapter metadata names layer {layer!r}, which {name} does not have "
                               "(metadata of another base model, or edited?)")
        if not isinstance(modules[layer], (nn.Linear, nn.Conv2d)):
            raise AdapterError(f"adapter layer {layer!r} is a {type(modules[layer]).__name__} in {name}; "
                               "LoRA wraps only Linear and Conv2d layers")
    try:
        inject_lora(model, meta.lora, meta.layers)
    except (LoraError, AttributeError, ValueError) as exc:
        raise AdapterError(f"the adapter's LoRA layout does not fit {name}: {exc}") from None
    mark_calibrated_norms(model, meta)
    expected = {k: tuple(v.shape) for k, v in adapter_state_dict(model).items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    # The specific mismatches first (rank, class count): they are the common ones and the
    # generic "missing/unexpected tensors" message would hide what actually differs.
    ranks = sorted({s[0] for k, s in got.items() if k.endswith("lora_A.weight") and s})
    if ranks and ranks != [meta.lora.rank]:
        raise AdapterError(f"LoRA rank mismatch: the adapter's tensors have rank {', '.join(map(str, ranks))} "
                           f"but its metadata says rank {meta.lora.rank}")
    _check_shapes(got, expected, model, meta, "the adapter's tensors")
    for key, value in tensors.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise AdapterError(f"adapter tensor {key} contains NaN or infinity (damaged file or diverged training)")
    return model


def _check_shapes(got: dict, expected: dict, model: nn.Module, meta: AdapterMeta, what: str) -> None:
    """Same names, same shapes, or an error naming the first difference (class count first)."""
    name = meta.model.name
    for head in classifier_names(model):
        key = head + ".weight"
        if key in got and key in expected and got[key][:1] != expected[key][:1]:
            raise AdapterError(f"class count mismatch: the head has {got[key][0] if got[key] else 0} outputs "
                               f"but the metadata lists {len(meta.classes)} class names")
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or extra:
        common = len(set(expected) & set(got))
        why = "saved for another base model?" if common < len(expected) / 2 else "another layout or an edited file?"
        parts = ([f"{len(missing)} missing, e.g. {missing[0]}"] if missing else []) + \
                ([f"{len(extra)} unexpected, e.g. {extra[0]}"] if extra else [])
        raise AdapterError(f"{what} do not fit {name} ({why}): " + "; ".join(parts))
    bad = next((k for k in expected if got[k] != expected[k]), None)
    if bad:
        raise AdapterError(f"tensor {bad} has shape {got[bad]} but {name} needs {expected[bad]}")


def build_checked(tensors: dict[str, torch.Tensor], meta: AdapterMeta) -> nn.Module:
    """check_adapter_fits, then the real rebuild (base weights + LoRA + tensors), in eval mode."""
    check_adapter_fits(tensors, meta)
    return _quiet_build(build_from_adapter, tensors, meta)
