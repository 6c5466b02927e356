"""lora_gui: fine-tune timm vision backbones with LoRA."""

__all__ = ["load_adapter"]


def __getattr__(name):
    # Lazy, so `import lora_gui.config` (CLI parsing, the UI's start-up) does not pay for torch and timm.
    # (`predict` stays in lora_gui.predict: a package attribute of that name would clash with the module.)
    if name == "load_adapter":
        from .export import load_adapter
        return load_adapter
    raise AttributeError(f"module 'lora_gui' has no attribute {name!r}")
