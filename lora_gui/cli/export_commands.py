"""``python -m lora_gui export`` and ``predict``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import (
    BAD_INPUT,
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    AdapterError,
    ExportError,
)
from ..store.export_formats import FORMATS

# The engine (torch, timm, the runtimes) is imported by the commands that run it, not by the parser,
# so `--help` and the quick commands start in well under a second (issue #15.3).


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export", help=f"export a trained adapter ({', '.join(FORMATS)})",
                              description="Export an adapter so it loads in PEFT, plain timm, ONNX runtimes, "
                                          "OpenVINO, Core ML or LiteRT. Formats that run here are checked against "
                                          "PyTorch on the run's validation images (parity.json).")
    p.add_argument("run_dir", help="run folder, adapter folder or adapter.safetensors")
    p.add_argument("--format", choices=FORMATS, default="native",
                   help="what to write (default native); onnx_int8 is calibrated on the run's training images; "
                        "tflite needs `pip install litert-torch`")
    p.add_argument("--out", required=True, help="folder to write into; a name ending in .zip writes a zip")
    p.set_defaults(func=cli_export)
    return p


def cli_export(args: argparse.Namespace) -> int:
    """0 ok, 2 bad input (message on stderr, no traceback), 1 the export failed."""
    from ..store.exports import export_adapter, export_zip
    try:
        if str(args.out).endswith(".zip"):
            result = export_zip(args.run_dir, args.format, args.out)
        else:
            result = export_adapter(args.run_dir, args.format, args.out)
    except BAD_INPUT as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:
        print(f"error: export failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    check = Path(result).parent / "onnx_check.json" if args.format == "onnx" else None
    note = f" (onnxruntime vs PyTorch: max abs diff {json.loads(check.read_text())['max_abs_diff']:.1e})" \
        if check and check.is_file() else ""
    print(f"exported {args.format} to {result}{note}")
    parity = _parity_line(Path(args.out) if not str(args.out).endswith(".zip") else None)
    if parity:
        print(parity)
    return EXIT_OK


def _parity_line(out: Path | None) -> str:
    from ..store.parity import PARITY_FILE
    try:
        r = json.loads((out / PARITY_FILE).read_text()) if out is not None else None
    except (OSError, json.JSONDecodeError):
        return ""
    if not r or not r.get("measured"):
        return f"parity with PyTorch: not measured ({r.get('why')})" if r else ""
    return (f"parity with PyTorch on {r['images']} validation images: top-1 agreement {r['top1_agreement']:.1%}, "
            f"accuracy {r['accuracy_export']:.1%} (PyTorch {r['accuracy_pytorch']:.1%}), "
            f"{r['latency_ms_export']:.1f} ms/image (PyTorch {r['latency_ms_pytorch']:.1f}), "
            f"{r['size_bytes'] / 2**20:.1f} MiB")


def add_predict_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("predict", help="classify images with a trained adapter",
                              description="Print the top-k classes for each image. With a calibration saved "
                                          "beside the adapter (the app's Demo tab), probabilities are calibrated "
                                          "and an image below its confidence threshold is marked 'Not sure'.")
    p.add_argument("--adapter", required=True, help="adapter file, its folder, a run folder, or an export")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--topk", type=int, default=5, help="how many classes to show per image (default 5)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    p.set_defaults(func=cli_predict)
    return p


def cli_predict(args: argparse.Namespace) -> int:
    """0 ok, 2 bad input (message on stderr, no traceback), 1 anything else."""
    from ..inference.calibration import verdict
    from ..inference.predict import load_adapter, predict
    try:
        if args.topk < 1:
            raise AdapterError(f"--topk must be at least 1, got {args.topk}")
        loaded = load_adapter(args.adapter, device=getattr(args, "device", "cpu"))
        results = predict(loaded, list(args.images), topk=args.topk)
    except BAD_INPUT as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:  # a bug or the machine; still no traceback for the user
        print(f"error: prediction failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    # the saved calibration's "not sure" (below its threshold), as the app and the exports say it
    verdicts = [verdict(loaded, res) for res in results]
    if args.json:
        print(json.dumps([{"image": str(img), "not_sure": unsure, "verdict": sentence,
                           "predictions": [{"label": c, "probability": p} for c, p in res]}
                          for img, res, (unsure, sentence) in zip(args.images, results, verdicts)], indent=2))
    else:
        for img, res, (unsure, sentence) in zip(args.images, results, verdicts):
            print(f"{img}: {sentence}" if unsure else img)
            for c, p in res:
                print(f"  {p:7.2%}  {c}")
    return EXIT_OK
