"""A new run that starts from an earlier run's adapter instead of a fresh LoRA (the demo's
"Retrain" after fixes): same config and layers, the old LoRA, head and norm tensors loaded
before anything is computed from them (norm calibration, the frozen-prefix cache)."""
from __future__ import annotations

import os

from ..errors import TrainingFailed
from ..store.adapter_file import read_adapter
from .loop import Trainer


class ContinueTrainer(Trainer):
    def __init__(self, *args, init_adapter: str | os.PathLike, **kwargs):
        super().__init__(*args, **kwargs)
        self.init_adapter = init_adapter

    def _calibrate_norms(self) -> list[str]:
        # the first hook after the model is built, injected and moved to its device
        if not self.resume:   # a resumed continue-run restores its own checkpoint instead
            self._load_init_adapter()
        return super()._calibrate_norms()

    def _load_init_adapter(self) -> None:
        tensors, meta = read_adapter(self.init_adapter)
        if list(meta.classes) != list(self.classes) or list(meta.layers) != list(self.layers):
            raise TrainingFailed("the earlier adapter has other classes or LoRA layers than this run; "
                                 "train a new run from the Train tab instead")
        own = self.model.state_dict()
        fitting = {k: v for k, v in tensors.items() if k in own and own[k].shape == v.shape}
        lora_missing = [k for k in own if ".lora_" in k and k not in fitting]
        if lora_missing:
            raise TrainingFailed(f"the earlier adapter lacks {lora_missing[0]}; train a new run instead")
        self.model.load_state_dict(fitting, strict=False)
        self.folder.log(f"continuing from {self.init_adapter} ({len(fitting)} tensors)")
