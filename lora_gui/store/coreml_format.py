"""The Core ML export (an ML Program, ``model.mlpackage``) for iPhone, iPad and Mac apps.

coremltools converts the merged model through torch.export (its TorchScript path fails on
timm's "same" padding, which computes pads from shapes: tf_efficientnet_lite0's stem); the package is a classifier: input ``input`` (the
normalised NCHW tensor, as in preprocessing.json), outputs ``classLabel`` and ``classLabel_probs``.
Core ML runs only on Apple systems: here the export is converted and its spec (inputs, outputs,
class labels) is read back and checked, but it is not run, so it has no parity report.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from ..errors import ExportError
from .adapter_file import AdapterMeta
from .merged_format import _merged_model, _probe_input

COREML_FILE = "model.mlpackage"


def _import_coremltools():
    try:
        import coremltools as ct
    except ImportError:
        raise ExportError("Core ML export needs `pip install coremltools`, then export again") from None
    return ct


def _write_coreml(file: Path, tensors: dict, meta: AdapterMeta, out: Path) -> Path:
    ct = _import_coremltools()
    model = _merged_model(tensors, meta)
    x = _probe_input(meta, 1)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "untested torch version" notices
        try:
            program = torch.export.export(model, (x,)).run_decompositions({})
            mlmodel = ct.convert(program, inputs=[ct.TensorType(name="input", shape=tuple(x.shape))],
                                 classifier_config=ct.ClassifierConfig(list(meta.classes)),
                                 convert_to="mlprogram", minimum_deployment_target=ct.target.iOS15)
        except Exception as exc:   # an op coremltools cannot map: say which model, keep the reason
            raise ExportError(f"coremltools {ct.__version__} cannot convert {meta.model.name}: "
                              f"{str(exc).splitlines()[0][:300]}") from None
    mlmodel.short_description = f"{meta.model.name} + LoRA ({len(meta.classes)} classes), exported by lora_gui"
    mlmodel.user_defined_metadata["classes"] = json.dumps(list(meta.classes))
    mlmodel.user_defined_metadata["preprocessing"] = json.dumps(
        {k: list(v) if isinstance(v, tuple) else v for k, v in meta.data_config.items()})
    mlmodel.save(str(out / COREML_FILE))
    return out / COREML_FILE


def read_coreml_spec(path: Path) -> dict:
    """Inputs (name -> shape), outputs and class labels of an .mlpackage, read without running it."""
    ct = _import_coremltools()
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    inputs = {i.name: list(i.type.multiArrayType.shape) for i in spec.description.input}
    outputs = [o.name for o in spec.description.output]
    labels = []
    main = spec.mlProgram.functions["main"]
    for op in main.block_specializations[main.opset].operations:
        if op.type == "classify":
            for value in op.inputs["classes"].arguments[0].value.immediateValue.list.values:
                labels += list(value.immediateValue.tensor.strings.values)
    return {"type": spec.WhichOneof("Type"), "inputs": inputs, "outputs": outputs, "class_labels": labels,
            "predicted": spec.description.predictedFeatureName,
            "metadata": dict(spec.description.metadata.userDefined)}
