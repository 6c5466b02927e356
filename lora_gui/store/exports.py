"""Export an adapter in any format (a dispatch table of writers), and find what a path holds."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from ..errors import AdapterError
from .adapter_check import check_adapter_fits
from .adapter_file import (
    ADAPTER_FILE,
    META_FILE,
    AdapterMeta,
    read_adapter,
    resolve_adapter_file,
)
from .export_meta import EXPORT_META_KEY, _export_meta, _safetensors_metadata
from .export_readme import _readme
from .merged_format import MERGED_FILE, _write_merged
from .onnx_format import _write_onnx
from .peft_format import PEFT_CONFIG, PEFT_WEIGHTS, _write_peft

FORMATS = ("native", "peft", "merged", "onnx")


def _write_native(file: Path, tensors: dict, meta: AdapterMeta, out: Path) -> Path:
    check_adapter_fits(tensors, meta)
    shutil.copyfile(file, out / ADAPTER_FILE)
    (out / META_FILE).write_text(json.dumps(meta.to_dict(), indent=2))
    return out / ADAPTER_FILE


WRITERS = {"native": _write_native, "peft": _write_peft, "merged": _write_merged, "onnx": _write_onnx}


def export_adapter(source: str | os.PathLike, fmt: str, out_dir: str | os.PathLike) -> Path:
    """Write the adapter at ``source`` (file, folder or run folder) into ``out_dir`` as ``fmt``.

    Returns the main artefact: the adapter or model file, or the folder for PEFT.
    """
    if fmt not in FORMATS:
        raise AdapterError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    file = resolve_adapter_file(source)
    tensors, meta = read_adapter(file)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise AdapterError(f"{out} is a file; give a folder to export into")
    if out.resolve() == file.parent.resolve():
        raise AdapterError("export into another folder than the adapter's own")
    out.mkdir(parents=True, exist_ok=True)
    artefact = WRITERS[fmt](file, tensors, meta, out)
    dc = {k: list(v) if isinstance(v, tuple) else v for k, v in meta.data_config.items()}
    (out / "labels.json").write_text(json.dumps(list(meta.classes), indent=2))
    (out / "preprocessing.json").write_text(json.dumps(dc, indent=2))
    (out / "README.md").write_text(_readme(fmt, meta))
    return artefact


def export_zip(source: str | os.PathLike, fmt: str, zip_path: str | os.PathLike) -> Path:
    """export_adapter into a .zip (for a download button); written atomically."""
    zip_path = Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lora_gui_export_") as tmp:
        export_adapter(source, fmt, Path(tmp) / "export")
        # a temporary name of its own beside the target (same file system, so os.replace is atomic):
        # several exports of one run into one folder each write their own, and the last one wins whole
        fd, partial = tempfile.mkstemp(prefix=f".{zip_path.name}.", suffix=".partial", dir=zip_path.parent)
        try:
            with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as zf:
                for f in sorted((Path(tmp) / "export").rglob("*")):
                    zf.write(f, arcname=f.relative_to(Path(tmp) / "export").as_posix())
            os.chmod(partial, 0o644)   # mkstemp makes it private to this user; a download is not
            os.replace(partial, zip_path)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
    return zip_path


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
