"""The backbone list's facts (size, resolution, can it run offline now), without slowing start-up.

Parameter counts and default resolutions need each catalog model built on the meta device:
about 7 s for the 12 models, which every app start used to pay before the page answered.
They only change with timm, so they are kept in ``<workspace>/.cache/catalog-info.json``
(keyed by timm's version) and computed on the first visit of the Model tab when missing. Whether
weights are at hand offline is read fresh each time (cheap file checks, never the network).
"""
from __future__ import annotations

import json
import os
import threading
import uuid
from pathlib import Path

import timm
import torch

from .. import backbones as models

AVAILABILITY = {"bundled": "works offline (weights ship with lora_gui)",
                "cached": "works offline (weights downloaded before)",
                "needs network": "needs the internet the first time (downloads its weights)"}


class CatalogInfo:
    def __init__(self, workspace: str | os.PathLike):
        self.path = Path(workspace) / ".cache" / "catalog-info.json"
        self.lock = threading.Lock()
        self.info: dict[str, dict] = self._read()

    def _read(self) -> dict:
        try:
            raw = json.loads(self.path.read_text())
            return raw["models"] if raw.get("timm") == timm.__version__ else {}
        except (OSError, ValueError, KeyError, AttributeError, TypeError):
            return {}

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:6]}.tmp")
        tmp.write_text(json.dumps({"timm": timm.__version__, "models": self.info}, indent=1))
        os.replace(tmp, self.path)

    def get(self, name: str, compute: bool = True) -> dict | None:
        """{'params': backbone parameters without a classifier head, 'resolution': px}, or None."""
        with self.lock:
            if name in self.info or not compute:
                return self.info.get(name)
        try:
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False, num_classes=0)
            facts = {"params": sum(p.numel() for p in model.parameters()),
                     "resolution": timm.data.resolve_model_data_config(model)["input_size"][-1]}
        except Exception:
            return None
        with self.lock:
            self.info[name] = facts
            try:
                self._write()
            except OSError:
                pass   # a read-only workspace only costs the next start its 7 s
        return facts

    def fill(self) -> None:
        """Compute what the cache lacks (the first Model-tab visit pays it once, not every start-up;
        a background thread was tried and aborts the interpreter when it exits mid-torch)."""
        for entry in models.CATALOG:
            self.get(entry.name)

    def label(self, name: str) -> str:
        facts = self.get(name, compute=False)
        size = f"{facts['params'] / 1e6:.1f}M params · {facts['resolution']} px · " if facts else ""
        offline = models.weights_availability(name) != "needs network"
        return f"{name}  ·  {size}{'✓ offline' if offline else 'needs internet'}"

    def choices(self) -> list[tuple[str, str]]:
        return [(self.label(e.name), e.name) for e in models.CATALOG]

    def offline_summary(self) -> str:
        ready = [e.name for e in models.CATALOG if models.weights_availability(e.name) != "needs network"]
        rest = len(models.CATALOG) - len(ready)
        return ("**Usable offline right now:** " + (", ".join(f"`{n}`" for n in ready) or "none")
                + (f". The other {rest} download their pretrained weights from the Hugging Face hub the first "
                   "time (needs internet); 'random' starting weights work offline but learn poorly." if rest else "."))
