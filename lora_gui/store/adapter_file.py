"""The native adapter format: one self-describing ``adapter.safetensors``.

The file holds only LoRA and head tensors; its safetensors metadata holds the
JSON needed to rebuild the model (timm name, weights source, LoRA config, the
exact wrapped layers, class names, data config, metrics). ``adapter.json``
beside it repeats that JSON for people and tools. Reading never unpickles.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from ..backbones.build import build_model
from ..backbones.seeded import seeded_build
from ..config import LoraConfig, ModelConfig
from ..errors import AdapterError, ConfigError, LoraError
from ..lora.inject import inject_lora
from ..lora.state import adapter_state_dict, load_adapter_state_dict, mark_calibrated

FORMAT = "lora_gui.adapter"
VERSION = 1
ADAPTER_FILE = "adapter.safetensors"
META_FILE = "adapter.json"
DIGEST_KEY = "lora_gui_sha256"  # safetensors checks its header, not the bytes of the tensors


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes: a flipped bit anywhere changes it."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class AdapterMeta:
    model: ModelConfig
    lora: LoraConfig
    layers: list[str]
    classes: list[str]
    data_config: dict
    base_seed: int = 0                 # seeds the base build, so 'random' weights rebuild identically
    metrics: dict = field(default_factory=dict)
    calibrated_norms: list[str] = field(default_factory=list)  # frozen BatchNorms with our statistics

    def to_dict(self) -> dict:
        dc = {k: list(v) if isinstance(v, tuple) else v for k, v in self.data_config.items()}
        return {"format": FORMAT, "version": VERSION, "model": self.model.to_dict(), "lora": self.lora.to_dict(),
                "layers": list(self.layers), "classes": list(self.classes), "data_config": dc,
                "base_seed": self.base_seed, "metrics": self.metrics,
                **({"calibrated_norms": list(self.calibrated_norms)} if self.calibrated_norms else {})}

    @classmethod
    def from_dict(cls, raw: dict) -> "AdapterMeta":
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise AdapterError("this file is not a lora_gui adapter (no lora_gui metadata inside)")
        if raw.get("version", 0) > VERSION:
            raise AdapterError(f"adapter format version {raw.get('version')} is newer than this lora_gui "
                               f"understands ({VERSION}); update lora_gui")
        try:
            dc = {k: tuple(v) if isinstance(v, list) else v for k, v in raw["data_config"].items()}
            return cls(model=ModelConfig.from_dict(raw["model"], "adapter model"),
                       lora=LoraConfig.from_dict(raw["lora"], "adapter lora"),
                       layers=list(raw["layers"]), classes=list(raw["classes"]), data_config=dc,
                       base_seed=int(raw.get("base_seed", 0)), metrics=dict(raw.get("metrics") or {}),
                       calibrated_norms=[str(n) for n in raw.get("calibrated_norms") or []])
        except (KeyError, TypeError, ConfigError) as exc:
            raise AdapterError(f"adapter metadata is incomplete or invalid: {exc}") from None


def save_adapter(model: nn.Module, meta: AdapterMeta, out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir/adapter.safetensors`` (+ ``adapter.json``) atomically; returns the file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(meta.to_dict(), indent=2)
    tensors = {k: v.contiguous().cpu() for k, v in adapter_state_dict(model).items()}
    tmp, tmp_meta = out / (ADAPTER_FILE + ".tmp"), out / (META_FILE + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata={"lora_gui": text, DIGEST_KEY: tensors_digest(tensors)})
        os.replace(tmp, out / ADAPTER_FILE)
        tmp_meta.write_text(text)
        os.replace(tmp_meta, out / META_FILE)
    finally:  # a full disk leaves the adapter saved before (if any), never a half-written .tmp
        tmp.unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)
    return out / ADAPTER_FILE


def resolve_adapter_file(path: str | os.PathLike) -> Path:
    """Accept the .safetensors file, its folder, or a run folder (best adapter, else last)."""
    p = Path(path)
    candidates = [p] if p.suffix == ".safetensors" else [p / ADAPTER_FILE, p / "best" / ADAPTER_FILE,
                                                           p / "last" / ADAPTER_FILE]
    for c in candidates:
        if c.is_file():
            return c
    if p.suffix in (".pth", ".pt", ".bin", ".pkl", ".ckpt"):
        raise AdapterError(f"{p.name}: adapters are read from .safetensors only (pickle files can run code)")
    raise AdapterError(f"no adapter found at {p}: expected an {ADAPTER_FILE}, its folder, or a run folder")


def read_adapter(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], AdapterMeta]:
    file = resolve_adapter_file(path)
    try:
        with safe_open(str(file), framework="pt") as f:
            header = f.metadata() or {}
        raw, digest = header.get("lora_gui"), header.get(DIGEST_KEY)
        tensors = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterError(f"{file.name} is damaged or not a safetensors file ({exc})") from None
    if raw is None:
        raise AdapterError(f"{file.name} has no lora_gui metadata: it is not an adapter saved by lora_gui")
    if digest is not None and digest != tensors_digest(tensors):  # files from before the digest have none
        raise AdapterError(f"{file} is damaged: its tensor data does not match the checksum saved with it "
                           "(a partial copy, or a disk error); use the run's other adapter (best/ or last/) "
                           "or retrain")
    try:
        meta = AdapterMeta.from_dict(json.loads(raw))
    except json.JSONDecodeError:
        raise AdapterError(f"{file.name}: its metadata is not valid JSON (damaged file?)") from None
    return tensors, meta


def mark_calibrated_norms(model: nn.Module, meta: AdapterMeta) -> None:
    """Before loading: the norms whose statistics the adapter carries (see norm_calibration)."""
    try:
        mark_calibrated(model, meta.calibrated_norms)
    except (AttributeError, ValueError) as exc:
        raise AdapterError(f"adapter metadata names a calibrated norm that {meta.model.name} "
                           f"does not have: {exc}") from None


def build_from_adapter(tensors: dict[str, torch.Tensor], meta: AdapterMeta) -> nn.Module:
    """Rebuild base + LoRA layout from metadata and load the tensors, refusing any mismatch."""
    # Random base weights are rebuilt from the seed through torch's one global generator, and
    # inject_lora draws from it too: one seeded build at a time in this process (backbones/seeded.py).
    with seeded_build(meta.base_seed):
        model = build_model(meta.model, len(meta.classes))
        try:
            inject_lora(model, meta.lora, meta.layers)
        except (AttributeError, LoraError) as exc:
            raise AdapterError(f"adapter layers do not exist in {meta.model.name}: {exc}") from None
    mark_calibrated_norms(model, meta)
    try:
        load_adapter_state_dict(model, tensors)
    except LoraError as exc:
        raise AdapterError(str(exc)) from None
    return model.eval()
