"""lora_gui: fine-tune timm vision backbones with LoRA.

Layers, bottom to top (a package imports only from the rows below it; tests/test_layering.py checks it):
``errors``, ``config`` -> ``lora``, ``data`` -> ``backbones`` -> ``store`` -> ``training``, ``inference``
-> ``jobs`` -> ``cli``, ``ui``.
"""

__all__ = ["load_adapter"]


def __getattr__(name):
    # Lazy, so `import lora_gui.config` (CLI parsing, the UI's start-up) does not pay for torch and timm.
    if name == "load_adapter":
        from .inference.predict import load_adapter
        return load_adapter
    raise AttributeError(f"module 'lora_gui' has no attribute {name!r}")
