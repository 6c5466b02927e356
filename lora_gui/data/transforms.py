"""From decoded pixels to tensors: timm's transforms and the DataLoader's dataset.

The one torch-bound module of the data layer; imported only where training, evaluation or
prediction happen, never by validation or the command line's quick commands.
"""
from __future__ import annotations

from torch.utils.data import Dataset as TorchDataset

from .decoded_cache import DecodedCache
from .images import load_rgb


def build_transform(data_config: dict, augmentation: str, training: bool):
    """timm's transform for the model's own data config (size, mean, std, crop).

    ``none`` gives the eval transform even for training; ``flip`` mirrors the
    eval-transformed image half the time (deterministic up to the mirror, so
    the frozen part of a model can be computed once per view); ``light`` adds
    mild random crops and flips, gentle on small datasets; ``strong`` adds
    RandAugment and random erasing, timm's ImageNet recipe.
    """
    from timm.data import create_transform
    if augmentation not in ("none", "flip", "light", "strong"):
        raise ValueError(f"augmentation must be none, flip, light or strong, got {augmentation!r}")
    common = {k: data_config[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
              if data_config.get(k) is not None}
    if not training or augmentation == "none":
        return create_transform(is_training=False, **common)
    if augmentation == "flip":
        return _TensorHFlip(create_transform(is_training=False, **common))
    common.pop("crop_pct", None)
    common.pop("crop_mode", None)  # eval-only options; training crops randomly
    if augmentation == "light":
        return create_transform(is_training=True, scale=(0.6, 1.0), hflip=0.5,
                                color_jitter=None, auto_augment=None, re_prob=0.0, **common)
    return create_transform(is_training=True, auto_augment="rand-m9-mstd0.5", color_jitter=0.4,
                            re_prob=0.25, hflip=0.5, **common)


class _TensorHFlip:
    """The eval transform, then a horizontal mirror with probability 1/2 (flip after
    crop, so both views are exactly what the prefix cache stores)."""

    def __init__(self, base):
        self.base = base

    def __call__(self, im):
        import torch
        x = self.base(im)
        return x.flip(-1) if torch.rand(()) < 0.5 else x

    def __repr__(self) -> str:
        return f"TensorHFlip({self.base!r})"


class ImageDataset(TorchDataset):
    """(tensor, label) pairs for a DataLoader; decodes through the cache when given."""

    def __init__(self, samples: list, transform, cache: DecodedCache | None = None):
        self.samples = list(samples)
        self.transform = transform
        self.cache = cache

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        s = self.samples[i]
        im = self.cache.get(s.path) if self.cache is not None else load_rgb(s.path)
        return (self.transform(im) if self.transform is not None else im), s.label
