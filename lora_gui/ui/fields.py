"""Form fields <-> RunConfig. One table says which widget feeds which config key,
so the Train button, the Presets tab and "save as preset" can never disagree.
"""
from __future__ import annotations

import re

from ..config import RunConfig
from ..errors import ConfigError
from .component_variant import component_variant

# field name -> (config section, config key)
FIELDS: dict[str, tuple[str, str]] = {
    "model_name": ("model", "name"),
    "weights": ("model", "weights"),
    "weights_file": ("model", "weights_file"),
    "image_size": ("model", "image_size"),
    "rank": ("lora", "rank"),
    "alpha": ("lora", "alpha"),
    "dropout": ("lora", "dropout"),
    "targets": ("lora", "targets"),
    "train_norm": ("lora", "train_norm"),
    "train_bias": ("lora", "train_bias"),
    "use_rslora": ("lora", "use_rslora"),
    "epochs": ("train", "epochs"),
    "batch_size": ("train", "batch_size"),
    "lr": ("train", "lr"),
    "seed": ("train", "seed"),
    "augmentation": ("data", "augmentation"),
    "val_fraction": ("data", "val_fraction"),
}
FIELD_NAMES = list(FIELDS)

_INTS = {"image_size", "rank", "epochs", "batch_size", "seed"}
_FLOATS = {"alpha", "dropout", "lr", "val_fraction"}


def _clean(name: str, value):
    """Gradio numbers arrive as floats (or None when emptied); the config wants ints. An API client
    sends the Resolution dropdown's choices as the strings its schema lists ('0', '96', ...)."""
    if name == "image_size" and isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if name == "image_size" and value in (None, "", 0, "model default"):
        return None
    if name == "weights_file":
        return value or None
    if name in _INTS and isinstance(value, float) and value.is_integer():
        return int(value)
    if name in _FLOATS and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def config_from_values(values: dict, source: str = "", base: RunConfig | None = None,
                       fixes_by: str = "") -> RunConfig:
    """Field values over ``base`` (the last applied preset, else defaults) -> a validated RunConfig.

    Settings that no field shows (warmup, early stopping, ...) keep the base's value.
    ConfigError names the bad field.
    """
    d = (base or RunConfig()).to_dict()
    for name, value in values.items():
        section, key = FIELDS[name]
        d[section][key] = _clean(name, value)
    d["data"]["source"] = source
    d["data"]["fixes_by"] = fixes_by   # the page's, never a preset's (data/fixes.py)
    return RunConfig.from_dict(d)


def values_from_config(cfg: RunConfig) -> dict:
    d = cfg.to_dict()
    out = {name: d[section][key] for name, (section, key) in FIELDS.items()}
    if out["image_size"] is None:
        out["image_size"] = 0
    return out


# The form's starting values: the config's own defaults, never retyped in a tab.
DEFAULTS = values_from_config(RunConfig())

NUMBERS = ["rank", "alpha", "dropout", "epochs", "batch_size", "lr", "seed", "val_fraction", "image_size"]


def field_problem(name: str, value) -> str | None:
    """What is wrong with one field's value, in the config's own words (its ranges live only
    in config.py's validation), or None when it is fine."""
    try:
        config_from_values({name: value})
    except ConfigError as exc:
        return re.sub(r"^(?:config: )?(?:[a-z]+: )?", "", str(exc))   # 'config: lora: ' means nothing here
    return None


def problems_text(names: list[str], values) -> str:
    """The first bad field of a form as one markdown line ('' when all are fine)."""
    for name, value in zip(names, values):
        problem = field_problem(name, value)
        if problem:
            return f"⚠️ {problem[0].upper()}{problem[1:]}. Nothing else changed until it is fixed."
    return ""


def lenient(*components):
    """Pass numbers through to the handler as typed, so the config's validation gives the one
    message: Gradio's own bounds check (and float('abc')) would raise before any handler
    runs, a red Error pill per event listening to the field.

    The component's class is swapped for a subclass, not its ``preprocess`` patched on the
    instance: Gradio keeps a per-session copy of a component once a handler has updated it
    (a preset, a re-attached job's settings), rebuilt from its class, and an instance patch
    would be lost there."""
    for component in components:
        component.__class__ = _lenient_class(type(component))
    return components


_LENIENT: dict[type, type] = {}


def _lenient_class(base: type) -> type:
    if getattr(base, "_lg_lenient", False):
        return base
    if base not in _LENIENT:
        _LENIENT[base] = component_variant(base, f"Lenient{base.__name__}", _lg_lenient=True,
                                           preprocess=lambda self, payload: payload)
    return _LENIENT[base]
