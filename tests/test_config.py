"""Config dataclasses (lora_gui/config.py): validation, unknown keys, JSON round trip, presets."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lora_gui.config import (
    DataConfig,
    LoraConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    load_preset,
)
from lora_gui.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

# (class, field, bad value, words the message must contain to name the field)
BAD_VALUES = [
    (LoraConfig, "rank", 0, "rank"),
    (LoraConfig, "rank", 2048, "rank"),
    (LoraConfig, "rank", 4.5, "rank"),
    (LoraConfig, "rank", "8", "rank"),
    (LoraConfig, "alpha", 0, "alpha"),
    (LoraConfig, "alpha", -1.0, "alpha"),
    (LoraConfig, "alpha", math.inf, "alpha"),
    (LoraConfig, "alpha", math.nan, "alpha"),
    (LoraConfig, "alpha", "16", "alpha"),
    (LoraConfig, "dropout", -0.1, "dropout"),
    (LoraConfig, "dropout", 1.0, "dropout"),
    (LoraConfig, "targets", "", "targets"),
    (LoraConfig, "targets", "   ", "targets"),
    (LoraConfig, "targets", 3, "targets"),
    (ModelConfig, "name", "", "model name"),
    (ModelConfig, "name", "  ", "model name"),
    (ModelConfig, "weights", "cloud", "weights"),
    (ModelConfig, "image_size", 16, "image_size"),
    (ModelConfig, "image_size", 4096, "image_size"),
    (ModelConfig, "image_size", 224.0, "image_size"),
    (DataConfig, "val_fraction", 1.0, "validation fraction"),
    (DataConfig, "val_fraction", -0.2, "validation fraction"),
    (DataConfig, "split_seed", "0", "split seed"),
    (DataConfig, "augmentation", "heavy", "augmentation"),
    (DataConfig, "cache_mb", -1, "cache_mb"),
    (TrainConfig, "epochs", 0, "epochs"),
    (TrainConfig, "epochs", 2.5, "epochs"),
    (TrainConfig, "epochs", True, "epochs"),
    (TrainConfig, "batch_size", 0, "batch size"),
    (TrainConfig, "grad_accum", 0, "grad accum"),
    (TrainConfig, "early_stop_patience", -1, "early stop patience"),
    (TrainConfig, "num_threads", -2, "num threads"),
    (TrainConfig, "seed", "zero", "seed"),
    (TrainConfig, "lr", 0, "learning rate"),
    (TrainConfig, "lr", -1e-3, "learning rate"),
    (TrainConfig, "lr", math.inf, "learning rate"),
    (TrainConfig, "lr", 100.0, "learning rate"),
    (TrainConfig, "weight_decay", -0.1, "weight decay"),
    (TrainConfig, "warmup_fraction", 0.95, "warmup fraction"),
    (TrainConfig, "label_smoothing", 1.0, "label smoothing"),
    (TrainConfig, "grad_clip", -1.0, "grad clip"),
    (TrainConfig, "checkpoint_minutes", 0, "checkpoint minutes"),
    (TrainConfig, "device", "tpu", "device"),
    (TrainConfig, "device", "cuda0", "device"),
    (TrainConfig, "mixed_precision", "yes", "mixed_precision"),
    (TrainConfig, "channels_last", True, "channels_last"),
    (TrainConfig, "compile", "always", "compile"),
    (TrainConfig, "cache_frozen_prefix", "", "cache_frozen_prefix"),
    (TrainConfig, "calibrate_norms", "yes", "calibrate_norms"),
    (TrainConfig, "dataloader_workers", -2, "dataloader workers"),
    (TrainConfig, "dataloader_workers", 1.5, "dataloader workers"),
]


@pytest.mark.parametrize("cls,field,value,words", BAD_VALUES,
                         ids=[f"{c.__name__}.{f}={v!r}" for c, f, v, _ in BAD_VALUES])
def test_bad_value_is_rejected_naming_the_field(cls, field, value, words):
    with pytest.raises(ConfigError) as info:
        cls(**{field: value})
    msg = str(info.value)
    assert words in msg, msg
    # through from_dict (a preset, the CLI) the message also says where
    with pytest.raises(ConfigError) as info:
        cls.from_dict({field: value}, where="section")
    assert str(info.value).startswith("section: ") and words in str(info.value)


def test_message_shows_the_bad_value():
    with pytest.raises(ConfigError, match=r"got 0\b"):
        LoraConfig(rank=0)
    with pytest.raises(ConfigError, match="'heavy'"):
        DataConfig(augmentation="heavy")
    with pytest.raises(ConfigError, match="bundled, hub, file, random"):
        ModelConfig(weights="cloud")


def test_file_weights_need_a_file():
    with pytest.raises(ConfigError, match="weights_file"):
        ModelConfig(name="resnet18", weights="file")
    assert ModelConfig(name="resnet18", weights="file", weights_file="w.safetensors").weights_file == "w.safetensors"


@pytest.mark.parametrize("cls,field,value", [(LoraConfig, "rank", True), (DataConfig, "split_seed", False),
                                             (DataConfig, "cache_mb", True), (TrainConfig, "seed", True)])
def test_bool_is_not_a_whole_number(cls, field, value):
    with pytest.raises(ConfigError, match=field.replace("_", "[ _]")):
        cls(**{field: value})


@pytest.mark.parametrize("field", ["use_rslora", "train_norm", "train_bias"])
def test_lora_switches_must_be_booleans(field):
    with pytest.raises(ConfigError, match=field):
        LoraConfig(**{field: "yes"})


def test_good_values_are_normalised():
    lora = LoraConfig(rank=4, alpha=8, dropout=0, targets="  attention  ")
    assert lora.alpha == 8.0 and isinstance(lora.alpha, float)
    assert isinstance(lora.dropout, float)
    assert lora.targets == "attention"
    assert lora.scaling == 2.0
    assert LoraConfig(rank=16, alpha=8, use_rslora=True).scaling == pytest.approx(2.0)
    assert ModelConfig(name="  resnet18 ").name == "resnet18"
    train = TrainConfig(lr=1, weight_decay=0, device="cuda:1")
    assert isinstance(train.lr, float) and isinstance(train.weight_decay, float)
    assert DataConfig(val_fraction=0).val_fraction == 0.0


@pytest.mark.parametrize("cls", [LoraConfig, ModelConfig, DataConfig, TrainConfig])
def test_unknown_key_is_named(cls):
    with pytest.raises(ConfigError) as info:
        cls.from_dict({"rnak": 4})
    msg = str(info.value)
    assert "'rnak'" in msg and cls.__name__ in msg
    assert "allowed keys" in msg
    some_field = next(iter(cls.__dataclass_fields__))
    assert some_field in msg


def test_unknown_keys_in_a_run_config_are_named_with_their_section():
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict({"lora": {"rank": 4, "rnak": 4}})
    msg = str(info.value)
    assert "lora" in msg and "'rnak'" in msg and "rank" in msg
    with pytest.raises(ConfigError, match="'optimizer'"):
        RunConfig.from_dict({"optimizer": {}})
    with pytest.raises(ConfigError, match=r"train: .*epochs"):
        RunConfig.from_dict({"train": {"epochs": 0}})
    with pytest.raises(ConfigError, match="lora must be a LoraConfig or an object, got list"):
        RunConfig.from_dict({"lora": [1, 2]})
    with pytest.raises(ConfigError, match="expected an object"):
        LoraConfig.from_dict("rank=4")
    with pytest.raises(ConfigError, match="model must be a ModelConfig"):
        RunConfig(model="resnet18")


def test_run_config_json_round_trip(tmp_path):
    cfg = RunConfig(model=ModelConfig(name="vit_tiny_patch16_224", weights="hub", image_size=160),
                    lora=LoraConfig(rank=16, alpha=32, dropout=0.1, targets="re:blocks\\.\\d+\\.attn\\.qkv",
                                    use_rslora=True, train_norm=True),
                    data=DataConfig(source="/data/cats", val_fraction=0.25, split_seed=7, augmentation="strong",
                                    cache_mb=0),
                    train=TrainConfig(epochs=5, batch_size=8, lr=3e-4, seed=42, device="cpu",
                                      mixed_precision="off", early_stop_patience=2))
    text = cfg.to_json()
    assert text == cfg.to_json()  # stable (sorted keys)
    raw = json.loads(text)
    assert raw["lora"]["targets"] == "re:blocks\\.\\d+\\.attn\\.qkv"
    back = RunConfig.from_dict(raw)
    assert back == cfg
    assert isinstance(back.lora, LoraConfig) and back.lora.rank == 16
    path = tmp_path / "config.json"
    cfg.save(path)
    assert RunConfig.from_dict(json.loads(path.read_text())) == cfg
    assert RunConfig.from_dict({}) == RunConfig()  # every section defaults
    assert RunConfig.from_dict(json.loads(RunConfig().to_json())) == RunConfig()


def test_load_preset(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"name": "Mine", "description": "rank 4 on attention",
                                "config": {"lora": {"rank": 4, "targets": "attention"},
                                           "train": {"epochs": 2}}}))
    cfg, meta = load_preset(path)
    assert meta == {"name": "Mine", "description": "rank 4 on attention"}
    assert cfg.lora.rank == 4 and cfg.lora.targets == "attention" and cfg.lora.alpha == LoraConfig().alpha
    assert cfg.train.epochs == 2 and cfg.train.lr == TrainConfig().lr
    assert cfg.model == ModelConfig() and cfg.data == DataConfig()

    bare = tmp_path / "bare.json"
    bare.write_text("{}")
    cfg, meta = load_preset(bare)
    assert cfg == RunConfig() and meta == {"name": "bare", "description": ""}


@pytest.mark.parametrize("content,words", [
    ("{not json", ["bad.json", "not valid JSON"]),
    ("[1, 2]", ["bad.json", "JSON object"]),
    ('{"name": "x", "colour": "red"}', ["bad.json", "'colour'"]),
    ('{"config": {"lora": {"rank": 0}}}', ["bad.json", "lora", "rank"]),
    ('{"config": {"lora": {"rnak": 4}}}', ["bad.json", "lora", "'rnak'"]),
    ('{"config": {"model": {"weights": "cloud"}}}', ["bad.json", "model", "weights"]),
])
def test_bad_preset_files(tmp_path, content, words):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_preset(path)
    for w in words:
        assert w in str(info.value), str(info.value)


def test_missing_preset_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_preset(tmp_path / "nope.json")


def test_shipped_presets_load():
    presets = sorted((REPO / "presets").glob("*.json"))
    if not presets:
        pytest.skip("no presets shipped yet")
    for path in presets:
        cfg, meta = load_preset(path)
        assert meta["name"] and meta["description"], path.name
        assert isinstance(cfg, RunConfig)


def test_every_cli_flag_and_its_help_come_from_the_config_fields():
    """One source of truth: each config field with a flag becomes a train option with the field's help,
    type, choices and default; a flag typed anywhere else would not be listed here."""
    import argparse

    from lora_gui.cli.train_command import add_config_arguments, config_flags
    p = argparse.ArgumentParser()
    add_config_arguments(p)
    actions = {a.dest: a for a in p._actions if a.dest != "help"}
    flagged = config_flags()
    assert {d for d, *_ in flagged} == set(actions) and len(flagged) >= 18
    for dest, section, key, f in flagged:
        assert f.metadata["help"] in actions[dest].help
        default = getattr(RunConfig(), section).__dict__[key]
        assert key == "alpha" or f"(default {default if default is not None else 'the model' + chr(39) + 's own'})" \
            in actions[dest].help
    assert actions["augmentation"].choices == ("none", "flip", "light", "strong")
    assert actions["rank"].type is int and actions["lr"].type is float
    assert p.parse_args(["--rank", "4"]).rank == 4


def test_number_messages_state_the_real_range_and_an_empty_box():
    from lora_gui.config import LoraConfig, TrainConfig
    with pytest.raises(ConfigError, match=r"above 0 and at most 10 .*got 1e\+09$"):
        TrainConfig(lr=1e9)
    with pytest.raises(ConfigError, match=r"got nothing \(the box is empty\)$"):
        TrainConfig(lr=None)
    with pytest.raises(ConfigError, match=r"alpha must be a positive number .*got nothing"):
        LoraConfig(alpha=None)
