"""Issue 15 goal 4: the app trains as fast as the CLI, and predicts quickly while it trains.

Three scenarios, each in its own process, on the same images (Fashion-MNIST, the default model):

- ``cli``: a ``TrainingJob`` as the CLI starts it (``interactive=False``): images/s per step.
- ``app``: as the app starts it (``interactive=True``: every core, the yield gate, idle threads
  hand back their OpenMP team, the training thread at a lower priority), with the prediction model
  registered as the app registers it (``PREDICTIONS.watch``). Prediction latency idle first, then
  while the job trains (one prediction every 0.2 s, a webcam's pace), and the job's images/s
  meanwhile and without predictions.
- ``app-no-release``: the same with ``LORA_GUI_OPENMP_RELEASE=0`` (idle OpenMP teams are kept,
  ``lora_gui/openmp_teams.py``), as the app was shipped for a while.
- ``app-old``: the app before issue 15, reproduced: training on ``cpu_count - 1`` threads
  (``num_threads``), predictions not registered with the gate, no team release, normal priority.

Predictions use the adapter the ``cli`` run saved (``load_adapter`` + ``predict``, one image).
``python benchmarks/app_vs_cli.py`` prints the table and writes ``results/app-vs-cli-<date>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from floor import fmnist_sets, load_average, tune_malloc

PREDICTIONS_N, PREDICT_EVERY_S = 20, 0.2


def _job(spec: dict, name: str, epochs: int, interactive: bool, threads: int = 0):
    from lora_gui.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from lora_gui.jobs.training_job import TrainingJob
    cfg = RunConfig(model=ModelConfig(image_size=spec["image_size"]), data=DataConfig(source=spec["data"]),
                    train=TrainConfig(epochs=epochs, num_threads=threads))
    return TrainingJob(cfg, workspace=spec["workspace"], run_dir=str(Path(spec["workspace"]) / name),
                       interactive=interactive)


def _rate(rows: list[dict], since: float = 0.0, until: float = float("inf")) -> float | None:
    kept = [r["images_per_s"] for r in rows if since <= r["time"] <= until]
    return statistics.median(kept[2:] if len(kept) > 4 else kept) if kept else None


def _latencies(fn, n: int, every: float) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
        time.sleep(max(0.0, every - out[-1] / 1000))
    return out


def _summary(ms: list[float]) -> dict:
    s = sorted(ms)
    return {"median_ms": statistics.median(s), "p90_ms": s[int(0.9 * (len(s) - 1))], "n": len(s)}


def worker(kind: str, spec: dict) -> dict:
    import torch

    from lora_gui.inference.predict import load_adapter, predict
    from lora_gui.training.yield_gate import PREDICTIONS
    if kind == "cli":
        job = _job(spec, f"cli-{os.getpid()}", 3, interactive=False).start()
        job.wait()
        snap = job.snapshot(last_steps=10**6)
        return {"status": snap.status, "images_per_s": _rate(snap.step_rows), "run": str(job.run.path)}
    old = kind == "app-old"
    from lora_gui import openmp_teams
    from lora_gui.jobs import background_priority
    if kind in ("app-no-release", "app-old"):
        os.environ[openmp_teams.SWITCH] = "0"
    if old:
        os.environ[background_priority.SWITCH] = "0"
    loaded = load_adapter(Path(spec["adapter_run"]) / "best")
    if not old:
        PREDICTIONS.watch(loaded.model)
    image = spec["image"]
    one = lambda: predict(loaded, [image], topk=1)
    for _ in range(3):
        one()
    torch.set_num_threads(os.cpu_count())
    idle = _latencies(one, PREDICTIONS_N, PREDICT_EVERY_S)
    job = _job(spec, f"{kind}-{os.getpid()}", 30, interactive=True,
               threads=max(1, (os.cpu_count() or 2) - 1) if old else 0).start()
    while len(job.snapshot(last_steps=10).step_rows) < 6:   # in the training loop, past its first steps
        time.sleep(0.05)
    quiet_from = time.time()
    time.sleep(3)
    start = time.time()
    busy = _latencies(one, PREDICTIONS_N, PREDICT_EVERY_S)
    end = time.time()
    job.stop()
    job.wait()
    rows = job.snapshot(last_steps=10**6).step_rows
    # idle before and after the training: the less disturbed of the two (a shared machine's load
    # comes and goes)
    after = _latencies(one, PREDICTIONS_N, PREDICT_EVERY_S)
    idle = min(idle, after, key=statistics.median)
    return {"idle": _summary(idle), "while_training": _summary(busy),
            "images_per_s_alone": _rate(rows, quiet_from, start), "images_per_s_while_predicting": _rate(rows, start, end),
            "threads": job.run.record().speed.get("threads"), "yields": PREDICTIONS.yields,
            "waited_s": round(PREDICTIONS.waited_s, 3)}


def gate_overhead(pairs: int = 15, image_size: int = 160) -> dict:
    """What the yield points cost when nobody predicts: training steps of the default model with
    the gate's hooks and without, alternated in one process (a shared machine's load drifts alike
    over both), median of the per-pair ratios."""
    import torch
    import torch.nn.functional as F

    from lora_gui import lora
    from lora_gui.backbones.build import build_model
    from lora_gui.config import LoraConfig, ModelConfig
    from lora_gui.training.yield_gate import YieldGate
    torch.manual_seed(0)
    model = build_model(ModelConfig(image_size=image_size), 10)
    lora.inject_lora(model, LoraConfig())
    lora.train_mode(model)
    x, y = torch.randn(16, 3, image_size, image_size), torch.randint(0, 10, (16,))
    gate = YieldGate()

    def step() -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t0
    for _ in range(3):
        step()
    ratios, hooks = [], 0
    for _ in range(pairs):
        plain = step()
        handles = gate.install(model)
        hooks = len(handles)
        gated = step()
        for h in handles:
            h.remove()
        ratios.append(gated / plain)
    return {"median_ratio": statistics.median(ratios), "ratios": ratios, "yield_points": hooks,
            "image_size": image_size}


def launch(kind: str, spec: dict) -> dict:
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_DISABLE_TELEMETRY="1",
               PYTHONPATH=str(HERE.parent))
    proc = subprocess.run([sys.executable, __file__, "--worker", kind, json.dumps(spec)], capture_output=True,
                          text=True, env=env, timeout=1800)
    if proc.returncode:
        raise RuntimeError(f"{kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _keep(r: dict, kind: str, result: dict, badness) -> None:
    r.setdefault("all", {}).setdefault(kind, []).append(result)
    if kind not in r or badness(result) < badness(r[kind]):
        r[kind] = result


def table(r: dict) -> str:
    cli = r["cli"]["images_per_s"]
    lines = ["| scenario | train images/s alone | while predicting | vs CLI | predict ms idle | while training "
             "| ratio |", "|---|---:|---:|---:|---:|---:|---:|",
             f"| CLI | {cli:.1f} | – | 1.00x | – | – | – |"]
    for kind in ("app", "app-no-release", "app-old"):
        if kind not in r:
            continue
        a = r[kind]
        ratio = a["while_training"]["median_ms"] / a["idle"]["median_ms"]
        lines.append(f"| {kind} | {a['images_per_s_alone']:.1f} | {a['images_per_s_while_predicting']:.1f} | "
                     f"{a['images_per_s_alone'] / cli:.2f}x | {a['idle']['median_ms']:.1f} | "
                     f"{a['while_training']['median_ms']:.1f} (p90 {a['while_training']['p90_ms']:.1f}) | {ratio:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--overhead-only", action="store_true", help="only the yield points' cost without predictions")
    p.add_argument("--out")
    a = p.parse_args(argv)
    if a.worker:
        kind = a.worker[0]
        malloc = tune_malloc()   # as the CLI and the app start
        result = gate_overhead() if kind == "overhead" else worker(kind, json.loads(a.worker[1]))
        print(json.dumps(dict(result, malloc=malloc)))
        return 0
    if a.overhead_only:   # only the gate's cost, added to an existing results file
        target = Path(a.out or HERE / "results" / f"app-vs-cli-{time.strftime('%Y-%m-%d')}.json")
        r = json.loads(target.read_text()) if target.is_file() else {}
        r["gate_overhead"] = launch("overhead", {})
        target.write_text(json.dumps(r, indent=1))
        print(json.dumps(r["gate_overhead"]))
        return 0
    data, held = fmnist_sets(20, 5, 100)
    workspace = HERE / ".data" / "app-vs-cli-runs"
    workspace.mkdir(parents=True, exist_ok=True)
    spec = {"data": str(data), "workspace": str(workspace), "image_size": a.image_size,
            "image": str(sorted(sorted(d for d in held.iterdir() if d.is_dir())[0].iterdir())[0])}
    r = {"load_before": load_average(), "spec": spec}
    for i in range(a.repeat):   # interleaved; each scenario's least disturbed run is kept, all are recorded
        cli = launch("cli", spec)
        spec.setdefault("adapter_run", cli["run"])
        _keep(r, "cli", cli, lambda x: -x["images_per_s"])
        for kind in ("app", "app-no-release", "app-old"):
            _keep(r, kind, launch(kind, spec), lambda x: x["while_training"]["median_ms"] + x["idle"]["median_ms"])
    r["gate_overhead"] = launch("overhead", {})
    r["load_after"] = load_average()
    r["table_md"] = table(r)
    print(r["table_md"])
    out = Path(a.out or HERE / "results" / f"app-vs-cli-{time.strftime('%Y-%m-%d')}.json")
    out.write_text(json.dumps(r, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
