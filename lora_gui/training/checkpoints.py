"""What a run leaves on disk as it goes: config.json and split.json at the start, checkpoints
(atomically replaced) and the best/ and last/ adapters, and the resume from a checkpoint.

A mixin of ``loop.Trainer``: these methods read and write the trainer's state.
"""
from __future__ import annotations

import time

from .. import lora
from ..store.adapter_file import AdapterMeta, save_adapter
from ..store.records import RunRecord, SplitRecord
from . import distributed
from .runtime import package_versions
from .seeding import rng_state, seed_everything, set_rng_state


class CheckpointMixin:
    def _write_config(self) -> None:
        # split first: a folder with a config.json is a run, and a run must be resumable
        if not self.dist.is_main:  # [ddp] only rank 0 writes
            return
        SplitRecord([(s.path, s.label) for s in self.train_samples],
                    [(s.path, s.label) for s in self.val_samples]).write(self.folder)
        RunRecord(self.cfg, list(self.classes), list(self.layers), dict(self.data_config), self.speed,
                  list(self.calibrated_norms or []), self.device, package_versions(),
                  time.strftime("%Y-%m-%d %H:%M:%S"),
                  {"world_size": self.dist.world, "backend": self.dist.backend,
                   "global_batch": self.dist.world * self.cfg.train.batch_size} if self.dist.enabled else None
                  ).write(self.folder)

    # checkpoints ---------------------------------------------------------------
    def _checkpoint(self, rng: dict | None = None) -> None:
        rng = rng or rng_state()
        self.folder.save_checkpoint({
            "adapter": lora.adapter_state_dict(self.model), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "step": self.step, "best": self.best, "bad_epochs": self.bad_epochs, "acc": dict(self.acc),
            "first_loss": self.first_loss, "rng": rng,
            "scaler": self.scaler.state_dict() if self.scaler else {}, **self._position(rng)})
        self.last_checkpoint = time.time()

    def _position(self, rng: dict) -> dict:
        """[ddp] Where the run is in world-size-free terms (samples), for a resume with any world size."""
        bs, world = self.cfg.train.batch_size, self.dist.world
        done = min(len(self.train_samples), self.epoch_start + self.batch_in_epoch * bs * world)
        out = {"world_size": world, "epoch_start": self.epoch_start, "samples_in_epoch": done,
               "total_steps": self.total_steps, "schedule": self.schedule}
        if self.ddp:
            out.update(self.ddp.checkpoint_fields(rng))
        return out

    def _restore(self) -> None:
        state = self.folder.load_checkpoint()
        if state is None:
            # killed before the first checkpoint: the state right after set-up *is* the start of
            # the run (same seed, same split, same layers), so begin again from step 0
            self.folder.truncate_metrics(keep_step=0, keep_epoch=0)
            self.folder.log("no checkpoint yet: starting the run again from the beginning")
            return
        lora.load_adapter_state_dict(self.model, state["adapter"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.batch_in_epoch, self.step = state["epoch"], state["batch_in_epoch"], state["step"]
        self.best, self.bad_epochs, self.acc = state["best"], state["bad_epochs"], state["acc"]
        self.first_loss = state.get("first_loss")
        rng = distributed.resume_position(self, state)  # [ddp] same or another world size
        if rng is not None:
            set_rng_state(rng)
        else:  # a rank the saved run did not have
            seed_everything(distributed.rank_seed(self.cfg.train.seed, self.dist.rank, self.step))
        self.folder.truncate_metrics(keep_step=self.step, keep_epoch=self.epoch)
        for row in self.folder.read_metrics():  # viewers see the whole run, not just this session
            self.reporter.report_metrics(row)
            if row["kind"] == "epoch":
                self.last_epoch_row = row
        self.folder.log(f"resumed at epoch {self.epoch + 1}, step {self.step}")

    def _save_adapter(self, which: str, metrics: dict) -> None:
        if not self.dist.is_main:  # [ddp] only rank 0 writes
            return
        meta = AdapterMeta(self.cfg.model, self.cfg.lora, self.layers, self.classes, self.data_config,
                           base_seed=self.cfg.train.seed, metrics=metrics, calibrated_norms=self.calibrated_norms)
        save_adapter(self.model, meta, self.folder.path / which)

    def _flush_and_checkpoint(self, rng: dict | None = None) -> None:
        # metrics (appended as they came) made durable first, then the checkpoint: after a kill,
        # rows past the checkpoint are dropped on resume
        self.folder.sync_metrics()
        self._checkpoint(rng)
