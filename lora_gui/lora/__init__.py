"""LoRA for timm vision models: the wrappers (``layers``), what they wrap (``targets``),
the verbs on a model (``inject``) and what an adapter holds (``state``)."""
from ..errors import LoraError
from .inject import (
                     count_parameters,
                     estimate_trainable,
                     inject_lora,
                     lora_layers,
                     merge_lora,
                     remove_lora,
                     set_trainable,
                     train_mode,
                     unmerge_lora,
)
from .layers import WRAPPERS, LoraConv2d, LoraLayer, LoraLinear, get_parent
from .state import CALIBRATED_NORM, adapter_state_dict, load_adapter_state_dict
from .targets import (
                     LayerInfo,
                     classifier_names,
                     head_modules,
                     list_layers,
                     preset_targets,
                     resolve_targets,
)

__all__ = ["LoraError", "LoraLayer", "LoraLinear", "LoraConv2d", "WRAPPERS", "get_parent", "LayerInfo",
           "classifier_names", "head_modules", "list_layers", "preset_targets", "resolve_targets",
           "lora_layers", "inject_lora", "set_trainable", "train_mode", "merge_lora", "unmerge_lora",
           "remove_lora", "count_parameters", "estimate_trainable", "CALIBRATED_NORM", "adapter_state_dict",
           "load_adapter_state_dict"]
