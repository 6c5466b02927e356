"""The export formats by name and the packages each needs: plain data, no torch.

Kept apart from ``exports`` (whose writers import torch, timm and the runtimes) so the command
line's ``--help`` and the app's Export tab list the formats without loading the engine (issue #15.3).
``exports.WRITERS`` must have exactly these keys, in this order; it checks on import.
"""
from __future__ import annotations

import importlib.util

FORMATS = ("native", "peft", "merged", "onnx", "onnx_int8", "openvino", "coreml", "tflite", "demo_app")
# The import names a format needs and the pip line that installs them.
FORMAT_PACKAGES = {"onnx": (("onnx", "onnxruntime"), "onnx onnxruntime"),
                   "onnx_int8": (("onnx", "onnxruntime"), "onnx onnxruntime"),
                   "openvino": (("openvino",), "openvino"), "coreml": (("coremltools",), "coremltools"),
                   "tflite": (("litert_torch",), "litert-torch")}


def missing_packages(fmt: str) -> str | None:
    """The `pip install` a format still needs on this machine, or None when it can be exported."""
    modules, pip_line = FORMAT_PACKAGES.get(fmt, ((), ""))

    def importable(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):   # ValueError: blocked in sys.modules (set to None)
            return False
    return None if all(map(importable, modules)) else f"pip install {pip_line}"
