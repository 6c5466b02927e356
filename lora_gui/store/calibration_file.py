"""``calibration.json`` beside an adapter: the softmax temperature and the "not sure" threshold.

Written by ``inference.calibration`` after fitting on the run's validation split,
read by ``inference.predict.load_adapter`` and copied into the demo app export.
A missing file means "uncalibrated": temperature 1, threshold 0 (never "not sure").
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import AdapterError

CALIBRATION_FILE = "calibration.json"


@dataclass
class Calibration:
    temperature: float = 1.0     # logits are divided by it before the softmax
    threshold: float = 0.0       # top probability below this -> "not sure"
    nll_before: float | None = None   # validation NLL at temperature 1 (for people)
    nll_after: float | None = None    # ... at the fitted temperature
    curve: list[dict] = field(default_factory=list)   # {"threshold", "coverage", "accuracy"} on validation

    def __post_init__(self):
        t, th = self.temperature, self.threshold
        if not (isinstance(t, (int, float)) and math.isfinite(t) and 0.01 <= t <= 100):
            raise AdapterError(f"calibration temperature must be a number from 0.01 to 100, got {t!r}")
        if not (isinstance(th, (int, float)) and 0.0 <= th <= 1.0):
            raise AdapterError(f"calibration threshold must be a number from 0 to 1, got {th!r}")
        self.temperature, self.threshold = float(t), float(th)

    def unsure(self, top_probability: float) -> bool:
        return top_probability < self.threshold


def calibration_path(adapter_file_or_dir: str | os.PathLike) -> Path:
    p = Path(adapter_file_or_dir)
    return (p if p.is_dir() else p.parent) / CALIBRATION_FILE


def read_calibration(adapter_file_or_dir: str | os.PathLike) -> Calibration | None:
    """The calibration saved beside an adapter, None if there is none; AdapterError if it is damaged."""
    path = calibration_path(adapter_file_or_dir)
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{path} is damaged ({exc}); delete it or calibrate again") from None
    if not isinstance(raw, dict):
        raise AdapterError(f"{path}: expected a JSON object")
    known = {k: raw[k] for k in ("temperature", "threshold", "nll_before", "nll_after", "curve") if k in raw}
    try:
        return Calibration(**known)
    except TypeError as exc:
        raise AdapterError(f"{path}: {exc}") from None


def write_calibration(adapter_file_or_dir: str | os.PathLike, calibration: Calibration) -> Path:
    """Atomically (re)write calibration.json beside the adapter."""
    path = calibration_path(adapter_file_or_dir)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(calibration), indent=2))
    os.replace(tmp, path)
    return path
