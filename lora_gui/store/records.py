"""Typed records of a run folder's JSON files: ``config.json`` (``RunRecord``) and
``split.json`` (``SplitRecord``).

Every reader of these files goes through here, so a file that is valid JSON but not
what lora_gui wrote ({"config": 5}, a list, a cut-off file) is refused in one place,
as ``DamagedRun`` naming the file and what is wrong, instead of as a KeyError or
TypeError somewhere deep in a resume, an evaluation or a table of runs.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..errors import ConfigError, DamagedRun

CONFIG_NAME = "config.json"
SPLIT_NAME = "split.json"
_ADVICE = "this run cannot be used as it is; train a new run (or restore the file from a backup)"


def write_json_atomic(path: Path, data, sort_keys: bool = True) -> None:
    """Write ``data`` as JSON so that a reader sees the old file or the new one, never half of one;
    no temporary file is left behind, even when the disk is full."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(data, indent=2, sort_keys=sort_keys, default=str))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _folder(run_folder) -> Path:
    return Path(getattr(run_folder, "path", run_folder))


def _load(file: Path, what: str) -> dict:
    """The JSON object in ``file``, or DamagedRun saying why it is not one."""
    try:
        raw = json.loads(file.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise DamagedRun(f"{file} is missing, so {what} are unknown; {_ADVICE}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DamagedRun(f"{file} is damaged (not valid JSON: {exc}); {_ADVICE}") from None
    except OSError as exc:
        raise DamagedRun(f"{file} cannot be read ({exc.strerror or exc})") from None
    if not isinstance(raw, dict):
        raise DamagedRun(f"{file} is damaged: it holds {_kind(raw)} instead of {what}; {_ADVICE}")
    return raw


def _need(file: Path, ok: bool, what: str) -> None:
    if not ok:
        raise DamagedRun(f"{file} is damaged: {what}; {_ADVICE}")


_JSON_KIND = {"int": "a number", "float": "a number", "str": "a text", "list": "a list", "bool": "true/false",
              "NoneType": "null", "dict": "an object"}


def _kind(value) -> str:
    return _JSON_KIND.get(type(value).__name__, type(value).__name__)


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


@dataclass
class RunRecord:
    """What ``config.json`` holds: what is needed to reproduce (and resume) a run."""

    config: RunConfig
    classes: list[str]
    layers: list[str]
    data_config: dict[str, Any]
    speed: dict[str, Any] = field(default_factory=dict)
    calibrated_norms: list[str] = field(default_factory=list)
    device: str = "cpu"
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    distributed: dict[str, Any] | None = None  # [ddp] world_size, backend, global_batch

    @classmethod
    def read(cls, run_folder) -> "RunRecord":
        file = _folder(run_folder) / CONFIG_NAME
        raw = _load(file, "the run's settings")
        _need(file, isinstance(raw.get("config"), dict), "its 'config' (the training settings) is "
              f"{'missing' if 'config' not in raw else _kind(raw['config']) + ', not an object'}")
        try:
            config = RunConfig.from_dict(raw["config"], where=str(file))
        except ConfigError as exc:
            raise DamagedRun(f"{exc}; {_ADVICE}") from None
        _need(file, _strings(raw.get("classes")) and len(raw["classes"]) >= 1,
              "'classes' must be a list of class names")
        _need(file, _strings(raw.get("layers")), "'layers' must be a list of layer names")
        _need(file, isinstance(raw.get("data_config"), dict), "'data_config' must be an object")
        for name, kind, default in (("speed", dict, {}), ("calibrated_norms", list, []), ("device", str, "cpu"),
                                    ("versions", dict, {}), ("created", str, "")):
            _need(file, isinstance(raw.get(name, default), kind), f"'{name}' must be a {kind.__name__}")
        dist = raw.get("distributed")
        _need(file, dist is None or (isinstance(dist, dict) and isinstance(dist.get("world_size", 1), int)),
              "'distributed' must be an object with a whole-number world_size")
        return cls(config, list(raw["classes"]), list(raw["layers"]), dict(raw["data_config"]),
                   dict(raw.get("speed", {})), list(raw.get("calibrated_norms", [])), raw.get("device", "cpu"),
                   dict(raw.get("versions", {})), raw.get("created", ""), dist)

    def to_dict(self) -> dict:
        out = {"config": self.config.to_dict(), "classes": list(self.classes), "layers": list(self.layers),
               "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in self.data_config.items()},
               "speed": self.speed, "calibrated_norms": list(self.calibrated_norms), "device": self.device,
               "versions": self.versions, "created": self.created}
        if self.distributed is not None:
            out["distributed"] = self.distributed
        return out

    def write(self, run_folder) -> None:
        write_json_atomic(_folder(run_folder) / CONFIG_NAME, self.to_dict(), sort_keys=False)


@dataclass
class SplitRecord:
    """What ``split.json`` holds: the exact (path, label) pairs of the training and validation parts."""

    train: list[tuple[str, int | str]]
    val: list[tuple[str, int | str]]

    @classmethod
    def read(cls, run_folder) -> "SplitRecord":
        file = _folder(run_folder) / SPLIT_NAME
        raw = _load(file, "the run's training and validation images")
        parts = {}
        for part in ("train", "val"):
            items = raw.get(part)
            _need(file, isinstance(items, list), f"'{part}' must be a list of [path, label] pairs")
            ok = all(isinstance(i, list) and len(i) == 2 and isinstance(i[0], str)
                     and isinstance(i[1], (int, str)) and not isinstance(i[1], bool) for i in items)
            _need(file, ok, f"each '{part}' entry must be [path, label]")
            parts[part] = [(p, label) for p, label in items]
        return cls(parts["train"], parts["val"])

    def to_dict(self) -> dict:
        return {"train": [[p, label] for p, label in self.train], "val": [[p, label] for p, label in self.val]}

    def write(self, run_folder) -> None:
        write_json_atomic(_folder(run_folder) / SPLIT_NAME, self.to_dict())
