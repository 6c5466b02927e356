"""Issue 15: how far the default run is from the physical floor, and where its seconds go.

Three things, each in **its own subprocess** (imports and interpreter start outside every clock,
so nothing is warm that a user's run would not have warm), on the same images and split:

- ``floor``: one inference pass over the training images at the run's resolution: decode (the
  engine's own decoder, ``ImageDataset``) + transform + forward, no grad, in the fastest dtype
  the CPU has (bf16 autocast + channels_last where it has bf16 units; fp32 is measured too and
  the faster of the two is the floor; without bf16 units only fp32, see ``fast_dtype``). Building the model is timed apart, not in the floor.
- ``baseline``: the embeddings-plus-head way (Teachable Machine): pooled features of every
  training image computed once (bf16 where fast), then a linear head trained on them for 50 cheap
  epochs (Adam, lr 1e-3, batch 16), and the held-out images' features once to score it.
- ``engine``: lora_gui's default run (only the data source set; ``--set section.field=value``
  changes one option, to compare a lever), from the data on disk to the saved adapter, with a
  timer around each of its pieces, wrapped from the outside: data scan, model build, LoRA
  injection, BatchNorm calibration, prefix plan, prefix cache (decode inside it shown apart),
  steps, validation, adapters, checkpoints.

``python benchmarks/floor.py`` prints the table and writes ``results/floor-<date>.json``.
Nothing here asserts a time.
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
from phase_timer import PhaseTimer
from reference_loop import peak_memory_mb, rss_mb

HEAD_EPOCHS, HEAD_LR, HEAD_BATCH = 50, 1e-3, 16


def _split(source: str, workspace: str):
    """(classes, train samples, val samples) exactly as the engine splits them."""
    from lora_gui.config import DataConfig
    from lora_gui.data.sources import load_dataset
    from lora_gui.data.split import split_dataset
    d = DataConfig(source=source)
    ds = load_dataset(source, workspace)
    train, val = split_dataset(ds, d.val_fraction, d.split_seed)
    return list(ds.classes), train, val


def _model(spec: dict, n_classes: int):
    from lora_gui.backbones.build import build_model, data_config
    from lora_gui.config import ModelConfig
    cfg = ModelConfig(name=spec["model"], weights=spec["weights"], image_size=spec["image_size"])
    model = build_model(cfg, n_classes).eval()
    return model, data_config(model, spec["image_size"])


def _batches(samples, dc: dict, batch_size: int):
    """Decoded + transformed batches, through the engine's own decoder (pre-shrunk, nothing kept)."""
    import torch

    from lora_gui.data.decoded_cache import DecodedCache, cache_max_side
    from lora_gui.data.transforms import ImageDataset, build_transform
    ds = ImageDataset(samples, build_transform(dc, "none", False), DecodedCache(0, cache_max_side(dc)))
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)


def _ctx(dtype: str):
    from contextlib import nullcontext

    import torch
    return torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()


def floor_worker(spec: dict) -> dict:
    import torch
    t0 = time.perf_counter()
    classes, train, _ = _split(spec["data"], spec["workspace"])
    t_scan = time.perf_counter() - t0
    t0 = time.perf_counter()
    model, dc = _model(spec, len(classes))
    if spec["dtype"] == "bf16":
        model = model.to(memory_format=torch.channels_last)
    t_build = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    with torch.inference_mode(), _ctx(spec["dtype"]):
        for x, _ in _batches(train, dc, spec["batch_size"]):
            model(x.contiguous(memory_format=torch.channels_last) if spec["dtype"] == "bf16" else x)
            n += len(x)
    t_pass = time.perf_counter() - t0
    return {"scan_s": t_scan, "build_s": t_build, "pass_s": t_pass, "cpu_s": time.process_time() - c0,
            "images": n, "images_per_s": n / t_pass,
            "dtype": spec["dtype"], "threads": torch.get_num_threads(), **peak_memory_mb("cpu")}


def _features(model, samples, dc, dtype: str, batch_size: int):
    import torch
    out = []
    with torch.inference_mode(), _ctx(dtype):
        for x, _ in _batches(samples, dc, batch_size):
            out.append(model.forward_head(model.forward_features(x), pre_logits=True).float())
    return torch.cat(out)


