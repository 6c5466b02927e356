"""Export parity: the run's whole validation split through the exported model and through PyTorch.

An export is only as good as its agreement with the model that was trained: top-1 agreement,
the accuracy of each, size on disk and latency per image on this CPU go into parity.json and the
README, and an export that agrees on fewer than ``MIN_AGREEMENT`` of the images is refused.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..data.decoded_cache import cache_max_side
from ..data.images import load_rgb
from ..data.transforms import build_transform
from ..errors import DataError, ExportError
from .adapter_file import AdapterMeta

MIN_AGREEMENT = 0.99
LATENCY_RUNS = 5          # single-image runs after one warm-up; the median is reported
CALIBRATION_IMAGES = 128  # int8: enough to see each activation's range, bounded so exports stay quick
PARITY_FILE = "parity.json"

Runner = Callable[[np.ndarray], np.ndarray]   # a float32 NCHW batch -> logits


def run_folder_of(adapter_file: Path) -> Path | None:
    """The training run an adapter file belongs to (a folder with config.json + split.json), if any."""
    for candidate in (adapter_file.parent, adapter_file.parent.parent):
        if (candidate / "config.json").is_file() and (candidate / "split.json").is_file():
            return candidate
    return None


def split_samples(run_dir: Path, part: str, classes: list[str]) -> list[tuple[str, int]]:
    """(path, class index) pairs of one part of the run's split.json; [] when it has none."""
    try:
        raw = json.loads((run_dir / "split.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{run_dir.name}/split.json cannot be read ({exc})") from None
    items = raw.get(part) if isinstance(raw, dict) else None
    out = []
    for entry in items if isinstance(items, list) else []:
        try:
            path, label = entry
        except (TypeError, ValueError):
            raise DataError(f"{run_dir.name}/split.json: each '{part}' entry must be [path, label]") from None
        if isinstance(label, str) and not label.isdigit():
            if label not in classes:
                raise DataError(f"{run_dir.name}/split.json: label {label!r} is not one of the model's classes")
            label = classes.index(label)
        out.append((str(path), int(label)))
    return out


def load_batch(samples: list[tuple[str, int]], meta: AdapterMeta) -> tuple[np.ndarray, np.ndarray]:
    """The images decoded and transformed exactly as evaluation does; unreadable ones left out."""
    transform = build_transform(meta.data_config, "none", training=False)
    max_side = cache_max_side(meta.data_config)
    xs, ys = [], []
    for path, label in samples:
        try:
            xs.append(transform(load_rgb(path, max_side)).numpy())
        except DataError:
            continue
        ys.append(label)
    if not xs:
        raise DataError(f"none of the {len(samples)} images of the run could be read (moved or deleted?)")
    return np.stack(xs).astype(np.float32), np.asarray(ys)


def calibration_images(adapter_file: Path, meta: AdapterMeta) -> np.ndarray:
    """Up to CALIBRATION_IMAGES training images of the run (its validation images if it has none)."""
    run = run_folder_of(adapter_file)
    if run is None:
        raise ExportError("int8 quantisation is calibrated on the run's training images, and this adapter is not "
                          "inside a run folder; export it from its run (Runs tab)")
    samples = split_samples(run, "train", list(meta.classes)) or split_samples(run, "val", list(meta.classes))
    if not samples:
        raise ExportError(f"run {run.name} lists no images in split.json to calibrate int8 with")
    step = max(1, len(samples) // CALIBRATION_IMAGES)   # spread over the classes, not the first folder only
    return load_batch(samples[::step][:CALIBRATION_IMAGES], meta)[0]


def torch_runner(model: nn.Module) -> Runner:
    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).float().numpy()
    return run


def _predict(run: Runner, x: np.ndarray, batch: int = 16) -> np.ndarray:
    return np.concatenate([run(x[i:i + batch]) for i in range(0, len(x), batch)]).argmax(axis=1)


def _latency_ms(run: Runner, image: np.ndarray) -> float:
    run(image)   # warm-up: first calls allocate and pick kernels
    times = []
    for _ in range(LATENCY_RUNS):
        start = time.perf_counter()
        run(image)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 2)


def _size_bytes(artefact: Path) -> int:
    files = [artefact] if artefact.is_file() else [p for p in artefact.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files)


def measure_parity(fmt: str, adapter_file: Path, meta: AdapterMeta, reference: nn.Module,
                   exported: Runner, artefact: Path, files: list[Path]) -> dict:
    """The validation split through both models; {'measured': False, 'why': ...} without one."""
    run = run_folder_of(adapter_file)
    samples = split_samples(run, "val", list(meta.classes)) if run is not None else []
    if not samples:
        why = ("the adapter is not inside a run folder" if run is None else
               f"run {run.name} has no validation images")
        return {"format": fmt, "measured": False, "why": f"no validation split: {why}"}
    x, y = load_batch(samples, meta)
    ref = torch_runner(reference)
    want, got = _predict(ref, x), _predict(exported, x)
    return {
        "format": fmt, "measured": True, "images": int(len(y)), "run": run.name,
        "top1_agreement": float((want == got).mean()), "disagreements": int((want != got).sum()),
        "accuracy_pytorch": float((want == y).mean()), "accuracy_export": float((got == y).mean()),
        "size_bytes": sum(_size_bytes(f) for f in files),
        "latency_ms_pytorch": _latency_ms(ref, x[:1]), "latency_ms_export": _latency_ms(exported, x[:1]),
        "threads": torch.get_num_threads(), "min_agreement": MIN_AGREEMENT,
    }


def check_parity(report: dict) -> None:
    """ExportError, with the numbers, when the export agrees with PyTorch on too few images."""
    if report.get("measured") and report["top1_agreement"] < MIN_AGREEMENT:
        raise ExportError(
            f"the {report['format']} export agrees with the PyTorch model on only {report['top1_agreement']:.1%} "
            f"of the {report['images']} validation images ({report['disagreements']} differ; at least "
            f"{MIN_AGREEMENT:.0%} needed); accuracy {report['accuracy_export']:.1%} vs "
            f"{report['accuracy_pytorch']:.1%} in PyTorch. The export was not written")


def parity_markdown(report: dict) -> str:
    """The README's parity section (and the Export tab's)."""
    if not report.get("measured"):
        return f"Parity with PyTorch: not measured ({report.get('why', 'no validation split')})."
    r = report
    return (f"Parity with PyTorch on the {r['images']} validation images of run `{r['run']}`:\n\n"
            "| | top-1 agreement | accuracy | latency / image (CPU, median) | size |\n|---|---|---|---|---|\n"
            f"| PyTorch | | {r['accuracy_pytorch']:.1%} | {r['latency_ms_pytorch']:.1f} ms | |\n"
            f"| {r['format']} | {r['top1_agreement']:.1%} ({r['disagreements']} differ) | "
            f"{r['accuracy_export']:.1%} | {r['latency_ms_export']:.1f} ms | {r['size_bytes'] / 2**20:.1f} MiB |\n")
