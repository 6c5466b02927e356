"""Where training batches come from: decoded images, or cached frozen-prefix outputs.

Both sources give the same interface to the loop: ``train_epoch(epoch, skip)``
yields (inputs, labels) in the epoch's seeded order (``skip`` samples already
done, for resume), ``val()`` the validation batches, ``forward(model, x)`` the
logits. ``make_batches`` picks the cached source when the frozen prefix can be
computed once: a deterministic training transform ('none' or 'flip'), a
boundary that reproduces the full model exactly, and a cache that fits its
memory bound. Otherwise it says why, and training decodes images as usual.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from ..data.decoded_cache import DecodedCache, cache_max_side
from ..data.transforms import ImageDataset, build_transform
from ..malloc_tuning import release as release_free_memory
from . import norm_calibration, prefix_cache, probe

CACHEABLE_AUGMENTATIONS = ("none", "flip")


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The epoch's shuffled order: its own generator, so a resume (or another rank) gets the same."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()


def _loader(dataset, batch_size: int, pin: bool, workers: int = 0):
    # A DataLoader draws its base seed from the global torch RNG each time it is
    # iterated unless it has its own generator. That draw would shift the random
    # augmentations of a resumed run against an uninterrupted one, so give it one.
    # With workers, each one seeds from it too: runs repeat, but a resume that starts
    # mid-epoch hands samples to other workers, so its augmentations differ.
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                       pin_memory=pin, generator=torch.Generator().manual_seed(0))


def decoded_cache(trainer, max_bytes: int | None = None) -> DecodedCache | None:
    """The decoder every path shares: images pre-shrunk the same way, so the prefix cache
    sees exactly the pixels the uncached path would (``max_bytes=0``: shrink, keep nothing)."""
    cfg = trainer.cfg
    if not cfg.data.cache_mb:
        return None
    return DecodedCache(cfg.data.cache_mb * 2**20 if max_bytes is None else max_bytes,
                        cache_max_side(trainer.data_config))


class ImageBatches:
    """Decode (through the decoded-image cache), transform, feed the whole model."""

    cached = False

    def __init__(self, trainer):
        cfg, dc = trainer.cfg, trainer.data_config
        cache = decoded_cache(trainer)
        self.train_ds = ImageDataset(trainer.train_samples, build_transform(dc, cfg.data.augmentation, True), cache)
        self.val_ds = ImageDataset(trainer.val_samples, build_transform(dc, "none", False), cache)
        self.batch_size, self.seed = cfg.train.batch_size, cfg.train.seed
        self.pin = trainer.device.startswith("cuda")
        self.workers = trainer.speed["dataloader_workers"]

    def complete(self, trainer) -> None:
        """Nothing is computed ahead (see ``CachedBatches.complete``)."""
        self.to_device = trainer._to_device

    def train_epoch(self, epoch: int, skip_samples: int):
        order = epoch_order(len(self.train_ds), self.seed, epoch)[skip_samples:]
        for x, y in _loader(torch.utils.data.Subset(self.train_ds, order), self.batch_size, self.pin, self.workers):
            yield x, y

    def val(self):
        yield from _loader(self.val_ds, self.batch_size, self.pin, self.workers)

    def forward(self, model, x):
        return model(self.to_device(x))


class CachedBatches:
    """Inputs of the first trainable block, computed once per image (and per flip view)."""

    cached = True

    def __init__(self, trainer, plan: prefix_cache.PrefixPlan, train_cache: torch.Tensor, val_cache: torch.Tensor,
                 decoded: DecodedCache | None = None):
        self.plan, self.train_cache, self.val_cache = plan, train_cache, val_cache   # train: (views, N, ...)
        self.decoded = decoded   # the training images as the plain view's pass decoded them, until complete()
        self.train_labels = torch.tensor([s.label for s in trainer.train_samples])
        self.val_labels = torch.tensor([s.label for s in trainer.val_samples])
        self.batch_size, self.seed, self.device = trainer.cfg.train.batch_size, trainer.cfg.train.seed, trainer.device
        size = trainer.data_config["input_size"]
        self.dummy_shape = tuple(size)
        self.pending_views = list(range(1, train_cache.shape[0]))
        self.pending_val = bool(trainer.val_samples)
        self.train_features: torch.Tensor | None = None   # the plain view's pooled features, if computed

    def complete_val(self, trainer) -> None:
        """The validation images' cached inputs, which ``make_batches`` left for after the first model."""
        if not self.pending_val:
            return
        started = time.time()
        _compute(trainer, self.plan, trainer.val_samples, self.val_cache.unsqueeze(0), 0)
        self.pending_val = False
        trainer.folder.log(f"frozen prefix of the {len(self.val_labels)} validation images cached in "
                           f"{time.time() - started:.1f} s")

    def complete(self, trainer) -> None:
        """What ``make_batches`` left for later (the validation images, the mirrored views), before the first step."""
        self.complete_val(trainer)
        if not self.pending_views:
            return
        started = time.time()
        for view in self.pending_views:
            _compute(trainer, self.plan, trainer.train_samples, self.train_cache, view, self.decoded)
        self.pending_views, self.decoded = [], None
        release_free_memory()
        trainer.folder.log(f"mirrored views of the {self.train_cache.shape[1]} training images cached in "
                           f"{time.time() - started:.1f} s")

    def train_epoch(self, epoch: int, skip_samples: int):
        n = len(self.train_labels)
        order = torch.tensor(epoch_order(n, self.seed, epoch), dtype=torch.long)
        views = torch.randint(0, self.train_cache.shape[0], (n,), generator=torch.Generator().manual_seed(
            self.seed * 7_919 + epoch))  # a flip view per image per epoch, reproducible on resume
        for start in range(skip_samples, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            yield self.train_cache[views[idx], idx], self.train_labels[idx]

    def val(self):
        for start in range(0, len(self.val_labels), self.batch_size):
            yield self.val_cache[start:start + self.batch_size], self.val_labels[start:start + self.batch_size]

    def forward(self, model, x):
        x = x.to(self.device, non_blocking=True)
        with self.plan.feeding(model) as feed:
            feed(x)
            # the frozen front is stubbed out; this input only carries the batch size
            return model(self.plan.dummy_input(x.shape[0], self.dummy_shape, self.device))


def compute_batch_size(device: str) -> int:
    # small on CPU, where the batch's activations linger in the heap (see malloc_tuning)
    # and throughput is the same; large on a GPU, which small batches leave idle
    return 32 if device == "cpu" else 64


def _plain_dataset(trainer, samples, decoded: DecodedCache | None = None) -> ImageDataset:
    """Images as validation sees them (no augmentation), shrunk as training's are; kept in ``decoded``
    when given (for a later pass over the same images), else nothing is kept."""
    return ImageDataset(samples, build_transform(trainer.data_config, "none", False),
                        decoded if decoded is not None else decoded_cache(trainer, 0))


def _plain_batches(trainer, samples, batch_size: int, decoded: DecodedCache | None = None):
    """The set-up passes' batches, on the device; stop and pause act between them."""
    for x, _ in _loader(_plain_dataset(trainer, samples, decoded), batch_size, False,
                        trainer.speed["dataloader_workers"]):
        trainer.reporter.check_controls()
        yield trainer._to_device(x)


def calibration_batches(trainer):
    """The training images the BatchNorm statistics are computed from (``norm_calibration``)."""
    return _plain_batches(trainer, trainer.train_samples, norm_calibration.BATCH_SIZE)


def _compute(trainer, plan, samples, out: torch.Tensor, view: int, decoded: DecodedCache | None = None,
             head: str | None = None) -> torch.Tensor | None:
    """``out[view]`` for every sample (view 1: the mirrored image), filled in place batch by batch,
    so the peak is the cache itself plus one batch's activations. With ``head`` (the classifier's
    name) the pass goes on to it, and the pooled features of every sample are returned too."""
    trainer.model.eval()
    start, features = 0, []
    for x in _plain_batches(trainer, samples, compute_batch_size(trainer.device), decoded):
        x = x.flip(-1) if view else x
        # no_grad: nothing of the frozen front is kept for autograd
        with torch.no_grad(), trainer.autocast():
            if head is None:
                out[view, start:start + len(x)] = plan.capture(trainer.model, x)
            else:
                out[view, start:start + len(x)], pooled = plan.capture_with_features(trainer.model, x, head)
                features.append(pooled.cpu())
        start += len(x)
    return torch.cat(features) if head is not None and features else None


def _allocate(shape: tuple, dtype: torch.dtype, spill: Path | None) -> torch.Tensor:
    """The cache's tensor, in memory or in ``spill`` (a file on disk, see ``_on_disk``)."""
    return _on_disk(spill, shape, dtype) if spill else torch.empty(shape, dtype=dtype)


def make_batches(trainer):
    """(batch source, why not cached or '')."""
    cfg = trainer.cfg
    lever = cfg.train.cache_frozen_prefix
    if lever == "off":
        return ImageBatches(trainer), "off in the config"
    if trainer.dist.enabled:
        return ImageBatches(trainer), "not used under torchrun (each rank decodes its own images)"
    if cfg.data.augmentation not in CACHEABLE_AUGMENTATIONS:
        return ImageBatches(trainer), f"augmentation '{cfg.data.augmentation}' changes images every epoch"
    few = _plain_dataset(trainer, (trainer.train_samples + trainer.val_samples)[:4])
    example = trainer._to_device(torch.stack([few[i][0] for i in range(len(few))]))
    plan = prefix_cache.plan(trainer.model, example, trainer.autocast)
    if plan.reason:
        return ImageBatches(trainer), plan.reason
    views = 2 if cfg.data.augmentation == "flip" else 1
    dtype = plan.sample_dtype
    need = plan.bytes_per_sample(dtype) * (len(trainer.train_samples) * views + len(trainer.val_samples))
    where, why_not = cache_place(need, cfg.data.cache_mb * 2**20, trainer.folder.path)
    if where is None:
        return ImageBatches(trainer), why_not
    if why_not:   # held on disk: say so, and why
        trainer.folder.log(why_not)
    started = time.time()
    spill = (lambda part: trainer.folder.path / f".prefix-cache-{part}.bin") if where == "disk" else (lambda part: None)
    train_cache = _allocate((views, len(trainer.train_samples), *plan.sample_shape), dtype, spill("train"))
    val_cache = (_allocate((1, len(trainer.val_samples), *plan.sample_shape), dtype, spill("val"))
                 if trainer.val_samples else torch.empty((1, 0, *plan.sample_shape), dtype=dtype))
    # the training images' plain view first: the first model (training.probe) needs only it, and is
    # ready for the Test tab before the validation images and the mirrored views are computed
    # (CachedBatches.complete_val, .complete)
    # the mirrored views' pass reads the same files again: keep their decoded pixels until then
    # (bounded by cache_mb like the decoded-image cache of uncached training; freed by complete())
    decoded = decoded_cache(trainer) if views == 2 else None
    # a new run's first model (training.probe) needs the training images' pooled features: this
    # pass runs on to the classifier for them (a second pass over the cache cost ~0.1 s more)
    head = probe.classifier_to_probe(trainer) if not trainer.resume else None
    train_features = _compute(trainer, plan, trainer.train_samples, train_cache, 0, decoded, head)
    release_free_memory()
    trainer.speed["prefix_cache_storage"] = where
    later = [what for what, due in (("the validation images", bool(trainer.val_samples)),
                                    ("the mirrored views", views == 2)) if due]
    trainer.folder.log(f"frozen prefix cached at {plan.boundary}: {train_cache.shape[1]} train images in "
                       f"{time.time() - started:.1f} s ({(train_cache.nbytes + val_cache.nbytes) / 2**20:.0f} MB "
                       f"with the rest{', in a file on disk' if where == 'disk' else ''}"
                       f"{'; ' + ' and '.join(later) + ' follow' if later else ''})")
    cached = CachedBatches(trainer, plan, train_cache, val_cache[0], decoded)
    cached.train_features = train_features
    return cached, ""


# the prefix cache may take this share of the memory the OS says is available; the rest is left
# to the model's activations, the decoded-image cache and everything else on the machine
RAM_SHARE = 0.5


def available_memory() -> int | None:
    """Bytes of memory the OS can give without swapping (Linux MemAvailable; None elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cache_place(need: int, budget: int, folder: Path, available: int | None = -1) -> tuple[str | None, str]:
    """Where a prefix cache of ``need`` bytes goes, estimated before any of it is computed:
    ('memory', ''), ('disk', why) when it is over ``budget`` (cache_mb) or over half the memory
    available, or (None, why) when the disk has no room either: then images are decoded as usual.
    Never an out-of-memory crash halfway through the cache."""
    available = available_memory() if available == -1 else available
    mb = need / 2**20
    limit = min(budget, int(available * RAM_SHARE)) if available is not None else budget
    if need <= limit:
        return "memory", ""
    over = (f"over cache_mb={budget // 2**20}" if need > budget
            else f"over half the {available / 2**30:.1f} GB of memory available")
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = 0
    if need * 1.1 + 2**28 <= free:   # room for it, and a little for the run's own files
        return "disk", (f"the frozen-prefix cache needs {mb:.0f} MB, {over}: it is kept in a file in the run "
                        "folder instead (read back through the OS's file cache) and deleted at the end")
    return None, f"the cache would need {mb:.0f} MB, {over}, and the disk has {free / 2**20:.0f} MB free"


def _on_disk(path: Path, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """A tensor whose storage is a memory-mapped file: the OS pages it in and out, so a cache
    larger than memory never runs the machine out of it. The file is removed at once (Linux
    keeps it while mapped) so that nothing is left behind, even after a kill."""
    n = 1
    for d in shape:
        n *= d
    with open(path, "wb") as f:
        f.truncate(n * torch.tensor([], dtype=dtype).element_size())
    tensor = torch.from_file(str(path), shared=True, size=n, dtype=dtype).view(shape)
    try:
        path.unlink()
    except OSError:   # Windows keeps an open file: left for the next start-up's clean-up
        pass
    return tensor
