"""Export formats side by side: size on disk, latency per image on this CPU, top-1 agreement with
PyTorch, on the example photos (assets/example) with the bundled tf_efficientnet_lite0.

One run is trained (or given with --run), then exported in every format this install can write;
the numbers are the parity reports the exports themselves write (lora_gui/store/parity.py).
Results: benchmarks/results/export_formats-<date>.json, and a Markdown table on stdout.

    python benchmarks/export_formats.py                     # train at 224 px, 2 epochs, then export
    python benchmarks/export_formats.py --run <run folder>  # reuse a trained run
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a trained run folder (default: train one on assets/example)")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    import torch

    from lora_gui.store.exports import FORMATS, RUNNERS, export_adapter, missing_packages
    work = Path(tempfile.mkdtemp(prefix="export_formats_"))
    if args.run:
        run = Path(args.run)
    else:
        from example_run import train_example_run
        run = train_example_run(work, image_size=args.image_size, epochs=args.epochs, timeout=3600)
    rows = []
    for fmt in FORMATS:
        if fmt == "demo_app":   # an app around the merged model, not a model format of its own
            continue
        row = {"format": fmt}
        if (need := missing_packages(fmt)) is not None:
            row["skipped"] = f"not installed: {need}"
        else:
            start = time.perf_counter()
            try:
                artefact = export_adapter(run, fmt, work / fmt)
                row["export_s"] = round(time.perf_counter() - start, 1)
                files = [p for p in ([artefact] if artefact.is_file() else artefact.rglob("*")) if p.is_file()]
                if artefact.suffix == ".xml":
                    files.append(artefact.with_suffix(".bin"))
                row["size_bytes"] = sum(p.stat().st_size for p in files)
                parity = work / fmt / "parity.json"
                if fmt in RUNNERS and parity.is_file():
                    row["parity"] = json.loads(parity.read_text())
            except Exception as exc:   # a refusal (parity below 99 %) is a result too
                row["failed"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"run": str(run), "machine": platform.platform(), "processor": platform.processor(),
              "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M"), "formats": rows}
    out = HERE / "results" / f"export_formats-{time.strftime('%Y%m%d-%H%M')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}\n\n{table(rows)}")
    return 0


def table(rows: list[dict]) -> str:
    lines = ["| format | size | latency / image | top-1 agreement | accuracy (export / PyTorch) |",
             "|---|---|---|---|---|"]
    for r in rows:
        p = r.get("parity") or {}
        size = f"{r['size_bytes'] / 2**20:.1f} MiB" if "size_bytes" in r else "—"
        if p.get("measured"):
            lat = f"{p['latency_ms_export']:.1f} ms (PyTorch {p['latency_ms_pytorch']:.1f})"
            agree = f"{p['top1_agreement']:.1%} of {p['images']}"
            acc = f"{p['accuracy_export']:.1%} / {p['accuracy_pytorch']:.1%}"
        else:
            lat = agree = acc = r.get("skipped") or r.get("failed", "")[:80] or "PyTorch / not run here"
        lines.append(f"| {r['format']} | {size} | {lat} | {agree} | {acc} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
