"""timm backbones: building one (``build``), its starting weights (``weights``: the bundled
EfficientNet-Lite0, local files), the hub's reachability (``hub``) and the curated list (``catalog``)."""
from ..errors import ModelError
from .build import build_model, check_model_available, check_model_name, data_config
from .catalog import CATALOG, CatalogEntry, model_info, search_models
from .hub import has_pretrained_weights, hub_cached, hub_reachable, weights_availability
from .weights import (
           BUNDLED_MODEL,
           bundled_weights_path,
           load_weights_file,
           lukemelas_to_timm,
)

__all__ = ["ModelError", "build_model", "check_model_available", "check_model_name", "data_config", "CATALOG",
           "CatalogEntry", "model_info", "search_models", "has_pretrained_weights", "hub_cached", "hub_reachable",
           "weights_availability", "BUNDLED_MODEL", "bundled_weights_path", "load_weights_file", "lukemelas_to_timm"]
