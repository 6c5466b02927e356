"""The "Demo app" export: a folder (and zip) that runs anywhere with
``pip install -r requirements.txt && python app.py`` and has the Hugging Face Spaces layout.

It holds the merged model (``model.safetensors``, timm naming, as the merged export
writes it), ``labels.json``, ``preprocessing.json``, ``calibration.json`` (temperature and
"not sure" threshold; the defaults when the run was never calibrated), ``app.py``,
``requirements.txt`` (no lora_gui) and a README whose front matter says ``sdk: gradio``.
The files of ``demo_app_template/`` are filled in with plain placeholders.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

from ..errors import AdapterError
from .adapter_file import AdapterMeta, read_adapter, resolve_adapter_file
from .calibration_file import CALIBRATION_FILE, Calibration, read_calibration
from .export_readme import _size_arg
from .merged_format import _write_merged
from .zip_writer import write_zip

TEMPLATE = Path(__file__).resolve().parent / "demo_app_template"
DEMO_FILES = ("app.py", "requirements.txt", "README.md", "model.safetensors", "labels.json",
              "preprocessing.json", CALIBRATION_FILE)


def _fill(name: str, values: dict[str, str]) -> str:
    text = (TEMPLATE / name).read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace(f"__{key}__", value)
    return text


def _template_values(meta: AdapterMeta, cal: Calibration) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import timm
    try:
        gradio_version = version("gradio")
    except PackageNotFoundError:   # the engine runs without gradio (CLI-only installs)
        gradio_version = "6.0.0"
    classes = list(meta.classes)
    shown = ", ".join(classes[:8]) + (f" and {len(classes) - 8} more" if len(classes) > 8 else "")
    return {"TITLE": f"{meta.model.name} — {len(classes)} classes", "MODEL_NAME": meta.model.name,
            "N_CLASSES": str(len(classes)), "CLASS_LIST": shown, "GRADIO_VERSION": gradio_version,
            "TIMM_VERSION": timm.__version__.split("+")[0], "THRESHOLD": f"{cal.threshold:.0%}",
            # a ViT trained at another resolution than its own is rebuilt at that size
            "MODEL_KWARGS": _size_arg(meta)}


def _write_demo_app(file: Path, tensors: dict, meta: AdapterMeta, out: Path) -> Path:
    """The WRITERS-table form (``store.exports``): ``out`` exists; returns app.py."""
    if not meta.model.name.replace("_", "").replace(".", "").isalnum():
        raise AdapterError(f"unexpected model name {meta.model.name!r} in the adapter")
    _write_merged(file, tensors, meta, out)
    cal = read_calibration(file) or Calibration()
    values = _template_values(meta, cal)
    dc = {k: list(v) if isinstance(v, tuple) else v for k, v in meta.data_config.items()}
    (out / "labels.json").write_text(json.dumps(list(meta.classes), indent=2))
    (out / "preprocessing.json").write_text(json.dumps(dc, indent=2))
    (out / CALIBRATION_FILE).write_text(json.dumps(asdict(cal), indent=2))
    (out / "requirements.txt").write_text(_fill("requirements_txt.txt", values))
    (out / "README.md").write_text(_fill("README_md.txt", values), encoding="utf-8")
    (out / "app.py").write_text(_fill("app_py.txt", values), encoding="utf-8")
    return out / "app.py"


def write_demo_app(run_or_adapter: str | os.PathLike, out_dir: str | os.PathLike,
                   zip_path: str | os.PathLike | None = None) -> Path:
    """Write the demo app of a run (its best/ adapter) or adapter into ``out_dir``; returns ``out_dir``.

    With ``zip_path`` the same files also go into that zip (written atomically)."""
    file = resolve_adapter_file(run_or_adapter)
    tensors, meta = read_adapter(file)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise AdapterError(f"{out} is a file; give a folder to write the demo app into")
    if out.resolve() == file.parent.resolve():
        raise AdapterError("write the demo app into another folder than the adapter's own")
    out.mkdir(parents=True, exist_ok=True)
    # built beside, then moved in: a failed export never leaves half an app behind
    with tempfile.TemporaryDirectory(prefix=".demo_app_", dir=out) as tmp:
        _write_demo_app(file, tensors, meta, Path(tmp))
        for name in DEMO_FILES:
            os.replace(Path(tmp) / name, out / name)
    if zip_path is not None:
        zip_path = Path(zip_path)
        zip_path.parent.mkdir(parents=True, exist_ok=True)
        write_zip(zip_path, ((out / name, name) for name in DEMO_FILES))
    return out
