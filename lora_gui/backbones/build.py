"""Build a timm backbone with a new head and the chosen starting weights."""
from __future__ import annotations

import difflib
import warnings
from pathlib import Path

import timm
import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ModelError
from .hub import _first_line, _hub_problem, weights_availability
from .weights import (
    BUNDLED_MODEL,
    _load_into,
    bundled_weights_path,
    load_weights_file,
    lukemelas_to_timm,
)


def _suggest(name: str, limit: int = 5) -> list[str]:
    """Close timm model names: a few that start with it, typo fixes, then names containing it."""
    base = name.split(".")[0].strip().lower()
    names = timm.list_models()
    out: list[str] = []
    starts = [n for n in names if base and n.startswith(base)]
    for n in (starts[:3] + difflib.get_close_matches(base, names, n=limit, cutoff=0.6)
              + starts + [n for n in names if base and base in n]
              + difflib.get_close_matches(base, names, n=limit, cutoff=0.4)):
        if n not in out:
            out.append(n)
    return out[:limit]


def check_model_name(name: str) -> None:
    """A ModelError with suggestions when timm has no model of this name (tags like ``.a1_in1k`` allowed)."""
    if not timm.is_model(name):
        close = _suggest(name)
        hint = f" Did you mean: {', '.join(close)}?" if close else " Search the model list for a name."
        raise ModelError(f"timm has no model named {name!r}.{hint}")


def _create(name: str, image_size: int | None = None, **kwargs) -> nn.Module:
    """timm.create_model; a fixed-size model (ViT, DeiT, EVA, Swin) is built for ``image_size``
    (timm resamples pretrained position embeddings); CNNs take any size and ignore it."""
    check_model_name(name)
    if image_size:
        try:
            return timm.create_model(name, img_size=image_size, **kwargs)
        except TypeError as exc:
            if "img_size" not in str(exc):
                raise
    return timm.create_model(name, **kwargs)


def size_kwargs(name: str, image_size: int | None) -> dict:
    """What ``timm.create_model`` needs besides the name to rebuild ``name`` as ``_create`` built it:
    ``{"img_size": N}`` for a fixed-size model (ViT, DeiT, EVA, Swin) trained at a set resolution (its
    position embeddings are sized for it), ``{}`` for a model that takes any size (CNNs). Exports'
    snippets and readers use it; asked of a shapes-only build on the meta device (no memory, no weights)."""
    if not image_size:
        return {}
    check_model_name(name)

    def accepts(device) -> bool:
        try:
            with torch.device(device):
                timm.create_model(name, pretrained=False, img_size=image_size)
        except TypeError as exc:
            if "img_size" in str(exc):
                return False
            raise
        return True
    try:
        ok = accepts("meta")
    except Exception:   # a few models compute at init, which the meta device cannot: build for real
        ok = accepts("cpu")
    return {"img_size": image_size} if ok else {}


def check_model_available(cfg: ModelConfig) -> None:
    """Fail fast (ModelError) when the model or its weights can't be had, without building it."""
    if not timm.is_model(cfg.name):
        _create(cfg.name)  # raises with suggestions
    if cfg.weights == "bundled" and cfg.name != BUNDLED_MODEL:
        raise ModelError(f"bundled weights exist only for {BUNDLED_MODEL}; for {cfg.name} choose "
                         "'hub', a local file, or 'random'")
    if cfg.weights == "hub" and (problem := _hub_problem(cfg.name)):
        raise ModelError(problem)
    if cfg.weights == "file" and not Path(cfg.weights_file).is_file():
        raise ModelError(f"weights file {cfg.weights_file} does not exist; pick an existing .safetensors or .pth file")


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """A timm model with ``num_classes`` outputs and the chosen starting weights.

    The head is new (sized for ``num_classes``); the backbone carries the weights.
    """
    if num_classes < 2:
        raise ModelError("a classifier needs at least 2 classes")
    if cfg.weights == "hub":
        check_model_name(cfg.name)
        if problem := _hub_problem(cfg.name):
            raise ModelError(problem)
        try:
            return _create(cfg.name, cfg.image_size, pretrained=True, num_classes=num_classes)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"could not fetch pretrained weights for {cfg.name}: {_first_line(exc)}. "
                             f"Use the bundled backbone ({BUNDLED_MODEL}, weights 'bundled') or a local "
                             "weights file.") from None
    if cfg.weights == "bundled":
        if cfg.name != BUNDLED_MODEL:
            raise ModelError(f"bundled weights exist only for {BUNDLED_MODEL}; for {cfg.name} choose "
                             "'hub', a local file, or 'random'")
        model = _create(cfg.name, pretrained=False)
        state = torch.load(bundled_weights_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(lukemelas_to_timm(state, model), strict=True)
        if num_classes != model.num_classes:
            model.reset_classifier(num_classes)
        return model
    model = _create(cfg.name, cfg.image_size, pretrained=False, num_classes=num_classes)
    if cfg.weights == "file":
        _load_into(model, load_weights_file(cfg.weights_file), cfg.name, f"file {Path(cfg.weights_file).name}")
    else:
        warnings.warn(f"{cfg.name} starts from random weights: it will learn poorly from a few hundred "
                      "images. Prefer pretrained weights.", stacklevel=2)
    return model


def data_config(model: nn.Module, image_size: int | None = None) -> dict:
    """timm's preprocessing for this model, optionally at another square resolution."""
    cfg = timm.data.resolve_model_data_config(model)
    if image_size:
        cfg = dict(cfg, input_size=(cfg["input_size"][0], image_size, image_size))
    return cfg


def model_info(name: str) -> dict:
    """Parameter count and default resolution, from a meta-device model (no weights allocated)."""
    try:
        with torch.device("meta"):
            model = _create(name, pretrained=False)
    except ModelError:
        raise
    except Exception:
        model = _create(name, pretrained=False)
    cfg = timm.data.resolve_model_data_config(model)
    return {"name": name, "params": sum(p.numel() for p in model.parameters()),
            "resolution": cfg["input_size"][-1], "weights": weights_availability(name)}