def baseline_worker(spec: dict) -> dict:
    import torch
    import torch.nn.functional as F
    torch.manual_seed(0)
    classes, train, val = _split(spec["data"], spec["workspace"])
    t0 = time.perf_counter()
    model, dc = _model(spec, len(classes))
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    feats = _features(model, train, dc, spec["dtype"], spec["batch_size"])
    t_feat = time.perf_counter() - t0
    labels = torch.tensor([s.label for s in train])
    head = torch.nn.Linear(feats.shape[1], len(classes))
    opt = torch.optim.Adam(head.parameters(), lr=HEAD_LR)
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # a head this small runs fastest on one thread (as the engine's probe)
    for _ in range(HEAD_EPOCHS):
        for idx in torch.randperm(len(labels), generator=g).split(HEAD_BATCH):
            loss = F.cross_entropy(head(feats[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    t_head = time.perf_counter() - t0
    torch.set_num_threads(threads)
    held = _held_out(spec)
    hfeats = _features(model, held, dc, spec["dtype"], spec["batch_size"])
    with torch.no_grad():
        acc = float((head(hfeats).argmax(1) == torch.tensor([s.label for s in held])).float().mean())
    return {"build_s": t_build, "features_s": t_feat, "head_s": t_head, "total_s": t_feat + t_head,
            "held_out_acc": acc, "train_images": len(train), "held_out_images": len(held), **peak_memory_mb("cpu")}


def _held_out(spec: dict) -> list:
    """The held-out test images (never seen by any run, not timed), labels by sorted class name."""
    from lora_gui.data.scan import Sample
    root = Path(spec["held_out"])
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    return [Sample(str(f), i) for i, c in enumerate(classes) for f in sorted((root / c).iterdir())]


def _held_out_acc(adapter_dir: Path, spec: dict) -> float:
    from lora_gui.inference.predict import load_adapter, predict
    held = _held_out(spec)
    loaded = load_adapter(adapter_dir)
    top = predict(loaded, [s.path for s in held], topk=1, batch_size=64)
    names = sorted(p.name for p in Path(spec["held_out"]).iterdir() if p.is_dir())
    return sum(t[0][0] == names[s.label] for t, s in zip(top, held)) / len(held)


def _set(config, assignment: str) -> None:
    """``section.field=value`` (value parsed as JSON when it can be) on a RunConfig."""
    path, _, raw = assignment.partition("=")
    section, field = path.split(".")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    setattr(getattr(config, section), field, value)
    getattr(config, section).__post_init__()


def engine_worker(spec: dict) -> dict:
    import torch

    from lora_gui.config import DataConfig, ModelConfig, RunConfig
    from lora_gui.data.sources import load_dataset
    from lora_gui.store.run_folder import RunFolder
    from lora_gui.training import loop
    from lora_gui.training.reporter import RecordingReporter
    timer = PhaseTimer.engine()
    config = RunConfig(model=ModelConfig(name=spec["model"], weights=spec["weights"], image_size=spec["image_size"]),
                       data=DataConfig(source=spec["data"]))
    for assignment in spec.get("set", []):
        _set(config, assignment)
    run = RunFolder(Path(spec["workspace"]) / f"engine-{os.getpid()}").create()
    reporter = RecordingReporter()
    baseline_rss = rss_mb()
    first_model = {}
    if hasattr(loop.Trainer, "_first_model"):   # the seconds until Test has a model (issue 15 goal 2)
        original, save = loop.Trainer._first_model, loop.Trainer._save_adapter

        def first(trainer):
            first_model["inside"] = True
            original(trainer)
            first_model["inside"] = False
            if trainer.best is not None:
                first_model["val_acc"] = trainer.best["val_acc"]
                first_model["scored_s"] = time.perf_counter() - t0

        def saved(trainer, which, metrics):
            save(trainer, which, metrics)
            # ready for Test: its first save as best/ (since 2026-12-03 before it is scored on the
            # validation images; an older tree saves it once, scored)
            if which == "best" and first_model.get("inside") and "s" not in first_model:
                first_model["s"] = time.perf_counter() - t0
        loop.Trainer._first_model, loop.Trainer._save_adapter = first, saved
    t0, c0 = time.perf_counter(), time.process_time()
    with timer.phase("data scan"):
        dataset = load_dataset(config.data.source, spec["workspace"])
    loop.Trainer(config, run, "cpu", reporter, dataset=dataset, workspace=spec["workspace"]).run()
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    timer.restore()
    epochs = [r for r in reporter.rows if r["kind"] == "epoch"]
    steps = [r for r in reporter.rows if r["kind"] == "step"]
    best = max(epochs, key=lambda r: (r["val_acc"] or 0)) if epochs else {}
    return {"total_s": total, "cpu_s": cpu, "phases": timer.report(total), "best_val_acc": best.get("val_acc"),
            "held_out_acc": _held_out_acc(run.path / "best", spec), "first_model_s": first_model.get("s"),
            "first_model_val_acc": first_model.get("val_acc"),
            "first_model_scored_s": first_model.get("scored_s"),
            "final_val_acc": epochs[-1]["val_acc"] if epochs else None, "epochs": len(epochs),
            "steps": len(steps), "set": spec.get("set", []), "log": run.log_tail(40), "phases_missing": timer.missing,
            "threads": torch.get_num_threads(), "rss_added_mb": peak_memory_mb("cpu")["peak_rss_mb"] - baseline_rss,
            **peak_memory_mb("cpu")}


WORKERS = {"floor": floor_worker, "baseline": baseline_worker, "engine": engine_worker}


def launch(kind: str, spec: dict, timeout: int = 1800) -> dict:
    """One worker in its own process (nice'd: the machine is shared); its JSON answer."""
    # the lora_gui measured is the one in spec["code"] (this checkout unless --code says otherwise),
    # ahead of whatever copy is installed in the environment
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_DISABLE_TELEMETRY="1",
               PYTHONPATH=os.pathsep.join([spec["code"], os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    proc = subprocess.run([sys.executable, __file__, "--worker", kind, json.dumps(spec)], capture_output=True,
                          text=True, timeout=timeout, env=env)
    if proc.returncode:
        raise RuntimeError(f"{kind} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tune_malloc() -> str:
    """Every worker (the floor and the baseline too) runs with the allocator settings the CLI and the
    app start with, so the floor stays the fastest pass this machine does (LORA_GUI_MALLOC_TUNING=0:
    glibc's defaults everywhere). An older tree without them (``--before``) runs with the defaults."""
    try:
        from lora_gui import malloc_tuning
    except ImportError:
        return "not in this lora_gui"
    return malloc_tuning.tune()


def fast_dtype() -> str:
    """bf16 where the CPU has bf16 units (the engine's own test), else fp32: on a CPU without them
    bf16 is emulated, ~11x slower than fp32 (2.7 against 30 images/s on an AVX2-only EPYC), so it is
    neither the floor nor a fair baseline there, and measuring it would only cost minutes."""
    from lora_gui.training.speed_levers import cpu_has_fast_bf16
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def measure(spec: dict, engine_sets: list[list[str]], repeat: int = 1) -> dict:
    """floor (bf16 and fp32), baseline and each engine variant, ``repeat`` times interleaved;
    the fastest of each is kept (the least disturbed on a shared machine), all are recorded."""
    out: dict = {"spec": spec, "load_before": load_average(), "runs": {}}
    fast = out["fast_dtype"] = fast_dtype()
    for _ in range(repeat):
        for dtype in ("bf16", "fp32") if fast == "bf16" else ("fp32",):
            _keep(out["runs"], f"floor-{dtype}", launch("floor", dict(spec, dtype=dtype)), "pass_s")
        _keep(out["runs"], "baseline", launch("baseline", dict(spec, dtype=fast)), "total_s")
        for sets in engine_sets:
            name = "engine" + "".join(f" {s}" for s in sets)
            _keep(out["runs"], name, launch("engine", dict(spec, set=sets)), "total_s")
        if spec.get("before"):   # the same default run with an older engine (--before)
            _keep(out["runs"], "engine before", launch("engine", dict(spec, code=spec["before"])), "total_s")
        # the floor again after the engines: this VM's speed drifts by up to ~30 % between minutes, and
        # the floor is the least disturbed pass of all (as each run's figure is its least disturbed)
        _keep(out["runs"], f"floor-{fast}", launch("floor", dict(spec, dtype=fast)), "pass_s")
    out["load_after"] = load_average()
    floors = [v for k, v in out["runs"].items() if k.startswith("floor-")]
    out["floor"] = min(floors, key=lambda r: r["pass_s"])
    f = out["floor"]["pass_s"]
    out["ratios_to_floor"] = {k: round(v["total_s"] / f, 2) for k, v in out["runs"].items() if "total_s" in v}
    # the same from every repeat's median (the least disturbed runs above can be lucky on a drifting VM)
    mid = statistics.median(out["runs"][f"floor-{fast}"]["all_pass_s"])
    out["median_ratios_to_floor"] = {
        "floor_s": mid,
        **{k: round(statistics.median(v["all_total_s"]) / mid, 2) for k, v in out["runs"].items() if "all_total_s" in v},
        **{f"{k} first model": round(statistics.median(v["all_first_model_s"]) / mid, 2)
           for k, v in out["runs"].items() if v.get("all_first_model_s")}}
    return out


def _keep(runs: dict, name: str, result: dict, key: str) -> None:
    """The least disturbed of a name's repeats (smallest ``key``), with every repeat's ``key`` (and
    first-model time) in ``all_<key>``."""
    old = runs.get(name)
    for k in (key, "first_model_s"):
        if k == key or result.get(k) is not None:
            result["all_" + k] = (old or {}).get("all_" + k, []) + [round(result[k], 3)]
    if old is None or result[key] < old[key]:
        runs[name] = result
    else:
        for k in (key, "first_model_s"):
            if "all_" + k in result:
                old["all_" + k] = result["all_" + k]


def table(m: dict) -> str:
    f = m["floor"]
    first = {k: r["first_model_s"] for k, r in m["runs"].items() if r.get("first_model_s")}
    lines = [f"first model ready (s): {first}" if first else "",
             f"x floor, medians of the repeats: {m.get('median_ratios_to_floor')}", f"floor: {f['images']} images, {f['dtype']}, {f['pass_s']:.2f} s ({f['images_per_s']:.0f} images/s); "
             f"model build {f['build_s']:.2f} s; load {m['load_before']} -> {m['load_after']}", "",
             "| run | wall s | x floor | held-out acc | peak RSS MB |", "|---|---:|---:|---:|---:|"]
    for name, r in m["runs"].items():
        if name.startswith("floor"):
            continue
        acc = r["held_out_acc"]
        lines.append(f"| {name} | {r['total_s']:.2f} | {m['ratios_to_floor'][name]:.2f}x | "
                     f"{acc:.1%} | {r['peak_rss_mb']:.0f} |")
    for name, r in m["runs"].items():
        if "phases" in r:
            lines += ["", f"Where the seconds of `{name}` go:", "", "| phase | s | share |", "|---|---:|---:|"]
            lines += [f"| {p} | {s:.2f} | {s / r['total_s']:.0%} |" for p, s in r["phases"].items()]
    return "\n".join(lines)


def _commit(code: str) -> str:
    try:
        return subprocess.run(["git", "-C", code, "log", "-1", "--format=%h %s"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "(not a git checkout)"


def fmnist_sets(train: int, val: int, held_out: int) -> tuple[Path, Path]:
    """(run folder with train/ + val/, held-out folder): Fashion-MNIST, the held-out images from its
    test file after the run's validation images (the same file order), so no image is in both."""
    from fmnist_folder import build_folder
    data = build_folder(HERE / ".data", train, val)
    bigger = build_folder(HERE / ".data", train, val + held_out)
    held = HERE / ".data" / f"fashion-mnist-{train}x{val}-heldout{held_out}"
    if not (held / ".complete").is_file():
        for cls in (bigger / "val").iterdir():
            (held / cls.name).mkdir(parents=True, exist_ok=True)
            for f in sorted(cls.iterdir()):
                if not (data / "val" / cls.name / f.name).exists():
                    (held / cls.name / f.name).write_bytes(f.read_bytes())
        (held / ".complete").write_text("ok\n")
    return data, held


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    p.add_argument("--train-per-class", type=int, default=20)
    p.add_argument("--val-per-class", type=int, default=5, help="the run's own validation images")
    p.add_argument("--held-out-per-class", type=int, default=100, help="scored after the runs, not timed")
    p.add_argument("--model", default="tf_efficientnet_lite0")
    p.add_argument("--weights", default="bundled")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32, help="floor/baseline inference batch")
    p.add_argument("--set", action="append", default=[], metavar="VARIANT",
                   help="an extra engine variant: 'data.augmentation=none' (';'-separated for several options)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--out", help="JSON file (default results/floor-<date>.json)")
    p.add_argument("--before", help="an older lora_gui source tree whose default run is measured too")
    p.add_argument("--code", default=str(HERE.parent), help="the lora_gui source tree to measure "
                   "(default: this checkout; e.g. an unpacked `git archive` of an older commit)")
    a = p.parse_args(argv)
    if a.worker:
        kind, spec = a.worker
        malloc = tune_malloc()
        print(json.dumps(dict(WORKERS[kind](json.loads(spec)), malloc=malloc)))
        return 0
    data, held_out = fmnist_sets(a.train_per_class, a.val_per_class, a.held_out_per_class)
    workspace = HERE / ".data" / "floor-runs"
    workspace.mkdir(parents=True, exist_ok=True)
    spec = {"code": str(Path(a.code).resolve()), "commit": _commit(a.code), "data": str(data),
            "held_out": str(held_out), "before": a.before and str(Path(a.before).resolve()), "workspace": str(workspace), "model": a.model, "weights": a.weights,
            "image_size": a.image_size, "batch_size": a.batch_size}
    m = measure(spec, [[]] + [v.split(";") for v in a.set], a.repeat)
    m["table_md"] = table(m)
    print(m["table_md"])
    out = Path(a.out or HERE / "results" / f"floor-{time.strftime('%Y-%m-%d')}.json")
    out.write_text(json.dumps(m, indent=1, default=str))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
