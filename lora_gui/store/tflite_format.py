"""The TFLite / LiteRT export (``model.tflite``) for Android and other edge devices, and its runner.

Converted with Google's ``litert-torch`` (torch.export -> LiteRT flatbuffer, no TensorFlow
needed); run here with ``ai-edge-litert``'s interpreter, which litert-torch installs. It is an
optional format: litert-torch brings about 0.9 GB of dependencies (jaxlib, its converter,
transformers), so the default install leaves it out and the app offers it only where it imports.
The input keeps PyTorch's layout: one NCHW float32 image, normalised as in preprocessing.json.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..errors import ExportError
from .adapter_file import AdapterMeta
from .merged_format import _merged_model, _probe_input

TFLITE_FILE = "model.tflite"


def _write_tflite(file: Path, tensors: dict, meta: AdapterMeta, out: Path) -> Path:
    try:
        import litert_torch
    except ImportError:
        raise ExportError("TFLite export needs `pip install litert-torch` (about 0.9 GB with its "
                          "dependencies), then export again") from None
    model = _merged_model(tensors, meta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            edge = litert_torch.convert(model, (_probe_input(meta, 1),))
        except Exception as exc:
            raise ExportError(f"litert-torch cannot convert {meta.model.name}: "
                              f"{str(exc).splitlines()[0][:300]}") from None
    edge.export(str(out / TFLITE_FILE))
    return out / TFLITE_FILE


def tflite_runner(path: Path):
    """LiteRT's interpreter on this CPU; the model takes one image, so a batch runs image by image."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise ExportError("running a TFLite model needs `pip install ai-edge-litert`") from None
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    inp, outp = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]

    def run(x: np.ndarray) -> np.ndarray:
        rows = []
        for image in x:
            interpreter.set_tensor(inp, image[None].astype(np.float32))
            interpreter.invoke()
            rows.append(interpreter.get_tensor(outp)[0].copy())
        return np.stack(rows)
    return run
