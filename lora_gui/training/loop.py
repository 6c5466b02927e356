"""The training loop: data, model, optimiser, checkpoints.

Determinism: the model is built after seeding, every epoch's order comes from
its own generator (seed, epoch), and checkpoints carry the RNG states, so the
same seed and data give the same metrics on CPU, and a resumed run continues
the same sequence of batches. The loop reports through a ``Reporter``
(``training.reporter``) and knows nothing of who is watching.
"""
from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from .. import lora
from ..backbones.build import build_model, data_config
from ..backbones.seeded import seeded_build
from ..data.scan import Sample
from ..data.sources import load_dataset
from ..data.split import split_dataset
from ..errors import StopRequested, TrainingFailed
from . import distributed, norm_calibration, probe, speed_levers
from .batches import (
    _loader,
    calibration_batches,
    epoch_order,
    make_batches,
    release_free_memory,
)
from .checkpoints import CheckpointMixin
from .ddp import DDPHelper
from .eta import StepRate
from .reporter import Reporter
from .schedule import cosine_with_warmup
from .seeding import rng_state, seed_everything
from .yield_gate import PREDICTIONS

STEP_LOG_EVERY = 1
# A cross-entropy this far above where training started is not learning any more but
# diverging (a fresh head starts near ln(classes)); a NaN would follow a few steps later.
DIVERGED_FACTOR = 100.0
DIVERGED_MIN_LOSS = 100.0



def _diverged_message(loss: float, step: int, updated: bool) -> str:
    what = f"{loss:.3g}" if math.isfinite(loss) else str(loss)
    if not updated:  # no optimizer step yet: the learning rate cannot be the cause
        return (f"the loss is {what} at step {step}, before any weight update: the starting weights or the "
                "images give non-finite values (a damaged weights file?); with mixed precision on, try it off")
    return (f"the loss became {what} at step {step}: training diverged. "
            "Lower the learning rate (e.g. by 10x) and start again")


