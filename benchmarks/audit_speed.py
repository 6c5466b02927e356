"""Time and quality of a full health check (issue 17) on ~1,000 real images with injected faults.

Builds ``benchmarks/.data/audit-messy/`` from Debian's Fashion-MNIST (``fmnist_folder``: 10
classes x 80 training + 20 validation images), then injects faults the audit must find:
10 % of the training images moved into a wrong class folder, 20 training images copied into the
validation folder of their class resized x3 and re-saved as JPEG (leaks), one blank image. Runs
``health.run_audit`` twice in a fresh workspace (cold: embeddings computed; warm: cached) and
writes timings and recall to ``benchmarks/results/audit-<machine>-<date>.json``. A script, not a
test: it asserts nothing.

    python benchmarks/audit_speed.py [--image-size 128] [--device-note TEXT]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from fmnist_folder import build_folder  # noqa: E402

from lora_gui.config import ModelConfig  # noqa: E402
from lora_gui.data import load_dataset  # noqa: E402
from lora_gui.health import run_audit  # noqa: E402


def make_messy(root: Path, out: Path, seed: int = 0) -> dict:
    """Copy ``root`` to ``out`` with known faults; returns what was injected (paths under out)."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(root, out, ignore=shutil.ignore_patterns(".complete"))
    rng = random.Random(seed)
    classes = sorted(p.name for p in (out / "train").iterdir())
    train = sorted((out / "train").glob("*/*.png"))
    relabelled = {}
    for f in rng.sample(train, len(train) // 10):
        wrong = rng.choice([c for c in classes if c != f.parent.name])
        dest = out / "train" / wrong / f"moved-{f.parent.name}-{f.name}"
        f.rename(dest)
        relabelled[str(dest.resolve())] = f.parent.name
    leaks = []
    remaining = sorted(p for p in (out / "train").glob("*/*.png") if p.name[:5] != "moved")
    for f in rng.sample(remaining, 20):
        with Image.open(f) as im:
            big = im.convert("RGB").resize((im.width * 3, im.height * 3), Image.BICUBIC)
        dest = out / "val" / f.parent.name / f"leak-{f.stem}.jpg"
        big.save(dest, quality=70)
        leaks.append((str(f.resolve()), str(dest.resolve())))
    blank = out / "train" / classes[0] / "blank.png"
    Image.new("RGB", (28, 28), (255, 255, 255)).save(blank)
    return {"relabelled": relabelled, "leaks": leaks, "blank": str(blank.resolve())}


def score(result, injected: dict) -> dict:
    noisy = set(injected["relabelled"])
    k = len(noisy)
    suspects = [f.paths[0] for f in result.of_kind("label")]
    pairs = {frozenset(f.paths) for f in result.of_kind("leak")}
    leaks_found = sum(frozenset(p) in pairs for p in injected["leaks"])
    outliers = {f.paths[0] for f in result.of_kind("outlier")}
    return {"injected_wrong_labels": k, "suspects_listed": len(suspects),
            f"recall_at_{k}": len(noisy & set(suspects[:k])) / k,
            "recall_whole_list": len(noisy & set(suspects)) / k,
            "precision_whole_list": len(noisy & set(suspects)) / max(1, len(suspects)),
            "chance_recall_at_k": k / len(result.paths),
            "suggested_label_right": sum(f.suggested == injected["relabelled"].get(f.paths[0])
                                         for f in result.of_kind("label") if f.paths[0] in noisy)
            / max(1, len(noisy & set(suspects))),
            "leaks_injected": len(injected["leaks"]), "leaks_found": leaks_found,
            "leak_pairs_listed": len(pairs), "blank_flagged": injected["blank"] in outliers,
            "outliers_listed": len(outliers)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image-size", type=int, help="embedding resolution (default: the model's 224)")
    ap.add_argument("--device-note", default="", help="free text describing the machine")
    args = ap.parse_args()
    data = HERE / ".data"
    messy = data / "audit-messy"
    injected = make_messy(build_folder(data, 80, 20), messy)
    ds = load_dataset(messy, tempfile.gettempdir())
    runs = []
    with tempfile.TemporaryDirectory() as ws:
        for name in ("cold", "warm"):
            t, cpu = time.time(), time.process_time()
            result = run_audit(ds, ws, ModelConfig(image_size=args.image_size))
            # CPU seconds of all threads: on a shared machine wall time depends on the neighbours, this does not
            runs.append({"run": name, "seconds": round(time.time() - t, 1),
                         "cpu_seconds": round(time.process_time() - cpu, 1),
                         "parts": {k: round(v, 1) for k, v in result.seconds.items()}})
            print(name, runs[-1], flush=True)
    quality = score(result, injected)
    print(json.dumps(quality, indent=2))
    out = {"images": len(ds.samples), "model": f"tf_efficientnet_lite0 (bundled weights, {args.image_size or 224} px)",
           "cpu_count": os.cpu_count(), "load_average_at_start": os.getloadavg(), "machine": platform.machine(),
           "note": args.device_note, "runs": runs, "quality": quality}
    stamp = datetime.date.today().isoformat()
    path = HERE / "results" / f"audit-{platform.machine()}-{os.cpu_count()}cpu-{args.image_size or 224}px-{stamp}.json"
    path.write_text(json.dumps(out, indent=2))
    print("wrote", path)


if __name__ == "__main__":
    main()
