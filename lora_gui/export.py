"""Export a trained adapter so it loads outside lora_gui: PEFT, plain timm, ONNX.

Every export folder holds the artefact, ``labels.json`` (class names in
output order), ``preprocessing.json`` (timm's data config) and a README with
the few lines of Python that load it. Exports are checked where they are made
(merged and ONNX numerically against the unmerged model; PEFT for what PEFT
would load differently), so a broken export is an error here rather than
wrong predictions somewhere else.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .adapters import ADAPTER_FILE, META_FILE, AdapterError, AdapterMeta, read_adapter, resolve_adapter_file
from .lora import _reads_weight_directly, head_modules, remove_lora
from .predict import (  # noqa: F401 (load_adapter, predict, ... are re-exported)
                      BAD_INPUT, EXPORT_META_KEY, MERGED_FILE, PEFT_CONFIG, PEFT_PREFIX, PEFT_WEIGHTS,
                      LoadedAdapter, add_predict_parser, build_checked, check_adapter_fits, cli_predict,
                      load_adapter, predict)

__all__ = ["FORMATS", "ExportError", "export_adapter", "export_zip", "load_adapter", "predict", "LoadedAdapter",
           "check_adapter_fits", "cli_export", "cli_predict", "add_export_parser", "add_predict_parser"]

FORMATS = ("native", "peft", "merged", "onnx")
ONNX_FILE = "model.onnx"
ONNX_TOLERANCE = 1e-4   # relative to the largest logit: float32 kernels differ, real bugs are far larger
MERGE_TOLERANCE = 1e-5


class ExportError(RuntimeError):
    """An export could not be made or failed its own check; the message says why."""


def _export_metadata(layout: str, meta: AdapterMeta) -> dict[str, str]:
    # "format": "pt" is what PEFT and transformers write; our JSON lets load_adapter read the export back.
    return {"format": "pt", EXPORT_META_KEY: json.dumps({"layout": layout, "adapter": meta.to_dict()})}


def _probe_input(meta: AdapterMeta, batch: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, *meta.data_config["input_size"], generator=gen)


def _relative_diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    diff = (a.float() - b.float()).abs().max().item()
    return diff, diff / max(b.abs().max().item(), 1e-6)


def _merged_model(tensors: dict, meta: AdapterMeta) -> nn.Module:
    """The trained model with LoRA folded in and the wrappers removed, checked against the unmerged one."""
    model = build_checked(tensors, meta)
    x = _probe_input(meta)
    with torch.no_grad():
        before = model(x)
        remove_lora(model)
        after = model(x)
    _, rel = _relative_diff(after, before)
    if rel > MERGE_TOLERANCE:
        raise ExportError(f"merging LoRA changed the outputs by {rel:.2e} (relative); the export was not written")
    return model.eval()


def _write_native(file: Path, tensors: dict, meta: AdapterMeta, out: Path) -> Path:
    check_adapter_fits(tensors, meta)
    shutil.copyfile(file, out / ADAPTER_FILE)
    (out / META_FILE).write_text(json.dumps(meta.to_dict(), indent=2))
    return out / ADAPTER_FILE


def _peft_config(model: nn.Module, meta: AdapterMeta) -> dict:
    """PEFT's adapter_config.json, refusing what PEFT would load differently from us."""
    names = [n for n, _ in model.named_modules() if n and ".base_layer" not in n and ".lora_" not in n]
    for layer in meta.layers:
        parent_name, _, child = layer.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if _reads_weight_directly(parent, child):
            raise AdapterError(f"PEFT export is not possible for {meta.model.name}: {type(parent).__name__} reads "
                               f"{child}.weight directly, so a plain timm model would bypass PEFT's LoRA. "
                               "Export 'merged' instead.")
    heads = head_modules(model)
    for head in heads:
        # PEFT picks modules_to_save by plain str.endswith on module names.
        hits = [n for n in names if n.endswith(head)]
        if hits != [head]:
            other = next(n for n in hits if n != head)
            raise AdapterError(f"PEFT export is not possible: PEFT would also treat {other} as the head "
                               f"{head!r}. Export 'merged' instead.")
        # ...and never puts LoRA on a layer inside a module to save.
        inside = [l for l in meta.layers if re.match(rf"(^|.*\.){re.escape(head)}($|\..*)", l)]
        if inside:
            raise AdapterError(f"PEFT export is not possible: PEFT would not wrap {inside[0]}, which it "
                               f"counts as part of the head {head!r}. Export 'merged' instead.")
    lora = meta.lora
    return {
        # no hub id as base_model_name_or_path: PEFT would look it up online whenever it saves
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": None,
        "auto_mapping": {"base_model_class": type(model).__name__, "parent_library": type(model).__module__},
        "r": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout, "use_rslora": lora.use_rslora,
        # a str is a regex PEFT fullmatches against each module name: exactly the wrapped layers
        "target_modules": "|".join(map(re.escape, meta.layers)),
        "modules_to_save": heads,
        # train_bias trains every bias, which is PEFT's "all"; trained norms travel as plain keys,
        # which PEFT loads onto the base model (its own save_pretrained would not keep them).
        "bias": "all" if lora.train_bias else "none",
        "fan_in_fan_out": False, "init_lora_weights": True, "inference_mode": True,
        "use_dora": False, "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {},
        "alpha_pattern": {}, "exclude_modules": None,
    }


