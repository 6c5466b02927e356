""""Where does it look?": class activation heatmaps from the maintained ``grad-cam`` package
over the input image, for the predicted class or any class picked, for CNNs and ViT-style models.

The method is LayerCAM, the package's Grad-CAM variant that weighs each location by its own
positive gradient: on a synthetic "bright square in corner X" model (tests/test_demo_mode.py)
it put the most heat in the square's quadrant for every corner, where plain Grad-CAM on the
same layer did not (measured: quadrant share 0.52-0.74 vs 0.15-0.96).

The CAM is computed on the model's own eval view (resize + centre crop) and mapped back
onto the whole input, so the heatmap has the input's size and its hot region sits where
the object is. A private copy of the model carries the hooks: Grad-CAM's forward hooks
would otherwise fire (and collect activations) on other sessions' predictions.
"""
from __future__ import annotations

import copy
import math
import os
import threading
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data.decoded_cache import cache_max_side
from ..data.images import load_rgb, shrink, to_rgb
from ..errors import ModelError
from .predict import LoadedAdapter

MIN_CAM_SIDE = 4
_LOCK = threading.Lock()   # one CAM at a time per process: the copy's hooks are shared state


@dataclass
class Heatmap:
    overlay: Image.Image    # the input with the heatmap blended in, the input's size
    cam: np.ndarray         # H x W float32 in [0, 1], the input's size
    target: str             # the class explained
    probability: float      # its probability for this image (calibrated if calibrated)


def _token_reshape(grid: tuple[int, int], prefix: int):
    """ViT-style [B, tokens, C] -> [B, C, h, w], dropping the class/register tokens."""
    def reshape(t: torch.Tensor) -> torch.Tensor:
        b, _, c = t.shape
        return t[:, prefix:, :].reshape(b, grid[0], grid[1], c).permute(0, 3, 1, 2)
    return reshape


def _find_target(model: nn.Module, input_size) -> tuple[list[nn.Module], object]:
    """(target layers, reshape_transform): the last block of a token model, else the last
    module whose output is still a spatial NCHW map (before global pooling)."""
    blocks = getattr(model, "blocks", None)
    patch = getattr(model, "patch_embed", None)
    if isinstance(blocks, nn.Sequential) and len(blocks) and patch is not None and hasattr(patch, "grid_size"):
        last = blocks[-1]
        layer = getattr(last, "norm1", last)
        return [layer], _token_reshape(tuple(patch.grid_size), int(getattr(model, "num_prefix_tokens", 1)))
    found: list[tuple[nn.Module, int]] = []

    def hook(module, _inp, out):
        if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] > 1 and out.shape[-2] > 1:
            found.append((module, min(out.shape[-2:])))
    handles = [m.register_forward_hook(hook) for name, m in model.named_modules() if name]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_size))
    finally:
        for h in handles:
            h.remove()
    if not found:
        raise ModelError(f"{type(model).__name__}: no spatial feature map found to explain")
    # the last map before pooling is the most class-specific, but at low resolutions it is 2x2:
    # then the last one that still has MIN_CAM_SIDE cells a side says more about *where*
    fine = [m for m, side in found if side >= MIN_CAM_SIDE]
    return [fine[-1] if fine else found[-1][0]], None


def _cam_model(loaded: LoadedAdapter):
    """The private copy of the model with its Grad-CAM, made once per loaded model."""
    cam = loaded.__dict__.get("_grad_cam")
    if cam is None:
        from pytorch_grad_cam import LayerCAM
        model = copy.deepcopy(loaded.model).eval()
        for p in model.parameters():
            p.requires_grad_(False)   # gradients are wanted w.r.t. activations only
        layers, reshape = _find_target(model, loaded.meta.data_config["input_size"])
        cam = LayerCAM(model=model, target_layers=layers, reshape_transform=reshape)
        loaded.__dict__["_grad_cam"] = cam
    return cam


def _to_input_geometry(cam: np.ndarray, size: tuple[int, int], data_config: dict) -> np.ndarray:
    """Place the CAM of timm's eval crop back onto an image of ``size`` (w, h); outside the crop: 0."""
    w, h = size
    side = int(data_config["input_size"][-1])
    heat = Image.fromarray(cam.astype(np.float32), mode="F")
    if data_config.get("crop_mode") == "squash":
        return np.asarray(heat.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
    scale_size = math.floor(side / (data_config.get("crop_pct") or 1.0))
    s = scale_size / min(w, h)     # timm resizes the shorter side to scale_size, then crops the centre
    rw, rh = max(side, round(w * s)), max(side, round(h * s))
    canvas = Image.new("F", (rw, rh), 0.0)
    canvas.paste(heat.resize((side, side), Image.Resampling.BILINEAR),
                 (int(round((rw - side) / 2.0)), int(round((rh - side) / 2.0))))
    return np.asarray(canvas.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


def explain(loaded: LoadedAdapter, image, target: str | None = None, alpha: float = 0.45) -> Heatmap:
    """Grad-CAM of ``image`` (PIL, numpy HxWx3 or a path) for class ``target`` (default: the top class)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image.astype(np.uint8))
    original = to_rgb(image) if isinstance(image, Image.Image) else load_rgb(image)
    im = shrink(original, cache_max_side(loaded.meta.data_config))   # what predict sees
    if target is not None and target not in loaded.classes:
        raise ModelError(f"{target!r} is not one of the model's classes ({', '.join(loaded.classes[:10])})")
    # the copy's weights are frozen: the input must need a gradient for the activations to get one
    x = loaded.transform(im).unsqueeze(0).requires_grad_(True)
    with _LOCK:
        cam = _cam_model(loaded)
        with torch.inference_mode(False), torch.enable_grad():
            logits = cam.model(x.detach()).float().detach()
            t = loaded.calibration.temperature if loaded.calibration is not None else 1.0
            probs = (logits / t).softmax(dim=-1)[0]
            index = int(probs.argmax()) if target is None else loaded.classes.index(target)
            grayscale = cam(input_tensor=x, targets=[ClassifierOutputTarget(index)])[0]
    heat = np.clip(np.nan_to_num(_to_input_geometry(grayscale, original.size, loaded.meta.data_config)), 0.0, 1.0)
    rgb = np.asarray(original, dtype=np.float32) / 255.0
    from pytorch_grad_cam.utils.image import show_cam_on_image
    overlay = show_cam_on_image(rgb, heat, use_rgb=True, image_weight=1.0 - alpha)
    return Heatmap(Image.fromarray(overlay), heat, loaded.classes[index], float(probs[index]))


def heatmaps_for(paths: list[str | os.PathLike], loaded: LoadedAdapter, targets: list[str | None] | None = None,
                 max_side: int | None = 384) -> list[tuple[Image.Image, str]]:
    """(overlay, caption) per image, for a gallery (e.g. the misclassified validation images):
    ``targets[i]`` is the class to explain for ``paths[i]`` (None: the predicted one). Images
    that cannot be read are left out; overlays are shrunk to ``max_side`` for thumbnails."""
    out = []
    for i, path in enumerate(paths):
        target = targets[i] if targets is not None else None
        try:
            hm = explain(loaded, str(path), target)
        except Exception:   # an unreadable or odd image is left out of a gallery, never fails it
            continue
        overlay = hm.overlay
        if max_side:
            overlay.thumbnail((max_side, max_side))
        out.append((overlay, f"{os.path.basename(str(path))}: looks at {hm.target} ({hm.probability:.0%})"))
    return out
