"""Configuration dataclasses shared by the engine, the CLI and the UI.

Every config validates itself in ``__post_init__`` so that bad values are
rejected where they enter (a form field, a preset file, a CLI flag) with a
message a person can act on, instead of failing deep inside training.
Configs round-trip through plain dicts / JSON; an unknown key is an error
that names it, so a typo in a preset never silently does nothing.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _shown(v) -> str:
    """A bad value as a person typed it: an emptied box is 'nothing', 1e9 stays 1e9."""
    if v is None or v == "":
        return "nothing (the box is empty)"
    return f"{v:g}" if isinstance(v, float) else repr(v)


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # True is an int to Python, not to a person


def _flags(obj, *names: str) -> None:
    for name in names:
        _check(isinstance(getattr(obj, name), bool), f"{name} must be true or false, got {getattr(obj, name)!r}")


def _from_dict(cls, data: dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"allowed keys are {', '.join(sorted(known))}"
        )
    try:
        return cls(**data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except TypeError as exc:  # wrong types that __post_init__ did not catch
        raise ConfigError(f"{where}: {exc}") from None


class _Serialisable:
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str | None = None):
        return _from_dict(cls, data, where or cls.__name__)


def option(default, help: str, flag: str | None = None, choices: tuple | None = None, **kwargs):
    """A config field that carries its own help (PEFT's LoraConfig does the same): the CLI's flags
    (``cli.train_command``) and the app's hints are derived from it. ``flag`` names the CLI option
    (``--rank``); fields without one are set through presets or ``--config-json``."""
    meta = {"help": help, "flag": flag, "choices": choices}
    if callable(default) and not isinstance(default, type):
        return field(default_factory=default, metadata=meta, **kwargs)
    return field(default=default, metadata=meta, **kwargs)


def options(cls) -> list[tuple[str, dataclasses.Field]]:
    """(field name, field) of a config dataclass, in declaration order."""
    return [(f.name, f) for f in fields(cls)]


TARGET_PRESETS = ("auto", "attention", "attention+mlp", "all-linear", "all-conv", "late-blocks")


@dataclass
class LoraConfig(_Serialisable):
    """What LoRA adds to the frozen backbone.

    ``targets`` is a preset name (see ``TARGET_PRESETS``), ``re:<regex>``
    (full-match on the module name) or a comma-separated list of name
    suffixes that must match at a ``.`` boundary.
    """

    rank: int = option(8, "LoRA rank r: how thin the correction matrices are (4-16 is plenty for a few "
                          "classes)", "--rank")
    alpha: float = option(16.0, "LoRA alpha; the update is scaled by alpha / rank (keep alpha = 2 x rank)", "--alpha")
    dropout: float = option(0.0, "dropout on the LoRA path, from 0 to below 1", "--dropout")
    targets: str = option("auto", "the layers LoRA adapts: a preset (" + ", ".join(TARGET_PRESETS) + "), "
                          "'re:<regex>' or comma-separated layer-name endings", "--targets")
    use_rslora: bool = option(False, "scale by alpha / sqrt(rank) (rsLoRA) instead of alpha / rank")
    train_norm: bool = option(False, "also train the normalisation layers")
    train_bias: bool = option(False, "also train the bias terms")

    def __post_init__(self):
        _check(_whole(self.rank) and 1 <= self.rank <= 1024,
               f"LoRA rank must be a whole number from 1 to 1024, got {self.rank!r}")
        _check(isinstance(self.alpha, (int, float)) and self.alpha > 0 and math.isfinite(self.alpha),
               f"LoRA alpha must be a positive number (typical: twice the rank), got {_shown(self.alpha)}")
        self.alpha = float(self.alpha)
        _check(isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0,
               f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        self.dropout = float(self.dropout)
        _check(isinstance(self.targets, str) and self.targets.strip() != "",
               "LoRA targets must be a preset name, 're:<regex>' or a list of layer-name suffixes")
        self.targets = self.targets.strip()
        _flags(self, "use_rslora", "train_norm", "train_bias")

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)


WEIGHT_SOURCES = ("bundled", "hub", "file", "random")


@dataclass
class ModelConfig(_Serialisable):
    """Which timm backbone and where its starting weights come from."""

    name: str = option("tf_efficientnet_lite0", "timm model name")
    weights: str = option("bundled", "where the starting weights come from", choices=WEIGHT_SOURCES)
    weights_file: str | None = option(None, "a .safetensors/.pth file, for weights 'file'")
    image_size: int | None = option(None, "square input resolution, 32-1024 (empty: the model's own)", "--image-size")

    def __post_init__(self):
        _check(isinstance(self.name, str) and self.name.strip() != "", "model name must not be empty")
        self.name = self.name.strip()
        _check(self.weights in WEIGHT_SOURCES,
               f"weights must be one of {', '.join(WEIGHT_SOURCES)}, got {self.weights!r}")
        if self.weights == "file":
            _check(bool(self.weights_file), "weights='file' needs weights_file: the path of a .safetensors/.pth file")
        _check(self.image_size is None or (isinstance(self.image_size, int) and 32 <= self.image_size <= 1024),
               f"image_size must be empty (model default) or a whole number from 32 to 1024, got {self.image_size!r}")


AUGMENTATIONS = ("none", "flip", "light", "strong")


FIXES_BY = r"[A-Za-z0-9_-]{1,64}"   # a health-check record's folder name (data/fixes.py)


@dataclass
class DataConfig(_Serialisable):
    """Where the images are and how they are split and augmented."""

    source: str = option("", "folder of class folders, .zip/.tar/.tar.gz archive, .csv (filename,label), or "
                         "'example' for the built-in example dataset")
    val_fraction: float = option(0.2, "share of images held out for validation, from 0 to below 1",
                                 "--val-fraction")
    split_seed: int = option(0, "seed of the train/validation split")
    # flip is cheap, and lets the frozen prefix be cached (training/prefix_cache.py)
    augmentation: str = option("flip", "training augmentation (flip: fastest, lets the frozen part of the "
                               "model be computed once)", "--augmentation", AUGMENTATIONS)
    cache_mb: int = option(1024, "memory for decoded images, in MB")
    # the app sets it per person when it serves several (data/fixes.py); not a CLI flag
    fixes_by: str = option("", "whose health-check fixes apply: '' = the workspace's own record")

    def __post_init__(self):
        _check(isinstance(self.val_fraction, (int, float)) and 0.0 <= self.val_fraction < 1.0,
               f"validation fraction must be in [0, 1), got {self.val_fraction!r}")
        self.val_fraction = float(self.val_fraction)
        _check(_whole(self.split_seed), f"split seed must be a whole number, got {self.split_seed!r}")
        _check(self.augmentation in AUGMENTATIONS,
               f"augmentation must be one of {', '.join(AUGMENTATIONS)}, got {self.augmentation!r}")
        _check(isinstance(self.source, str), f"data source must be a path, got {self.source!r}")
        _check(_whole(self.cache_mb) and self.cache_mb >= 0,
               f"cache_mb must be a whole number >= 0, got {self.cache_mb!r}")
        _check(isinstance(self.fixes_by, str) and (self.fixes_by == "" or re.fullmatch(FIXES_BY, self.fixes_by)),
               f"fixes_by must be empty or up to 64 letters, digits, - or _, got {self.fixes_by!r}")


SWITCH = ("auto", "on", "off")


@dataclass
class TrainConfig(_Serialisable):
    """How the optimiser runs. Speed levers are 'auto' | 'on' | 'off'."""

    epochs: int = option(3, "passes over the training images, 1-10000", "--epochs")
    batch_size: int = option(16, "images per step, 1-4096 (per process under torchrun)", "--batch-size")
    lr: float = option(1e-3, "learning rate (typical: 1e-4 to 1e-2)", "--lr")
    weight_decay: float = option(0.01, "AdamW weight decay", "--weight-decay")
    warmup_fraction: float = option(0.05, "share of steps with a linear warm-up before the cosine decay",
                                    "--warmup-fraction")
    label_smoothing: float = option(0.1, "label smoothing of the cross-entropy", "--label-smoothing")
    grad_accum: int = option(1, "batches per optimizer step (gradient accumulation)", "--grad-accum")
    grad_clip: float = option(1.0, "clip the gradient norm to this; 0 = off", "--grad-clip")
    early_stop_patience: int = option(0, "early stopping: epochs without validation improvement before "
                                      "stopping; 0 = off", "--patience")
    seed: int = option(0, "random seed: same seed and data give the same metrics on CPU", "--seed")
    device: str = option("auto", "auto | cpu | cuda | cuda:N | mps", "--device")
    num_threads: int = option(0, "CPU threads for training; 0 = all cores (in the app, training steps aside "
                              "while a prediction runs)",
                              "--threads")
    checkpoint_minutes: float = option(2.0, "checkpoint at least this often, besides every epoch (minimum 0.01)",
                                       "--checkpoint-minutes")
    # speed levers; each records what was actually used in config.json
    mixed_precision: str = option("auto", "bf16/fp16 autocast where the hardware has it", choices=SWITCH)
    channels_last: str = option("auto", "channels-last memory layout for CNNs where it pays off", choices=SWITCH)
    # auto = off: measured slower on CPU (see training/compile_lever.py); 'on' opts in
    compile: str = option("auto", "torch.compile the blocks that train", choices=SWITCH)
    cache_frozen_prefix: str = option("auto", "compute the frozen front of the model once per image",
                                      choices=SWITCH)
    # -1 = auto: up to 4 on a GPU (the GPU would wait for one process), 0 on CPU (workers would take
    # cores from the training itself)
    dataloader_workers: int = option(-1, "processes decoding images; -1 = auto")
    # auto: random weights only (pretrained statistics beat a few hundred images')
    calibrate_norms: str = option("auto", "recompute frozen BatchNorm statistics on the training images",
                                  choices=SWITCH)
    # auto = on where it can run: with the frozen-prefix cache and a single linear classifier
    linear_probe: str = option("auto", "first train the head alone on the cached features: a first model "
                               "for Test in seconds, and LoRA starts from its head", choices=SWITCH)

    def __post_init__(self):
        def whole(name, lo, hi):
            v = getattr(self, name)
            _check(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi,
                   f"{name.replace('_', ' ')} must be a whole number from {lo} to {hi}, got {v!r}")
        whole("epochs", 1, 10000)
        whole("batch_size", 1, 4096)
        whole("grad_accum", 1, 1024)
        whole("early_stop_patience", 0, 10000)
        whole("num_threads", 0, 1024)
        whole("dataloader_workers", -1, 64)
        _check(_whole(self.seed), f"seed must be a whole number, got {self.seed!r}")
        _check(isinstance(self.lr, (int, float)) and 0 < self.lr <= 10 and math.isfinite(self.lr),
               f"learning rate must be a number above 0 and at most 10 (typical: 1e-4 to 1e-2), "
               f"got {_shown(self.lr)}")
        self.lr = float(self.lr)
        for name, lo, hi in (("weight_decay", 0, 10), ("warmup_fraction", 0, 0.9),
                             ("label_smoothing", 0, 0.9), ("grad_clip", 0, 1e6),
                             ("checkpoint_minutes", 0.01, 1e4)):
            v = getattr(self, name)
            _check(isinstance(v, (int, float)) and lo <= v <= hi,
                   f"{name.replace('_', ' ')} must be between {lo} and {hi}, got {v!r}")
            setattr(self, name, float(v))
        _check(isinstance(self.device, str) and (self.device in ("auto", "cpu", "cuda", "mps")
                                                 or self.device.startswith("cuda:")),
               f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        for name in ("mixed_precision", "channels_last", "compile", "cache_frozen_prefix", "calibrate_norms",
                     "linear_probe"):
            _check(getattr(self, name) in SWITCH,
                   f"{name} must be one of {', '.join(SWITCH)}, got {getattr(self, name)!r}")


@dataclass
class RunConfig(_Serialisable):
    """Everything needed to reproduce a run; written as config.json in its folder."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        for name, cls in (("model", ModelConfig), ("lora", LoraConfig),
                          ("data", DataConfig), ("train", TrainConfig)):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, cls.from_dict(value, where=name))
            elif not isinstance(value, cls):
                raise ConfigError(f"{name} must be a {cls.__name__} or an object, got {type(value).__name__}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str | None = None) -> "RunConfig":
        return _from_dict(cls, data, where or "config")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())


def load_preset(path: str | Path) -> tuple[RunConfig, dict[str, Any]]:
    """Read ``presets/NAME.json``: ``{"name", "description", "config": {...}}``.

    Returns the config and the preset's metadata (name, description).
    Any part of ``config`` may be left out and takes its default.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"preset file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"preset {path.name} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"preset {path.name}: expected a JSON object")
    allowed = {"name", "description", "config", "saved_by"}   # saved_by: the app's, in multi-user mode
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"preset {path.name}: unknown key(s) {', '.join(map(repr, unknown))}; "
                          f"allowed: name, description, config")
    try:
        config = RunConfig.from_dict(raw.get("config", {}), where=f"preset {path.name}")
    except ConfigError as exc:
        raise ConfigError(str(exc)) from None
    meta = {"name": raw.get("name", path.stem), "description": raw.get("description", "")}
    return config, meta
