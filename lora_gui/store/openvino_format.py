"""The OpenVINO IR export (model.xml + model.bin) for Intel CPUs, GPUs and NPUs, and its runner.

Converted from the ONNX export with ``openvino.convert_model``; ``save_model`` stores the weights
as float16 (OpenVINO's default: half the size, computed in float32 on CPUs). Parity (exports.py)
checks it against PyTorch on the run's validation images.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from ..errors import ExportError
from .adapter_file import AdapterMeta
from .merged_format import _merged_model, _probe_input
from .onnx_format import _torch_onnx_export

OPENVINO_FILE = "model.xml"   # model.bin beside it


def _import_openvino():
    # OpenVINO's converter reports usage to Google Analytics unless a consent file in the home
    # folder says no, and writes ~/intel/openvino_ga_cid either way. Its own fallback for a missing
    # openvino_telemetry package is a no-op stub: we choose that path (ImportError on import).
    # Nothing leaves the machine and nothing is written outside the workspace.
    sys.modules.setdefault("openvino_telemetry", None)
    try:
        import openvino as ov
    except ImportError:
        raise ExportError("OpenVINO export needs `pip install openvino`, then export again") from None
    return ov


def _write_openvino(file: Path, tensors: dict, meta: AdapterMeta, out: Path) -> Path:
    ov = _import_openvino()
    model = _merged_model(tensors, meta)
    with tempfile.TemporaryDirectory(dir=out, prefix=".openvino-") as tmp:
        onnx_file = Path(tmp) / "model.onnx"
        _torch_onnx_export(model, _probe_input(meta, 2), onnx_file)
        ov_model = ov.convert_model(str(onnx_file))
    ov.save_model(ov_model, str(out / OPENVINO_FILE))
    return out / OPENVINO_FILE


def openvino_runner(path: Path):
    """The IR compiled for this machine's CPU: a float32 NCHW batch in, logits out."""
    ov = _import_openvino()
    compiled = ov.Core().compile_model(str(path), "CPU")
    return lambda x: compiled(x)[0]
