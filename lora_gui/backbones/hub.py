"""Whether pretrained weights can come from the Hugging Face hub, decided in seconds.

timm's own download retries for about 50 s when the hub is unreachable; these
checks (a socket probe, then one metadata request without retries) answer first,
with a message that says what to use instead.
"""
from __future__ import annotations

import inspect
import os
import socket
import threading

from .catalog import BUNDLED_MODEL

# timm (and torch under it) is imported by the functions that read its pretrained configs, so the
# app can ask ``weights_availability`` with a known hub id before the engine is loaded.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")

HUB_HOST = "huggingface.co"


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


def hub_cached(name: str, hub_id: str | None = None) -> bool:
    """Whether the weights timm would download for ``name`` are in the local Hugging Face cache.
    ``hub_id`` (timm's hf_hub_id for the name, when the caller has it) spares importing timm."""
    try:
        from huggingface_hub import try_to_load_from_cache
        hub_id = hub_id or hub_id_of(name)
        if not hub_id:
            return False
        return any(isinstance(try_to_load_from_cache(hub_id, f), str) for f in WEIGHT_FILES)
    except Exception:
        return False


def weights_availability(name: str, hub_id: str | None = None) -> str:
    """'bundled', 'cached' or 'needs network' (does not touch the network)."""
    if name == BUNDLED_MODEL:
        return "bundled"
    return "cached" if hub_cached(name, hub_id) else "needs network"


def hub_id_of(name: str) -> str | None:
    """timm's Hugging Face repo for ``name``'s default pretrained weights (imports timm)."""
    import timm
    cfg = timm.models.get_pretrained_cfg(name)
    return getattr(cfg, "hf_hub_id", None) if cfg is not None else None


def has_pretrained_weights(name: str) -> bool:
    """Whether timm knows pretrained weights (hub, URL or file) for this name."""
    import timm
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
            from huggingface_hub.errors import (
                EntryNotFoundError,
                RepositoryNotFoundError,
            )
        except ImportError:  # older huggingface_hub
            from huggingface_hub.utils import (
                EntryNotFoundError,
                RepositoryNotFoundError,
            )
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
    hub_id = hub_id_of(name)
    why = _hub_preflight(hub_id) if hub_id else ""
    if why:
        return (f"could not fetch pretrained weights for {name} from the Hugging Face hub: {why}. "
                f"Use the bundled backbone ({BUNDLED_MODEL}, weights 'bundled') or pick a local weights file.")
    return ""


def _offline_message(name: str) -> str:
    why = "HF_HUB_OFFLINE is set" if _offline_env() else f"{_probe_address()[0]} cannot be reached from this machine"
    return (f"pretrained weights for {name} are not in the local cache and the Hugging Face hub "
            f"cannot be used ({why}). Use the bundled backbone "
            f"({BUNDLED_MODEL}, weights 'bundled'), pick a local weights file, or connect to the internet.")