class Trainer(CheckpointMixin):
    """One training run into ``run`` (a ``store.run_folder.RunFolder``), reported to ``reporter``.

    ``dataset`` may be a ``data.Dataset`` already loaded (the app has one); without it the
    trainer loads ``config.data.source`` (unpacking archives under ``workspace``).
    ``resume`` continues from the run's checkpoint; ``interactive`` (the app) makes the
    training step aside while a prediction in the same process runs (``yield_gate``).
    """

    def __init__(self, config, run, device: str, reporter: Reporter, *, dataset=None,
                 workspace: str | os.PathLike = ".", resume: bool = False, interactive: bool = False):
        self.cfg = config
        self.folder = run
        self.device = device
        self.reporter = reporter
        self.dataset = dataset
        self.workspace = workspace
        self.resume = resume
        self.interactive = interactive
        self.dist = distributed.context()  # [ddp] a world of one outside torchrun
        self.ddp: DDPHelper | None = None
        self.epoch_start = 0  # [ddp] samples of this epoch done before a resume at another world size
        self.last_epoch_row: dict = {}

    # set-up ----------------------------------------------------------------------
    def prepare(self) -> None:
        cfg, run = self.cfg, self.folder
        # every core, also in the app: predictions there get their turn at the yield gate
        # (training.yield_gate) instead of a core kept idle for them all run long
        threads = cfg.train.num_threads or max(1, os.cpu_count() or 2)
        torch.set_num_threads(threads)
        seed_everything(cfg.train.seed)
        self._load_samples()
        self._build_model()
        self._make_optimizer()
        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        self.best, self.bad_epochs = None, 0
        self.acc = {"loss": 0.0, "correct": 0, "seen": 0}
        self.first_loss: float | None = None
        if self.resume:
            self._restore()
        else:
            self._write_config()
        if self.step == 0:   # a new run, or one restarted from its beginning: a first model at once
            self._first_model()
        self.batches.complete(self)   # the rest of the prefix cache (validation images, mirrored views), after the first model
        trainable, total = lora.count_parameters(self.model)
        run.log(f"{len(self.train_samples)} train / {len(self.val_samples)} val images, {len(self.classes)} classes; "
                f"{len(self.layers)} LoRA layers; {trainable:,} of {total:,} parameters trainable; "
                f"device {self.device}, {threads} threads; {speed_levers.describe(self.speed)}")

    def _load_samples(self) -> None:
        """Classes and the train/validation samples: the saved split on resume, else a new one."""
        cfg = self.cfg
        if self.resume:
            self._saved, split = self.folder.record(), self.folder.split()
            self.classes = self._saved.classes
            self.train_samples = [Sample(p, l) for p, l in split.train]
            self.val_samples = [Sample(p, l) for p, l in split.val]
        else:
            ds = self.dataset or load_dataset(cfg.data.source, self.workspace, fixes_by=cfg.data.fixes_by)
            ds.report.raise_if_blocking()
            self.classes = list(ds.classes)
            self.train_samples, self.val_samples = split_dataset(ds, cfg.data.val_fraction, cfg.data.split_seed)
        missing = [s.path for s in self.train_samples[:50] + self.val_samples[:50] if not os.path.isfile(s.path)]
        if missing:
            raise TrainingFailed(f"image files have gone missing (e.g. {missing[0]}); restore the data folder")

    def _build_model(self) -> None:
        """The model with its LoRA layers on the device, its speed levers and its batch source."""
        cfg = self.cfg
        # the seed's weights, whatever another thread of the app rebuilds meanwhile (backbones/seeded.py)
        with seeded_build(cfg.train.seed, restore=False):
            self.model = build_model(cfg.model, len(self.classes))
            self.layers = (self._saved.layers if self.resume else
                           lora.inject_lora(self.model, cfg.lora))
            if self.resume:
                lora.inject_lora(self.model, cfg.lora, self.layers)
        self.data_config = data_config(self.model, cfg.model.image_size)
        self.speed = speed_levers.choose(self)
        self.model.to(self.device)
        if self.speed["channels_last"]:
            self.model.to(memory_format=torch.channels_last)
        speed_levers.cpu_bf16_fixes(self)
        if self.interactive:  # the app: step aside for its predictions, already while caching
            self.gate_hooks = PREDICTIONS.install(self.model)
        self.calibrated_norms = self._calibrate_norms()
        if self.dist.enabled:  # [ddp] DistributedDataParallel over the trainable tensors
            self.ddp = DDPHelper(self)
        self.batches, why_not = make_batches(self)
        self.speed["cache_frozen_prefix"] = self.batches.cached
        if why_not:
            self.speed["cache_frozen_prefix_note"] = why_not
        speed_levers.compile_if_asked(self)
        probe.decide(self)

    def _make_optimizer(self) -> None:
        cfg = self.cfg
        bs, accum = cfg.train.batch_size, cfg.train.grad_accum
        self.batches_per_epoch = max(1, math.ceil(len(self.train_samples) / (bs * self.dist.world)))
        self.steps_per_epoch = max(1, math.ceil(self.batches_per_epoch / accum))
        self.total_steps = self.steps_per_epoch * cfg.train.epochs
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        warmup = int(cfg.train.warmup_fraction * self.total_steps)
        self.warmup_steps = warmup
        self.schedule = {"total": self.total_steps, "warmup": warmup, "knots": []}  # [ddp] see distributed
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cosine_with_warmup(self.total_steps, warmup))
        self.scaler = torch.amp.GradScaler("cuda") if self.speed["mixed_precision"] == "fp16" else None

    def _first_model(self) -> None:
        probe.first_model(self)   # the linear probe: saved as best/ for Test, LoRA starts from its head

    def _calibrate_norms(self) -> list[str]:
        # before the prefix cache, which must see the final statistics; on resume too (a
        # checkpoint's adapter then overwrites them with the saved, identical ones)
        if not norm_calibration.wanted(self.cfg.train.calibrate_norms, self.cfg.model.weights):
            return []
        started = time.time()
        with self.autocast():
            names = norm_calibration.calibrate(self.model, calibration_batches(self))
        release_free_memory()
        if names:
            self.folder.log(f"BatchNorm statistics of {len(names)} frozen norms computed from the training "
                            f"images in {time.time() - started:.1f} s (the starting weights had none)")
        return names

    # the loop ----------------------------------------------------------------
    def autocast(self):
        amp = self.speed["mixed_precision"]
        if amp == "off":
            return nullcontext()
        dtype = torch.bfloat16 if amp == "bf16" else torch.float16
        return torch.autocast(self.device.split(":")[0], dtype=dtype)

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.speed["channels_last"] else x

    def _epoch_batches(self, epoch: int, skip_batches: int):
        """This epoch's (inputs, labels), ``skip_batches`` already done (resume)."""
        bs = self.cfg.train.batch_size
        if self.ddp:  # [ddp] this rank's slice of each global batch
            order = epoch_order(len(self.train_samples), self.cfg.train.seed, epoch)
            return self.ddp.epoch_loader(order, self.epoch_start + skip_batches * bs * self.dist.world)
        return self.batches.train_epoch(epoch, self.epoch_start + skip_batches * bs)

    def run(self) -> None:
        self.prepare()
        try:
            self._train()
        except StopRequested:
            # keep what was learned: roll back to the last optimizer step (the micro-batches of
            # an unfinished accumulation are dropped, with the random numbers they used), save,
            # then report 'stopped'
            self.batch_in_epoch, self.acc, rng = self._boundary
            self._save_adapter("last", self._final_metrics())
            self._flush_and_checkpoint(rng=rng)
            raise

    def _mark_boundary(self) -> None:
        """Remember where the last optimizer step left off, for a stop between steps."""
        self._boundary = (self.batch_in_epoch, dict(self.acc), rng_state())

    def _train(self) -> None:
        cfg = self.cfg
        self._mark_boundary()
        self.last_checkpoint = time.time()
        self.rate = StepRate()   # time left from the last steps' rate, never from set-up time
        self.reporter.report_progress(min(self.epoch + 1, cfg.train.epochs), self.step, self.total_steps, None)
        self.reporter.report_status("running", f"training on {self.device}")
        while self.epoch < cfg.train.epochs:
            if self._early_stop():  # checked here too, so resuming an early-stopped run stays stopped
                self.folder.log(f"early stopping: no improvement for {cfg.train.early_stop_patience} epochs")
                break
            self._train_epoch()
            self._end_epoch()
        if self.step >= self.total_steps:
            self.reporter.report_progress(cfg.train.epochs, self.step, self.total_steps, 0.0)
        self._save_adapter("last", self._final_metrics())
        self._flush_and_checkpoint()
        best = self.best or {}
        self.folder.update_status(best_val_acc=best.get("val_acc"), best_epoch=best.get("epoch"))
        where = "the linear probe" if best.get("epoch") == 0 else f"epoch {best.get('epoch', '?')}"
        self.reporter.report_status("finished", f"best validation accuracy {best.get('val_acc', float('nan')):.1%} "
                                    f"({where})" if best.get("val_acc") is not None else
                                    "trained all its epochs; nothing was measured (no validation images: "
                                    "set a validation fraction above 0 to see how well it does)")

    def _train_epoch(self) -> None:
        """The current epoch's batches (from ``batch_in_epoch`` on), an optimizer step every ``grad_accum``."""
        cfg = self.cfg
        accum = cfg.train.grad_accum
        self.model.train()
        lora.train_mode(self.model)
        micro, tick = 0, time.time()
        step_loss, step_images = 0.0, 0
        self.optimizer.zero_grad(set_to_none=True)
        batches = iter(self._epoch_batches(self.epoch, self.batch_in_epoch))
        epoch_batches = distributed.epoch_batches(len(self.train_samples), self.epoch_start, self.dist.world,
                                                  cfg.train.batch_size)
        while True:
            # before the next batch is even decoded: stop/pause act at once ([ddp]: at the next step)
            self.ddp.controls(act=True) if self.ddp else self.reporter.check_controls()
            try:
                x, y = next(batches)
            except StopIteration:
                break
            loss_sum, images = self._micro_batch(x, y.to(self.device), accum)
            step_loss, step_images = step_loss + loss_sum, step_images + images
            micro += 1
            self.batch_in_epoch += 1
            if micro % accum and self.batch_in_epoch < epoch_batches:
                continue
            self._end_step(step_loss, step_images, tick)
            tick, step_loss, step_images = time.time(), 0.0, 0

    def _micro_batch(self, x, y, accum: int) -> tuple[float, int]:
        """Forward and backward of one batch; (its loss sum, its images) for the step's row."""
        if self.ddp:  # [ddp] forward/backward on this rank's slice; its sums are reduced at the step
            with norm_calibration.lone_sample(self.model, len(y)):
                self.ddp.micro_batch(self._to_device(x), y, accum)
            return 0.0, 0
        with self.autocast(), norm_calibration.lone_sample(self.model, len(y)):
            logits = self.batches.forward(self.model, x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.train.label_smoothing)
        value = loss.item()
        self._check_loss(value)
        (self.scaler.scale(loss / accum) if self.scaler else loss / accum).backward()
        self.acc["loss"] += value * len(y)
        self.acc["correct"] += int((logits.argmax(1) == y).sum())
        self.acc["seen"] += len(y)
        return value * len(y), len(y)

    def _end_step(self, step_loss: float, step_images: int, tick: float) -> None:
        """The optimizer step, its metrics row and progress, and a checkpoint when one is due."""
        cfg = self.cfg
        if self.ddp:  # [ddp] one all-reduce: the step's loss/accuracy sums, checkpoint and stop flags
            step_loss, step_images = self.ddp.end_step(cfg.train.checkpoint_minutes * 60)
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
        self._optimizer_step()
        now = time.time()
        row = {"kind": "step", "epoch": self.epoch + 1, "step": self.step, "loss": step_loss / step_images,
               "lr": lr, "images_per_s": step_images / max(now - tick, 1e-9), "time": now}
        self._emit(row)
        self._mark_boundary()
        self.rate.mark(now - self.reporter.paused_seconds, self.step)
        self.reporter.report_progress(self.epoch + 1, self.step, self.total_steps,
                                      self.rate.eta(self.total_steps - self.step))
        if (self.ddp.checkpoint_due if self.ddp else  # [ddp] rank 0's clock decides for all
                now - self.last_checkpoint > cfg.train.checkpoint_minutes * 60):
            self._flush_and_checkpoint()

    def _check_loss(self, value: float) -> None:
        step = self.step + 1
        if not math.isfinite(value):
            raise TrainingFailed(_diverged_message(value, step, updated=self.step > 0))
        if self.first_loss is None:
            self.first_loss = value
        elif value > max(DIVERGED_MIN_LOSS, DIVERGED_FACTOR * self.first_loss):
            raise TrainingFailed(_diverged_message(value, step, updated=self.step > 0))

    def _emit(self, row: dict) -> None:
        """A metrics row goes to viewers and to metrics.csv at once (fsynced at the next checkpoint)."""
        if row["kind"] == "epoch":
            self.last_epoch_row = row
        self.reporter.report_metrics(row)
        self.folder.append_metrics([row], sync=False)

    def _optimizer_step(self) -> None:
        if self.cfg.train.grad_clip > 0:
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                           self.cfg.train.grad_clip)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        self.model.eval()
        if self.ddp:  # [ddp] each rank its share (the image path: no prefix cache under torchrun)
            val = _loader(self.ddp.val_subset(self.batches.val_ds), self.cfg.train.batch_size,
                          self.device.startswith("cuda"), self.speed["dataloader_workers"])
        else:
            val = self.batches.val()
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y in val:
            self.ddp.controls(act=False) if self.ddp else self.reporter.check_controls()
            y = y.to(self.device)
            with self.autocast():
                logits = self.batches.forward(self.model, x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        if self.ddp:  # [ddp] the sums over all ranks
            loss_sum, correct, seen = self.ddp.reduce_eval(loss_sum, correct, seen)
        return (loss_sum / seen, correct / seen) if seen else (float("nan"), float("nan"))

    def _end_epoch(self) -> None:
        val_loss, val_acc = self.evaluate() if self.val_samples else (None, None)
        seen = max(1, self.acc["seen"])
        row = {"kind": "epoch", "epoch": self.epoch + 1, "step": self.step, "train_loss": self.acc["loss"] / seen,
               "train_acc": self.acc["correct"] / seen, "val_loss": val_loss, "val_acc": val_acc, "time": time.time()}
        self._emit(row)
        # without validation images there is nothing to compare: the latest epoch is the best one
        # the first model (the linear probe, epoch 0) gives way to LoRA at equal accuracy: it stays
        # best only when LoRA does worse on the validation images
        improved = (self.best is None or val_acc is None or self.best.get("val_acc") is None
                    or (val_acc, -val_loss) > (self.best["val_acc"], -self.best["val_loss"])
                    or (self.best.get("epoch") == 0 and val_acc >= self.best["val_acc"]))
        if improved:
            self.best = {"epoch": self.epoch + 1, "val_acc": val_acc, "val_loss": val_loss}
            self.bad_epochs = 0
            self._save_adapter("best", dict(self.best, train_loss=row["train_loss"]))
            self.folder.update_status(best_val_acc=val_acc, best_epoch=self.epoch + 1)
        else:
            self.bad_epochs += 1
        acc_txt = f"{val_acc:.1%}" if val_acc is not None else "n/a"
        self.folder.log(f"epoch {self.epoch + 1}/{self.cfg.train.epochs}: train loss {row['train_loss']:.4f}, "
                         f"val loss {val_loss if val_loss is None else round(val_loss, 4)}, val acc {acc_txt}")
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_start = 0
        self.acc = {"loss": 0.0, "correct": 0, "seen": 0}
        self._mark_boundary()
        self._flush_and_checkpoint()

    def _early_stop(self) -> bool:
        p = self.cfg.train.early_stop_patience
        return bool(p) and bool(self.val_samples) and self.bad_epochs >= p and self.epoch < self.cfg.train.epochs

    def _final_metrics(self) -> dict:
        last = self.last_epoch_row
        return {k: last.get(k) for k in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")}
