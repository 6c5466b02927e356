"""The ONNX export, checked against onnxruntime before it is written."""
from __future__ import annotations

import json
import threading
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import ExportError
from .adapter_file import AdapterMeta
from .merged_format import _merged_model, _probe_input, _relative_diff

ONNX_FILE = "model.onnx"
ONNX_TOLERANCE = 1e-4   # relative to the largest logit: float32 kernels differ, real bugs are far larger
# torch.onnx.export keeps process-wide state (GLOBALS.in_onnx_export): two exports at once, even of
# different models, fail with "in_onnx_export must be False". One at a time in this process.
_TORCH_EXPORT_LOCK = threading.Lock()


def _torch_onnx_export(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    kwargs = dict(input_names=["input"], output_names=["logits"], opset_version=17,
                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    with _TORCH_EXPORT_LOCK, warnings.catch_warnings():
        # the TorchScript exporter still works in torch 2.x but announces its future removal
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (x,), str(path), dynamo=False, **kwargs)
        except TypeError:  # a torch without the legacy exporter: the dynamo one needs onnxscript
            try:
                import onnxscript  # noqa: F401
            except ImportError:
                raise ExportError("this torch exports ONNX only through its new exporter, which needs "
                                  "`pip install onnxscript`") from None
            torch.onnx.export(model, (x,), str(path), dynamo=True, **kwargs)


def _import_onnx():
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        raise ExportError("ONNX export needs `pip install onnx onnxruntime`, then export again") from None
    # onnxruntime's only telemetry is Windows' ETW trace events, on by default there: off.
    ort.disable_telemetry_events()
    return onnx, ort


def onnx_runner(path: Path):
    """The exported model in onnxruntime on the CPU: a float32 NCHW batch in, logits out."""
    _, ort = _import_onnx()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"input": x})[0]


def _write_onnx(file: Path, tensors: dict, meta: AdapterMeta, out: Path) -> Path:
    onnx, ort = _import_onnx()
    model = _merged_model(tensors, meta)
    path = out / ONNX_FILE
    _torch_onnx_export(model, _probe_input(meta, 2), path)
    onnx.checker.check_model(str(path))
    # check at another batch size than exported with: the batch axis must really be dynamic
    x = _probe_input(meta, 3)
    with torch.no_grad():
        ref = model(x)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    diff, rel = _relative_diff(got, ref)
    check = {"max_abs_diff": diff, "relative_diff": rel, "tolerance": ONNX_TOLERANCE, "runtime": ort.__version__}
    (out / "onnx_check.json").write_text(json.dumps(check, indent=2))
    if got.shape != ref.shape or rel > ONNX_TOLERANCE:
        path.unlink()
        raise ExportError(f"the ONNX model differs from PyTorch by {diff:.2e} ({rel:.2e} relative, allowed "
                          f"{ONNX_TOLERANCE:.0e}); the export was not written")
    return path
