"""Issue 15 goal 6: time and memory of the default run from 200 to 5,000 training images, and a
plan for 50,000 measured on the way.

For each size (Fashion-MNIST, 10 classes, 5 validation images per class): the floor (one inference
pass over the training images in the CPU's fastest dtype, ``floor.py``) and the default run (``floor.py``'s
engine worker: per-phase seconds, peak RSS, RSS added by the run), each in its own process.
At 1,000 images the run is repeated with its prefix cache forced into a file on disk
(``data.cache_mb=1``), which is where a 50,000-image cache goes by default: the two give the
cost of the file, and the per-image slopes give the 50,000-image estimate.

``python benchmarks/scale.py`` writes ``results/scale-<date>.json``.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from floor import fast_dtype, fmnist_sets, launch, load_average


def _cache_mb(result: dict) -> float | None:
    for line in result.get("log", []):
        m = re.search(r"frozen prefix cached .*\((\d+) MB", line)
        if m:
            return float(m.group(1))
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="20,100,500", help="training images per class (10 classes)")
    p.add_argument("--spill-at", type=int, default=100, help="per class: the size also run with the cache on disk")
    p.add_argument("--out")
    a = p.parse_args(argv)
    out: dict = {"load_before": load_average(), "sizes": {}}
    target = Path(a.out or HERE / "results" / f"scale-{time.strftime('%Y-%m-%d')}.json")
    for per_class in [int(s) for s in a.sizes.split(",")]:
        data, held = fmnist_sets(per_class, 5, 100)
        workspace = HERE / ".data" / "scale-runs"
        workspace.mkdir(parents=True, exist_ok=True)
        spec = {"code": str(HERE.parent), "data": str(data), "held_out": str(held), "workspace": str(workspace),
                "model": "tf_efficientnet_lite0", "weights": "bundled", "image_size": 224, "batch_size": 32}
        row = {"floor": launch("floor", dict(spec, dtype=fast_dtype())), "engine": launch("engine", spec)}
        if per_class == a.spill_at:
            row["engine_disk_cache"] = launch("engine", dict(spec, set=["data.cache_mb=1"]))
        row["cache_mb"] = _cache_mb(row["engine"])
        row["x_floor"] = row["engine"]["total_s"] / row["floor"]["pass_s"]
        # CPU seconds of all threads: less disturbed by other processes on a shared machine than wall time
        row["x_floor_cpu"] = row["engine"]["cpu_s"] / row["floor"]["cpu_s"]
        out["sizes"][per_class * 10] = row
        print(per_class * 10, "images:", f"run {row['engine']['total_s']:.1f} s = {row['x_floor']:.2f}x floor, "
              f"peak RSS {row['engine']['peak_rss_mb']:.0f} MB, cache {row['cache_mb']} MB", flush=True)
        out["plan_50000"] = plan(out["sizes"], a.spill_at * 10)
        target.write_text(json.dumps(out, indent=1, default=str))   # kept as it goes: the big sizes are slow
    out["plan_50000"] = plan(out["sizes"], a.spill_at * 10)
    out["load_after"] = load_average()
    target.write_text(json.dumps(out, indent=1, default=str))
    print(json.dumps(out["plan_50000"], indent=1))
    print(f"wrote {target}")
    return 0


def plan(sizes: dict, spill_size: int) -> dict:
    """50,000 images, extrapolated from the largest measured size (time and cache grow linearly
    with the images; the cache goes to disk above half the available memory or cache_mb)."""
    n = max(sizes)
    big = sizes[n]
    scale = 50_000 / n
    est = {"from_size": n, "cache_mb": big["cache_mb"] and big["cache_mb"] * scale,
           "run_s_in_memory": big["engine"]["total_s"] * scale, "floor_s": big["floor"]["pass_s"] * scale}
    spill = sizes.get(spill_size, {})
    if "engine_disk_cache" in spill:
        factor = spill["engine_disk_cache"]["total_s"] / spill["engine"]["total_s"]
        est["disk_over_memory_at_%d" % spill_size] = round(factor, 3)
        est["run_s_with_cache_on_disk"] = est["run_s_in_memory"] * factor
        est["rss_added_mb_disk_vs_memory_at_%d" % spill_size] = (spill["engine_disk_cache"]["rss_added_mb"],
                                                                   spill["engine"]["rss_added_mb"])
    return est


if __name__ == "__main__":
    sys.exit(main())
