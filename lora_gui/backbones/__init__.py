"""timm backbones: building one (``build``), its starting weights (``weights``: the bundled
EfficientNet-Lite0, local files), the hub's reachability (``hub``) and the curated list (``catalog``).

``catalog`` and ``hub`` load without torch; the names of ``build`` and ``weights`` are resolved on
first use, so ``from lora_gui import backbones`` is cheap where only the list is needed (issue #15.3).
"""
from ..errors import ModelError
from .catalog import BUNDLED_MODEL, CATALOG, CatalogEntry, search_models
from .hub import has_pretrained_weights, hub_cached, hub_reachable, weights_availability

_LAZY = {"build_model": "build", "check_model_available": "build", "check_model_name": "build",
         "data_config": "build", "model_info": "build", "bundled_weights_path": "weights", "load_weights_file": "weights",
         "lukemelas_to_timm": "weights"}

__all__ = ["ModelError", "build_model", "check_model_available", "check_model_name", "data_config", "CATALOG",
           "CatalogEntry", "model_info", "search_models", "has_pretrained_weights", "hub_cached", "hub_reachable",
           "weights_availability", "BUNDLED_MODEL", "bundled_weights_path", "load_weights_file", "lukemelas_to_timm"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
