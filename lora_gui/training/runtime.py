"""The device a run asks for, and the package versions recorded with it."""
from __future__ import annotations

import platform

import torch

from ..errors import TrainingFailed


def device_for(name: str) -> str:
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingFailed(f"device {name!r} was asked for but no CUDA GPU is available; use device 'auto' or 'cpu'")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise TrainingFailed("device 'mps' was asked for but Apple's GPU is not available; use 'auto' or 'cpu'")
    return name


def package_versions() -> dict:
    import timm
    out = {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__}
    try:
        from importlib.metadata import version
        out["lora_gui"] = version("lora_gui")
    except Exception:
        out["lora_gui"] = "source"
    return out
