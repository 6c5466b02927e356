"""The backbone list's facts (size, resolution, can it run offline now), without slowing start-up.

Parameter counts and default resolutions need each catalog model built on the meta device:
about 7 s for the 12 models, which every app start used to pay before the page answered.
They only change with timm, so they are kept in ``<workspace>/.cache/catalog-info.json``
(keyed by timm's version) and computed on the first visit of the Model tab when missing.

Whether weights are at hand offline is read fresh each time (cheap file checks, never the
network), from each model's hub id. The hub ids are kept in the same file, so the page is laid
out before timm (and torch) are imported at all (issue #15.3); a model whose hub id is not known
yet says nothing about being offline until the engine has loaded (``exact=True`` loads it).
"""
from __future__ import annotations

import json
import os
import threading
import uuid
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .. import backbones as models
from ..backbones.hub import hub_id_of

AVAILABILITY = {"bundled": "works offline (weights ship with lora_gui)",
                "cached": "works offline (weights downloaded before)",
                "needs network": "needs the internet the first time (downloads its weights)"}


def timm_version() -> str:
    """timm's version from its installed metadata: no import of timm (and torch)."""
    try:
        return version("timm")
    except PackageNotFoundError:
        return ""


class CatalogInfo:
    def __init__(self, workspace: str | os.PathLike):
        self.path = Path(workspace) / ".cache" / "catalog-info.json"
        self.lock = threading.Lock()
        self.info: dict[str, dict] = self._read()

    def _read(self) -> dict:
        try:
            raw = json.loads(self.path.read_text())
            return raw["models"] if raw.get("timm") == timm_version() else {}
        except (OSError, ValueError, KeyError, AttributeError, TypeError):
            return {}

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:6]}.tmp")
        tmp.write_text(json.dumps({"timm": timm_version(), "models": self.info}, indent=1))
        os.replace(tmp, self.path)

    def _save(self) -> None:
        try:
            self._write()
        except OSError:
            pass   # a read-only workspace only costs the next start its 7 s

    def get(self, name: str, compute: bool = True) -> dict | None:
        """{'params': backbone parameters without a classifier head, 'resolution': px}, or None."""
        with self.lock:
            known = self.info.get(name, {})
            if "params" in known or not compute:
                return {k: known[k] for k in ("params", "resolution")} if "params" in known else None
        import timm
        import torch
        try:
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False, num_classes=0)
            facts = {"params": sum(p.numel() for p in model.parameters()),
                     "resolution": timm.data.resolve_model_data_config(model)["input_size"][-1],
                     "hub_id": hub_id_of(name)}
        except Exception:
            return None
        with self.lock:
            self.info[name] = facts
            self._save()
        return facts

    def fill(self) -> None:
        """Compute what the cache lacks (the first Model-tab visit pays it once, not every start-up;
        a background thread was tried and aborts the interpreter when it exits mid-torch)."""
        for entry in models.CATALOG:
            self.get(entry.name)

    def fill_hub_ids(self) -> None:
        """Note each catalog model's hub id (cheap once timm is loaded), for the next start's layout."""
        with self.lock:
            missing = [e.name for e in models.CATALOG if "hub_id" not in self.info.get(e.name, {})]
        if not missing:
            return
        ids = {name: hub_id_of(name) for name in missing}
        with self.lock:
            for name, hub_id in ids.items():
                self.info.setdefault(name, {})["hub_id"] = hub_id
            self._save()

    def availability(self, name: str, exact: bool = True) -> str | None:
        """'bundled', 'cached' or 'needs network'; None when only timm could tell and ``exact`` is False."""
        if name == models.BUNDLED_MODEL:
            return "bundled"
        known = self.info.get(name, {})
        if "hub_id" in known:
            return models.weights_availability(name, known["hub_id"]) if known["hub_id"] else "needs network"
        return models.weights_availability(name) if exact else None

    def label(self, name: str, exact: bool = True) -> str:
        facts = self.get(name, compute=False)
        size = f"{facts['params'] / 1e6:.1f}M params · {facts['resolution']} px · " if facts else ""
        where = self.availability(name, exact)
        offline = "" if where is None else ("✓ offline" if where != "needs network" else "needs internet")
        return f"{name}  ·  {size}{offline}".rstrip(" ·")

    def choices(self, exact: bool = True) -> list[tuple[str, str]]:
        return [(self.label(e.name, exact), e.name) for e in models.CATALOG]

    def offline_summary(self, exact: bool = True) -> str:
        where = {e.name: self.availability(e.name, exact) for e in models.CATALOG}
        ready = [n for n, w in where.items() if w not in (None, "needs network")]
        unknown = [n for n, w in where.items() if w is None]
        rest = len(models.CATALOG) - len(ready) - len(unknown)
        text = "**Usable offline right now:** " + (", ".join(f"`{n}`" for n in ready) or "none")
        if unknown:   # first start: the hub ids come with the engine; the tab's first visit fills them in
            return text + (f"; checking which of the other {len(unknown)} were downloaded before (the rest "
                           "download their pretrained weights from the Hugging Face hub the first time).")
        return text + (f". The other {rest} download their pretrained weights from the Hugging Face hub the first "
                       "time (needs internet); 'random' starting weights work offline but learn poorly." if rest else ".")
