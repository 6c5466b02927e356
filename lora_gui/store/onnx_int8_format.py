"""The int8 ONNX export: onnxruntime's static quantisation, calibrated on the run's own images.

Weights per output channel (a conv's channels differ in range by orders of magnitude; one scale
for all would flatten the small ones), activations per tensor from the 99.999th percentile of
what up to CALIBRATION_IMAGES training images produce: plain min/max lets a few extreme values
stretch the scale, and on the example run it flipped 1 of 32 validation images (96.9 %, refused)
where the percentile ranges agree on all 32. QDQ format: any ONNX runtime reads it; onnxruntime on x86
and ARM runs it with int8 kernels. Parity (exports.py) then refuses it if it agrees with PyTorch
on too few validation images.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import ExportError
from .adapter_file import AdapterMeta
from .merged_format import _merged_model, _probe_input
from .onnx_format import _import_onnx, _torch_onnx_export
from .parity import calibration_images

INT8_FILE = "model_int8.onnx"


class _Images:
    """onnxruntime's CalibrationDataReader over a batch of images, one image per call."""

    def __init__(self, images):
        self._iter = iter(images)

    def get_next(self):
        image = next(self._iter, None)
        return None if image is None else {"input": image[None]}

    def rewind(self):   # part of the reader interface in newer onnxruntime; one pass is all we use
        pass


def _classifier_nodes(path: Path) -> list[str]:
    """The node that computes the logits: kept in float32. It holds a few thousand weights of the
    model's millions, and it is where two close classes are told apart, so int8 rounding there
    flips the most predictions for the least size saved."""
    import onnx
    graph = onnx.load(str(path)).graph
    outputs = {o.name for o in graph.output}
    return [n.name for n in graph.node if outputs & set(n.output) and n.name]


def _write_onnx_int8(file: Path, tensors: dict, meta: AdapterMeta, out: Path) -> Path:
    _import_onnx()
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise ExportError(f"this onnxruntime has no quantisation tools ({exc}); `pip install -U onnxruntime`") from None
    images = calibration_images(file, meta)
    model = _merged_model(tensors, meta)
    path = out / INT8_FILE
    with tempfile.TemporaryDirectory(dir=out, prefix=".int8-") as tmp:
        fp32, prepared = Path(tmp) / "fp32.onnx", Path(tmp) / "prepared.onnx"
        _torch_onnx_export(model, _probe_input(meta, 2), fp32)
        # shapes inferred and the graph folded first: what onnxruntime recommends before quantising
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(path), _Images(images), quant_format=QuantFormat.QDQ,
                        nodes_to_exclude=_classifier_nodes(prepared),
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.Percentile,
                        extra_options={"CalibTensorRangeSymmetric": False})
    if not path.is_file() or os.path.getsize(path) == 0:
        raise ExportError("onnxruntime's quantisation wrote no model; the export was not written")
    return path
