"""Load a trained adapter (or an export) for inference, and classify images with it."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from torch import nn

from ..data.decoded_cache import cache_max_side
from ..data.images import checked_image, load_rgb, shrink, to_rgb
from ..data.transforms import build_transform
from ..errors import AdapterError
from ..lora.inject import merge_lora
from ..store.adapter_check import build_checked
from ..store.adapter_file import AdapterMeta, read_adapter
from ..store.calibration_file import Calibration, read_calibration
from ..store.exports import locate
from ..store.merged_format import load_merged
from ..store.peft_format import read_peft_export


@dataclass
class LoadedAdapter:
    model: nn.Module          # eval mode, LoRA merged into the weights unless merge=False
    classes: list[str]
    transform: Callable       # PIL image -> normalised tensor, the validation transform
    meta: AdapterMeta
    layout: str               # "native", "peft" or "merged": what was read
    device: torch.device
    calibration: Calibration | None = None   # calibration.json beside the adapter: temperature, "not sure"
    source_file: Path | None = None          # the file read (calibration.json is saved beside it)


def load_adapter(path: str | os.PathLike, device: str | torch.device = "cpu", merge: bool = True) -> LoadedAdapter:
    """A ready-to-use model, its class names and its transform, from an adapter or an export.

    ``merge`` folds LoRA into the weights once: inference then costs what the base model costs.
    """
    layout, file = locate(path)
    if layout == "merged":
        model, meta = load_merged(file)
    else:
        tensors, meta = read_adapter(file) if layout == "native" else read_peft_export(file)
        model = build_checked(tensors, meta)
        if merge:
            merge_lora(model)
    try:
        transform = build_transform(meta.data_config, "none", training=False)
    except (KeyError, TypeError, ValueError) as exc:
        raise AdapterError(f"adapter metadata: the data config is invalid ({exc})") from None
    dev = torch.device(device)
    return LoadedAdapter(model.to(dev).eval(), list(meta.classes), transform, meta, layout, dev,
                         read_calibration(file), Path(file))


def predict(loaded: LoadedAdapter, images: list, topk: int = 5,
            batch_size: int = 16) -> list[list[tuple[str, float]]]:
    """Top-k (class, probability) per image, most likely first. Images are PIL images, arrays
    (HxW or HxWxC, as a webcam gives them) or paths; each is refused (DataError) above
    ``data.MAX_IMAGE_PIXELS`` before its pixels are copied or converted."""
    if not isinstance(topk, int) or topk < 1:
        raise ValueError(f"topk must be a whole number >= 1, got {topk!r}")
    k = min(topk, len(loaded.classes))
    # decoded and pre-shrunk exactly as training and evaluation decode, so the same file
    # gets the same probabilities here as in the validation metrics
    max_side = cache_max_side(loaded.meta.data_config) if loaded.meta is not None else None
    results = []
    for start in range(0, len(images), batch_size):
        chunk = [load_rgb(im, max_side) if isinstance(im, (str, os.PathLike))
                 else shrink(to_rgb(_as_pil(checked_image(im))), max_side)
                 for im in images[start:start + batch_size]]
        batch = torch.stack([loaded.transform(im) for im in chunk]).to(loaded.device)
        with torch.inference_mode():
            logits = loaded.model(batch).float()
        if loaded.calibration is not None:   # temperature scaling: same ranking, honest probabilities
            logits = logits / loaded.calibration.temperature
        probs = logits.softmax(dim=-1)
        values, indices = probs.topk(k, dim=-1)
        results += [[(loaded.classes[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist())]
                    for vs, ix in zip(values, indices)]
    return results


def _as_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    import numpy as np
    a = np.asarray(image)
    if a.dtype.kind == "f":  # some webcam paths hand out floats in [0, 1]
        a = np.clip(a * 255.0, 0, 255).round()
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(a.astype(np.uint8)))