def _write_peft(file: Path, tensors: dict, meta: AdapterMeta, out: Path) -> Path:
    model = check_adapter_fits(tensors, meta)
    config = _peft_config(model, meta)
    # Our wrappers use PEFT's sub-module names (base_layer, lora_A, lora_B) and PEFT saves
    # modules_to_save without their wrapper prefix, so PEFT's key is ours behind its prefix.
    state = {PEFT_PREFIX + k: v.contiguous() for k, v in tensors.items()}
    save_file(state, str(out / PEFT_WEIGHTS), metadata=_export_metadata("peft", meta))
    (out / PEFT_CONFIG).write_text(json.dumps(config, indent=2))
    return out


def _write_merged(file: Path, tensors: dict, meta: AdapterMeta, out: Path) -> Path:
    model = _merged_model(tensors, meta)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / MERGED_FILE), metadata=_export_metadata("merged", meta))
    return out / MERGED_FILE


def _torch_onnx_export(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    kwargs = dict(input_names=["input"], output_names=["logits"], opset_version=17,
                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    with warnings.catch_warnings():
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


def _write_onnx(file: Path, tensors: dict, meta: AdapterMeta, out: Path) -> Path:
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        raise ExportError("ONNX export is an optional extra: `pip install onnx onnxruntime`, "
                          "then export again") from None
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


_PREPROCESS = """import json, timm, torch
from PIL import Image
labels = json.load(open("labels.json"))
transform = timm.data.create_transform(**json.load(open("preprocessing.json")), is_training=False)
x = transform(Image.open("photo.jpg").convert("RGB")).unsqueeze(0)   # a batch of one image"""


def _base_snippet(meta: AdapterMeta) -> str:
    """How to rebuild the exact base weights the adapter was trained on."""
    name, k, src = meta.model.name, len(meta.classes), meta.model.weights
    if src == "random":
        return (f"torch.manual_seed({meta.base_seed})  # trained on random base weights: same seed, same timm version\n"
                f"base = timm.create_model({name!r}, pretrained=False, num_classes={k})")
    if src == "hub":
        return f"base = timm.create_model({name!r}, pretrained=True, num_classes={k})"
    # bundled / file weights are not on the hub; lora_gui builds them exactly as in training
    return ("from lora_gui.config import ModelConfig\nfrom lora_gui.models import build_model\n"
            f"base = build_model(ModelConfig(name={name!r}, weights={src!r}, weights_file={meta.model.weights_file!r})"
            f", num_classes={k})")


def _readme(fmt: str, meta: AdapterMeta) -> str:
    """A README whose code block runs as it is, from inside the export folder."""
    name, k, dc = meta.model.name, len(meta.classes), meta.data_config
    show = "print(labels[int(logits.argmax())])"
    code = {
        "native": "from lora_gui import load_adapter\nfrom lora_gui.predict import predict\n"
                  "loaded = load_adapter(\".\")   # model, classes and transform\n"
                  "print(predict(loaded, [\"photo.jpg\"], topk=5))",
        "peft": f"{_PREPROCESS}\nimport peft\n{_base_snippet(meta)}\n"
                "model = peft.PeftModel.from_pretrained(base, \".\").eval()   # .merge_and_unload(): plain timm\n"
                f"with torch.no_grad():\n    logits = model(x)\n{show}",
        "merged": f"{_PREPROCESS}\nfrom safetensors.torch import load_file\n"
                  f"model = timm.create_model({name!r}, pretrained=False, num_classes={k})\n"
                  f"model.load_state_dict(load_file(\"{MERGED_FILE}\"), strict=True)\n"
                  f"with torch.no_grad():\n    logits = model.eval()(x)\n{show}",
        "onnx": f"{_PREPROCESS}\nimport onnxruntime as ort\nsession = ort.InferenceSession(\"{ONNX_FILE}\")\n"
                f"logits = session.run(None, {{\"input\": x.numpy()}})[0]   # any batch size\n{show}",
    }[fmt]
    return (f"# {name} + LoRA, {fmt} export (lora_gui)\n\n"
            f"{k} classes, in output order, in `labels.json`: {', '.join(meta.classes[:10])}"
            f"{', ...' if k > 10 else ''}.\n"
            f"Base model: timm `{name}`, base weights: {meta.model.weights}; LoRA rank {meta.lora.rank}, "
            f"alpha {meta.lora.alpha:g}, {len(meta.layers)} layers.\n\n"
            f"Preprocessing (`preprocessing.json`, timm's data config): input size {tuple(dc.get('input_size', ()))}, "
            f"mean {tuple(dc.get('mean', ()))}, std {tuple(dc.get('std', ()))}, "
            f"interpolation {dc.get('interpolation')}, crop_pct {dc.get('crop_pct')}.\n\n"
            f"Run from this folder:\n\n```python\n{code}\n```\n")

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
        partial = zip_path.with_name(zip_path.name + ".partial")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted((Path(tmp) / "export").iterdir()):
                zf.write(f, arcname=f.name)
        os.replace(partial, zip_path)
    return zip_path


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export", help="export a trained adapter (native, peft, merged, onnx)",
                              description="Export an adapter so it loads in PEFT, plain timm or ONNX runtimes.")
    p.add_argument("run_dir", help="run folder, adapter folder or adapter.safetensors")
    p.add_argument("--format", choices=FORMATS, default="native", help="what to write (default native)")
    p.add_argument("--out", required=True, help="folder to write into; a name ending in .zip writes a zip")
    p.set_defaults(func=cli_export)
    return p


def cli_export(args: argparse.Namespace) -> int:
    """0 ok, 2 bad input (message on stderr, no traceback), 1 the export failed."""
    try:
        if str(args.out).endswith(".zip"):
            result = export_zip(args.run_dir, args.format, args.out)
        else:
            result = export_adapter(args.run_dir, args.format, args.out)
    except BAD_INPUT as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"error: export failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    check = Path(result).parent / "onnx_check.json" if args.format == "onnx" else None
    note = f" (onnxruntime vs PyTorch: max abs diff {json.loads(check.read_text())['max_abs_diff']:.1e})" \
        if check and check.is_file() else ""
    print(f"exported {args.format} to {result}{note}")
    return 0
