"""The per-trainer DDP helper: DistributedDataParallel over the trainable tensors, sharded
batches, and one all-reduce per step (loss, accuracy, checkpoint and stop flags).
"""
from __future__ import annotations

import torch

from ..errors import StopRequested
from .distributed import (
    IGNORE,
    _collective,
    all_gather_object,
    all_reduce_sum,
    rank_seed,
    shard,
)
from .seeding import seed_everything


class DDPHelper:
    def __init__(self, trainer):
        from torch.nn.parallel import DistributedDataParallel as DDP
        self.t = trainer
        self.ctx = trainer.dist
        model, device = trainer.model, trainer.device
        # BatchNorms that train (train_norm) keep batch statistics per rank, as plain DDP does; their
        # running statistics are broadcast from rank 0 each forward so every rank evaluates alike.
        # Frozen BatchNorms stay in eval mode (lora.train_mode): nothing to broadcast.
        trains_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and
                        any(p.requires_grad for p in m.parameters()) for m in model.modules())
        ids = [torch.device(device).index] if device.startswith("cuda") else None
        # every trainable tensor (LoRA, head) takes part in every forward: no find_unused_parameters.
        # Gradient accumulation all-reduces every micro-batch (no no_sync): LoRA gradients are small
        # and the sum of averages is the average of sums.
        import inspect
        sync = ({"forward_sync_buffers": trains_bn} if "forward_sync_buffers" in inspect.signature(DDP).parameters
                else {"broadcast_buffers": trains_bn})  # the newer name, where torch has it
        self.net = _collective(DDP, model, device_ids=ids, find_unused_parameters=False, **sync)
        self.n_global = 0
        self.loss_sum, self.correct, self.images = 0.0, 0, 0
        self.stop_wanted = self.stop_agreed = self.checkpoint_due = False
        if self.ctx.rank:  # its own augmentation / dropout stream (a resume restores the saved one)
            seed_everything(rank_seed(trainer.cfg.train.seed, self.ctx.rank))

    # data -----------------------------------------------------------------------
    def epoch_loader(self, order: list[int], skip_samples: int):
        t = self.t
        plan = shard(order[skip_samples:], self.ctx.rank, self.ctx.world, t.cfg.train.batch_size)
        # its own generator: iterating must not draw from the global RNG (see training_loop._loader)
        loader = torch.utils.data.DataLoader(t.batches.train_ds, batch_sampler=[b for b, _, _ in plan],
                                             num_workers=t.speed["dataloader_workers"],
                                             pin_memory=t.device.startswith("cuda"),
                                             generator=torch.Generator().manual_seed(0))
        for (x, y), (_, real, n_global) in zip(loader, plan):
            if real == 0:
                y = torch.full_like(y, IGNORE)
            self.n_global = n_global
            yield x, y

    def val_subset(self, dataset):
        return torch.utils.data.Subset(dataset, range(self.ctx.rank, len(dataset), self.ctx.world))

    # one micro-batch / one step ---------------------------------------------------
    def controls(self, act: bool) -> None:
        """A stop asked of any process is remembered, reduced at the next step, and then (``act``: in
        the training loop, at the same micro-batch on every rank) raised by all ranks together."""
        if act and self.stop_agreed:
            raise StopRequested
        try:
            self.t.reporter.check_controls()
        except StopRequested:
            self.stop_wanted = True

    def micro_batch(self, x, y, accum: int) -> None:
        t = self.t
        with t.autocast():
            logits = self.net(x)
            loss_sum = torch.nn.functional.cross_entropy(logits.float(), y, reduction="sum", ignore_index=IGNORE,
                                                         label_smoothing=t.cfg.train.label_smoothing)
        loss = loss_sum * (self.ctx.world / (self.n_global * accum))
        (t.scaler.scale(loss) if t.scaler else loss).backward()
        self.loss_sum += loss_sum.item()
        self.correct += int((logits.argmax(1) == y).sum())
        self.images += int((y != IGNORE).sum())

    def end_step(self, checkpoint_interval_s: float) -> tuple[float, int]:
        """Reduce this step's sums over the ranks; returns the global (loss sum, images)."""
        import time
        t = self.t
        due = self.ctx.is_main and time.time() - t.last_checkpoint > checkpoint_interval_s
        loss_sum, correct, images, due, stop = all_reduce_sum(
            [self.loss_sum, self.correct, self.images, float(due), float(self.stop_wanted)], t.device)
        self.loss_sum, self.correct, self.images = 0.0, 0, 0
        images, correct = int(round(images)), int(round(correct))
        t.acc["loss"] += loss_sum
        t.acc["correct"] += correct
        t.acc["seen"] += images
        t._check_loss(loss_sum / max(1, images))
        self.checkpoint_due, self.stop_agreed = due > 0, stop > 0
        return loss_sum, images

    def reduce_eval(self, loss_sum: float, correct: int, seen: int) -> tuple[float, int, int]:
        loss_sum, correct, seen = all_reduce_sum([loss_sum, correct, seen], self.t.device)
        return loss_sum, int(round(correct)), int(round(seen))

    def checkpoint_fields(self, rng: dict) -> dict:
        return {"rng_ranks": all_gather_object(rng)}
