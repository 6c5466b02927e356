"""The lora_gui metadata inside exported safetensors files, written and read back.

Exports carry {"layout": "peft" | "merged", "adapter": AdapterMeta} under their
own key, which differs from the native adapter's, so the two are never mistaken.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from ..errors import AdapterError
from .adapter_file import AdapterMeta

# Exported safetensors carry {"layout": "peft" | "merged", "adapter": AdapterMeta} under this
# key. It differs from the native key ("lora_gui") so read_adapter never mistakes them for one.
EXPORT_META_KEY = "lora_gui_export"


def _safetensors_metadata(file: Path) -> dict:
    try:
        with safe_open(str(file), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterError(f"{file.name} is damaged or not a safetensors file ({exc})") from None


def _export_meta(file: Path) -> tuple[str, AdapterMeta]:
    raw = _safetensors_metadata(file).get(EXPORT_META_KEY)
    if raw is None:
        raise AdapterError(f"{file.name} has no lora_gui metadata: it was not exported by lora_gui")
    try:
        info = json.loads(raw)
        if info["layout"] not in ("peft", "merged"):
            raise KeyError(info["layout"])
        return info["layout"], AdapterMeta.from_dict(info["adapter"])
    except (json.JSONDecodeError, KeyError, TypeError):
        raise AdapterError(f"{file.name}: its lora_gui metadata is damaged") from None


def _load_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterError(f"{file.name} is damaged or not a safetensors file ({exc})") from None


def _export_metadata(layout: str, meta: AdapterMeta) -> dict[str, str]:
    # "format": "pt" is what PEFT and transformers write; our JSON lets load_adapter read the export back.
    return {"format": "pt", EXPORT_META_KEY: json.dumps({"layout": layout, "adapter": meta.to_dict()})}
