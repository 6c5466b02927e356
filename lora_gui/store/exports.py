"""Export an adapter in any format (a dispatch table of writers), and find what a path holds."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import AdapterError, ExportError
from .adapter_check import check_adapter_fits
from .adapter_file import (
    ADAPTER_FILE,
    META_FILE,
    AdapterMeta,
    read_adapter,
    resolve_adapter_file,
)
from .coreml_format import _write_coreml
from .demo_app_format import _write_demo_app
from .export_formats import FORMAT_PACKAGES, FORMATS, missing_packages  # noqa: F401  (re-exported)
from .export_meta import EXPORT_META_KEY, _export_meta, _safetensors_metadata
from .export_readme import _readme
from .merged_format import MERGED_FILE, _merged_model, _write_merged
from .onnx_format import _write_onnx, onnx_runner
from .onnx_int8_format import _write_onnx_int8
from .openvino_format import _write_openvino, openvino_runner
from .parity import PARITY_FILE, check_parity, measure_parity
from .peft_format import PEFT_CONFIG, PEFT_WEIGHTS, _write_peft
from .tflite_format import _write_tflite, tflite_runner
from .zip_writer import write_zip


def _write_native(file: Path, tensors: dict, meta: AdapterMeta, out: Path) -> Path:
    check_adapter_fits(tensors, meta)
    shutil.copyfile(file, out / ADAPTER_FILE)
    (out / META_FILE).write_text(json.dumps(meta.to_dict(), indent=2))
    return out / ADAPTER_FILE


WRITERS = {"native": _write_native, "peft": _write_peft, "merged": _write_merged, "onnx": _write_onnx,
           "onnx_int8": _write_onnx_int8, "openvino": _write_openvino, "coreml": _write_coreml,
           "tflite": _write_tflite, "demo_app": _write_demo_app}
if tuple(WRITERS) != FORMATS:   # one list of names, kept torch-free in export_formats (for --help and the UI)
    raise ImportError(f"store.export_formats.FORMATS {FORMATS} must list the writers {tuple(WRITERS)}")
# Formats that write their own README (the demo app's is its Hugging Face Space card): the generic one
# written beside every other export would replace it.
OWN_README = {"demo_app"}
# Formats whose export runs here with its own runtime: parity with PyTorch is measured and enforced.
# (native, peft and merged are PyTorch itself; Core ML runs only on Apple systems.)
RUNNERS = {"onnx": onnx_runner, "onnx_int8": onnx_runner, "openvino": openvino_runner, "tflite": tflite_runner}


def _artefact_files(artefact: Path) -> list[Path]:
    """Everything that is the model itself (for its size on disk): OpenVINO's .bin beside its .xml."""
    bin_file = artefact.with_suffix(".bin")
    return [artefact, bin_file] if artefact.suffix == ".xml" and bin_file.is_file() else [artefact]


def _remove(paths: list[Path]) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()


def _parity(fmt: str, file: Path, tensors: dict, meta: AdapterMeta, artefact: Path) -> dict | None:
    """The parity report of a format that runs here (None for the others); refuses a poor one."""
    if fmt not in RUNNERS:
        return None
    files = _artefact_files(artefact)
    try:
        report = measure_parity(fmt, file, meta, _merged_model(tensors, meta), RUNNERS[fmt](artefact),
                                artefact, files)
        check_parity(report)
    except BaseException:
        _remove(files)
        raise
    return report


def export_adapter(source: str | os.PathLike, fmt: str, out_dir: str | os.PathLike) -> Path:
    """Write the adapter at ``source`` (file, folder or run folder) into ``out_dir`` as ``fmt``.

    Returns the main artefact: the adapter or model file, or the folder for PEFT.
    """
    if fmt not in FORMATS:
        raise AdapterError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if (need := missing_packages(fmt)) is not None:
        raise ExportError(f"the {fmt} export is not installed on this machine: `{need}`, then export again")
    file = resolve_adapter_file(source)
    tensors, meta = read_adapter(file)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise AdapterError(f"{out} is a file; give a folder to export into")
    if out.resolve() == file.parent.resolve():
        raise AdapterError("export into another folder than the adapter's own")
    out.mkdir(parents=True, exist_ok=True)
    artefact = WRITERS[fmt](file, tensors, meta, out)
    parity = _parity(fmt, file, tensors, meta, artefact)
    if parity is not None:
        (out / PARITY_FILE).write_text(json.dumps(parity, indent=2))
    dc = {k: list(v) if isinstance(v, tuple) else v for k, v in meta.data_config.items()}
    (out / "labels.json").write_text(json.dumps(list(meta.classes), indent=2))
    (out / "preprocessing.json").write_text(json.dumps(dc, indent=2))
    if fmt not in OWN_README:
        (out / "README.md").write_text(_readme(fmt, meta, parity))
    return artefact


def export_zip(source: str | os.PathLike, fmt: str, zip_path: str | os.PathLike) -> Path:
    """export_adapter into a .zip (for a download button); written atomically."""
    zip_path = Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    # built inside the workspace, beside the zip: an ONNX or OpenVINO build can be hundreds of MB,
    # and nothing is written outside the workspace (a small /tmp would also fail it)
    with tempfile.TemporaryDirectory(prefix=".export_", dir=zip_path.parent) as tmp:
        built = Path(tmp) / "export"
        export_adapter(source, fmt, built)
        return write_zip(zip_path, ((f, f.relative_to(built).as_posix()) for f in sorted(built.rglob("*"))))


def locate(path: str | os.PathLike) -> tuple[str, Path]:
    """(layout, file) for anything load_adapter accepts; refuses pickle and unknown files."""
    p = Path(path)
    if p.is_dir() and (p / ADAPTER_FILE).is_file():
        return "native", p / ADAPTER_FILE
    if p.is_dir() and (p / PEFT_CONFIG).is_file():
        return "peft", p / PEFT_WEIGHTS
    if p.is_dir() and (p / MERGED_FILE).is_file():
        p = p / MERGED_FILE
    if p.name == PEFT_CONFIG and p.is_file():
        return "peft", p.parent / PEFT_WEIGHTS
    if p.suffix == ".onnx":
        raise AdapterError(f"{p.name} is an ONNX model: run it with onnxruntime (see the README beside it)")
    if p.suffix == ".safetensors" and p.is_file() and EXPORT_META_KEY in _safetensors_metadata(p):
        return _export_meta(p)[0], p
    return "native", resolve_adapter_file(p)
