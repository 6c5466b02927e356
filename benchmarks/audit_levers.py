"""What each speed lever of the health check (issue 17) buys, measured in one run on this machine.

Interleaved on the same images, so both sides see the same neighbours' load:
- embedding: the previous path (a DataLoader, NCHW tensors, full-size decode, no prefetch) against
  ``health.embeddings.Embedder`` (channels-last, images shrunk while read, the next batch decoded in a
  thread while the model runs);
- the label check's k-fold logistic regressions (``health.labels.label_suspects``) with OpenBLAS's
  default threads against one thread (``threadpoolctl``), which ``run_audit`` now uses.
Writes ``benchmarks/results/audit-levers-<machine>-<date>.json``. A script, not a test.

    python benchmarks/audit_levers.py [--images 320] [--rounds 2]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from fmnist_folder import build_folder  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from lora_gui.config import ModelConfig  # noqa: E402
from lora_gui.data import ImageDataset, Sample, load_dataset  # noqa: E402
from lora_gui.health import labels  # noqa: E402
from lora_gui.health.embeddings import BATCH, Embedder  # noqa: E402


@torch.inference_mode()
def previous_embedding(emb: Embedder, paths: list[str]) -> np.ndarray:
    """The embedding loop as it was before the levers (same model, NCHW)."""
    model = emb.model.to(memory_format=torch.contiguous_format)
    try:
        loader = torch.utils.data.DataLoader(ImageDataset([Sample(p, 0) for p in paths], emb.transform),
                                             batch_size=BATCH, num_workers=0)
        return np.concatenate([model.forward_head(model.forward_features(x), pre_logits=True).numpy()
                               for x, _ in loader])
    finally:
        emb.model.to(memory_format=torch.channels_last)


def timed(fn) -> tuple[float, float, object]:
    t, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t, time.process_time() - cpu, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=320)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    ds = load_dataset(build_folder(HERE / ".data", 80, 20), tempfile.gettempdir())
    paths = [s.path for s in ds.samples][:args.images]
    y_all = np.array([s.label for s in ds.samples])
    emb = Embedder(ModelConfig())
    emb(paths[:BATCH])   # warm-up: first-call allocations
    rows = {"embedding_before": [], "embedding_after": [], "labels_blas_default": [], "labels_one_blas_thread": []}
    features = None
    for _ in range(args.rounds):
        for name, fn in (("embedding_before", lambda: previous_embedding(emb, paths)),
                         ("embedding_after", lambda: emb(paths))):
            wall, cpu, out = timed(fn)
            rows[name].append({"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)})
            features = out
        y = y_all[:len(features)]
        wall, cpu, _ = timed(lambda: labels.label_suspects(features, y))
        rows["labels_blas_default"].append({"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)})
        with threadpool_limits(limits=1, user_api="blas"):
            wall, cpu, _ = timed(lambda: labels.label_suspects(features, y))
        rows["labels_one_blas_thread"].append({"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)})
        print(json.dumps({k: v[-1] for k, v in rows.items()}), flush=True)

    def median(name, key):
        return float(np.median([r[key] for r in rows[name]]))
    ratios = {"embedding_wall": median("embedding_before", "wall_s") / median("embedding_after", "wall_s"),
              "embedding_cpu": median("embedding_before", "cpu_s") / median("embedding_after", "cpu_s"),
              "labels_wall": median("labels_blas_default", "wall_s") / median("labels_one_blas_thread", "wall_s")}
    out = {"images": len(paths), "model": "tf_efficientnet_lite0 (bundled weights, 224 px)", "rounds": rows,
           "speedup_before_over_after": {k: round(v, 2) for k, v in ratios.items()},
           "cpu_count": os.cpu_count(), "load_average_at_start": os.getloadavg(), "torch_threads": torch.get_num_threads()}
    print(json.dumps(out["speedup_before_over_after"]))
    path = HERE / "results" / f"audit-levers-{platform.machine()}-{os.cpu_count()}cpu-{datetime.date.today()}.json"
    path.write_text(json.dumps(out, indent=2))
    print("wrote", path)


if __name__ == "__main__":
    main()
