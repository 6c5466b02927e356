"""Load a trained adapter for inference, and classify images with it.

``load_adapter`` accepts what lora_gui writes: a native adapter (file, its
folder or a run folder), and the PEFT folder or merged file made by
``export.export_adapter``. Every file is read from safetensors and JSON only,
and every tensor is checked against the rebuilt model's layout before any of
it is loaded (``check_adapter_fits``), so a mismatched or edited adapter is
refused with a message that names the mismatch instead of loading partly.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from .adapters import (ADAPTER_FILE, AdapterError, AdapterMeta, build_from_adapter, mark_calibrated_norms,
                       read_adapter, resolve_adapter_file)
from .config import ConfigError
from .images import DataError, build_transform, cache_max_side, load_rgb, shrink, to_rgb
from .lora import LoraError, adapter_state_dict, classifier_names, inject_lora, merge_lora
from .models import ModelError

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
MERGED_FILE = "model.safetensors"
# Exported safetensors carry {"layout": "peft" | "merged", "adapter": AdapterMeta} under this
# key. It differs from the native key ("lora_gui") so read_adapter never mistakes them for one.
EXPORT_META_KEY = "lora_gui_export"
BAD_INPUT = (AdapterError, ConfigError, DataError, LoraError, ModelError, FileNotFoundError)


@dataclass
class LoadedAdapter:
    model: nn.Module          # eval mode, LoRA merged into the weights unless merge=False
    classes: list[str]
    transform: Callable       # PIL image -> normalised tensor, the validation transform
    meta: AdapterMeta
    layout: str               # "native", "peft" or "merged": what was read
    device: torch.device


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
    try:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, num_classes=len(meta.classes))
    except Exception:  # a few models compute at init; build them for real
        return timm.create_model(name, pretrained=False, num_classes=len(meta.classes))


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


def locate(path: str | os.PathLike) -> tuple[str, Path]:
    """(layout, file) for anything load_adapter accepts; refuses pickle and unknown files."""
    p = Path(path)
    if p.is_dir() and (p / ADAPTER_FILE).is_file():
        return "native", p / ADAPTER_FILE
    if p.is_dir() and (p / PEFT_CONFIG).is_file():
        return "peft", p / PEFT_WEIGHTS
    if p.is_dir() and (p / MERGED_FILE).is_file():
        p = p / MERGED_FILE
    if p.name == PEFT_CONFIG and p.is_file():
        return "peft", p.parent / PEFT_WEIGHTS
    if p.suffix == ".onnx":
        raise AdapterError(f"{p.name} is an ONNX model: run it with onnxruntime (see the README beside it)")
    if p.suffix == ".safetensors" and p.is_file() and EXPORT_META_KEY in _safetensors_metadata(p):
        return _export_meta(p)[0], p
    return "native", resolve_adapter_file(p)


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


def load_merged(file: Path) -> tuple[nn.Module, AdapterMeta]:
    """A merged export: a plain timm model, loaded strictly."""
    import timm
    _, meta = _export_meta(file)
    state = _load_tensors(file)
    skeleton = _skeleton(meta)   # names and shapes to check against, before building for real
    _check_shapes({k: tuple(v.shape) for k, v in state.items()},
                  {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}, skeleton, meta, file.name)
    model = timm.create_model(meta.model.name, pretrained=False, num_classes=len(meta.classes))
    model.load_state_dict(state, strict=True)
    return model.eval(), meta


def load_adapter(path: str | os.PathLike, device: str | torch.device = "cpu", merge: bool = True) -> LoadedAdapter:
    """A ready-to-use model, its class names and its transform, from an adapter or an export.

    ``merge`` folds LoRA into the weights once: inference then costs what the base model costs.
    """
    layout, file = locate(path)
    if layout == "merged":
        model, meta = load_merged(file)
    else:
        tensors, meta = read_adapter(file) if layout == "native" else read_peft_export(file)
        model = build_checked(tensors, meta)
        if merge:
            merge_lora(model)
    try:
        transform = build_transform(meta.data_config, "none", training=False)
    except (KeyError, TypeError, ValueError) as exc:
        raise AdapterError(f"adapter metadata: the data config is invalid ({exc})") from None
    dev = torch.device(device)
    return LoadedAdapter(model.to(dev).eval(), list(meta.classes), transform, meta, layout, dev)


def predict(loaded: LoadedAdapter, images: list, topk: int = 5,
            batch_size: int = 16) -> list[list[tuple[str, float]]]:
    """Top-k (class, probability) per image, most likely first. Images are PIL images or paths."""
    if not isinstance(topk, int) or topk < 1:
        raise ValueError(f"topk must be a whole number >= 1, got {topk!r}")
    k = min(topk, len(loaded.classes))
    # decoded and pre-shrunk exactly as training and evaluation decode, so the same file
    # gets the same probabilities here as in the validation metrics
    max_side = cache_max_side(loaded.meta.data_config) if loaded.meta is not None else None
    results = []
    for start in range(0, len(images), batch_size):
        chunk = [shrink(to_rgb(im), max_side) if isinstance(im, Image.Image) else load_rgb(im, max_side)
                 for im in images[start:start + batch_size]]
        batch = torch.stack([loaded.transform(im) for im in chunk]).to(loaded.device)
        with torch.inference_mode():
            probs = loaded.model(batch).float().softmax(dim=-1)
        values, indices = probs.topk(k, dim=-1)
        results += [[(loaded.classes[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist())]
                    for vs, ix in zip(values, indices)]
    return results


def add_predict_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("predict", help="classify images with a trained adapter",
                              description="Print the top-k classes for each image.")
    p.add_argument("--adapter", required=True, help="adapter file, its folder, a run folder, or an export")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--topk", type=int, default=5, help="how many classes to show per image (default 5)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    p.set_defaults(func=cli_predict)
    return p


def cli_predict(args: argparse.Namespace) -> int:
    """0 ok, 2 bad input (message on stderr, no traceback), 1 anything else."""
    try:
        if args.topk < 1:
            raise AdapterError(f"--topk must be at least 1, got {args.topk}")
        loaded = load_adapter(args.adapter, device=getattr(args, "device", "cpu"))
        results = predict(loaded, list(args.images), topk=args.topk)
    except BAD_INPUT as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug or the machine; still no traceback for the user
        print(f"error: prediction failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([{"image": str(img), "predictions": [{"label": c, "probability": p} for c, p in res]}
                          for img, res in zip(args.images, results)], indent=2))
    else:
        for img, res in zip(args.images, results):
            print(img)
            for c, p in res:
                print(f"  {p:7.2%}  {c}")
    return 0
