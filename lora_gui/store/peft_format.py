"""The PEFT export: ``adapter_config.json`` + ``adapter_model.safetensors``, written and read back."""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..backbones.build import build_model
from ..backbones.seeded import seeded_build
from ..errors import AdapterError
from ..lora.layers import get_parent
from ..lora.targets import _reads_weight_directly, head_modules
from .adapter_check import _quiet_build, check_adapter_fits
from .adapter_file import AdapterMeta
from .export_meta import _export_meta, _export_metadata, _load_tensors

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
BASE_WEIGHTS = "base_model.safetensors"   # shipped when the base is not on a model hub


def _peft_config(model: nn.Module, meta: AdapterMeta) -> dict:
    """PEFT's adapter_config.json, refusing what PEFT would load differently from us."""
    names = [n for n, _ in model.named_modules() if n and ".base_layer" not in n and ".lora_" not in n]
    for layer in meta.layers:
        parent, child = get_parent(model, layer)
        if _reads_weight_directly(parent, child):
            raise AdapterError(f"PEFT export is not possible for {meta.model.name}: {type(parent).__name__} reads "
                               f"{child}.weight directly, so a plain timm model would bypass PEFT's LoRA. "
                               "Export 'merged' instead.")
    heads = head_modules(model)
    for head in heads:
        # PEFT picks modules_to_save by plain str.endswith on module names.
        hits = [n for n in names if n.endswith(head)]
        if hits != [head]:
            other = next(n for n in hits if n != head)
            raise AdapterError(f"PEFT export is not possible: PEFT would also treat {other} as the head "
                               f"{head!r}. Export 'merged' instead.")
        # ...and never puts LoRA on a layer inside a module to save.
        inside = [l for l in meta.layers if re.match(rf"(^|.*\.){re.escape(head)}($|\..*)", l)]
        if inside:
            raise AdapterError(f"PEFT export is not possible: PEFT would not wrap {inside[0]}, which it "
                               f"counts as part of the head {head!r}. Export 'merged' instead.")
    lora = meta.lora
    return {
        # no hub id as base_model_name_or_path: PEFT would look it up online whenever it saves
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": None,
        "auto_mapping": {"base_model_class": type(model).__name__, "parent_library": type(model).__module__},
        "r": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout, "use_rslora": lora.use_rslora,
        # a str is a regex PEFT fullmatches against each module name: exactly the wrapped layers
        "target_modules": "|".join(map(re.escape, meta.layers)),
        "modules_to_save": heads,
        # train_bias trains every bias, which is PEFT's "all"; trained norms travel as plain keys,
        # which PEFT loads onto the base model (its own save_pretrained would not keep them).
        "bias": "all" if lora.train_bias else "none",
        "fan_in_fan_out": False, "init_lora_weights": True, "inference_mode": True,
        "use_dora": False, "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {},
        "alpha_pattern": {}, "exclude_modules": None,
    }


def _write_peft(file: Path, tensors: dict, meta: AdapterMeta, out: Path) -> Path:
    model = check_adapter_fits(tensors, meta)
    config = _peft_config(model, meta)
    # Our wrappers use PEFT's sub-module names (base_layer, lora_A, lora_B) and PEFT saves
    # modules_to_save without their wrapper prefix, so PEFT's key is ours behind its prefix.
    state = {PEFT_PREFIX + k: v.contiguous() for k, v in tensors.items()}
    save_file(state, str(out / PEFT_WEIGHTS), metadata=_export_metadata("peft", meta))
    (out / PEFT_CONFIG).write_text(json.dumps(config, indent=2))
    if meta.model.weights != "hub":
        _write_base_weights(meta, out / BASE_WEIGHTS)
    return out


def _write_base_weights(meta: AdapterMeta, path: Path) -> None:
    """The base model the adapter was trained on, in timm's naming, for a plain
    ``timm.create_model(pretrained=False)`` + ``load_state_dict``: bundled and local weights are on no
    hub, and random ones are only reproducible with the same seed *and* timm version."""
    with seeded_build(meta.base_seed):   # the seeded build draws from torch's global generator
        base = _quiet_build(build_model, meta.model, len(meta.classes))
    save_file({k: v.detach().contiguous() for k, v in base.state_dict().items()}, str(path),
              metadata={"format": "pt"})


def read_peft_export(file: Path) -> tuple[dict[str, torch.Tensor], AdapterMeta]:
    """A PEFT folder written by export_adapter, back as native tensors + metadata."""
    if not file.is_file():
        raise AdapterError(f"{file.parent} has {PEFT_CONFIG} but no {PEFT_WEIGHTS}")
    layout, meta = _export_meta(file)
    try:
        config = json.loads((file.parent / PEFT_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{PEFT_CONFIG} is not valid JSON ({exc})") from None
    if layout != "peft" or not isinstance(config, dict):
        raise AdapterError(f"{file.parent} is not a PEFT export of lora_gui")
    # The config is what PEFT obeys; if someone edited it, the metadata no longer describes the adapter.
    for key, want in (("r", meta.lora.rank), ("lora_alpha", meta.lora.alpha), ("use_rslora", meta.lora.use_rslora),
                      ("target_modules", "|".join(map(re.escape, meta.layers)))):
        if config.get(key) != want:
            word = "rank" if key == "r" else key
            raise AdapterError(f"{PEFT_CONFIG}: {word} is {config.get(key)!r} but the adapter was trained "
                               f"with {want!r}")
    tensors = _load_tensors(file)
    if any(not k.startswith(PEFT_PREFIX) for k in tensors):
        bad = next(k for k in tensors if not k.startswith(PEFT_PREFIX))
        raise AdapterError(f"{file.name}: tensor {bad} is not in PEFT's layout (no {PEFT_PREFIX} prefix)")
    return {k[len(PEFT_PREFIX):]: v for k, v in tensors.items()}, meta
