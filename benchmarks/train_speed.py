"""Training speed of lora_gui's engine against a plain peft loop (issue 7).

    python benchmarks/train_speed.py                     # 3 models x 4 variants, 2 epochs, 224 px
    python benchmarks/train_speed.py --image-size 128    # about 3x quicker on a CPU
    python benchmarks/train_speed.py --quick             # smoke test of the script, < 2 min
    python benchmarks/train_speed.py --steps 10          # timing only: no accuracy, fewer steps

Variants, each in its own subprocess (so peak memory is its own): (a) ``peft``:
peft LoRA, fp32, plain DataLoader; (b) ``full``: full fine-tuning; (c) ``probe``:
linear probe; (d) ``engine``: lora_gui's TrainingJob with default settings.
Same image folder (a train/ + val/ cut of Fashion-MNIST), same LoRA layers,
rank, batch size and resolution. Prints Markdown tables and writes
benchmarks/results/<device>-<date>.json. See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for p in (str(REPO), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

MODELS = ["vit_tiny_patch16_224", "resnet18", "tf_efficientnet_lite0"]
VARIANTS = {"peft": "(a) peft LoRA", "full": "(b) full FT", "probe": "(c) linear probe", "engine": "(d) lora_gui"}
BUNDLED = "tf_efficientnet_lite0"  # the only model with real weights offline
BOOKKEEPING = ("metrics_rows", "rng_snapshot", "loss_check", "to_device")  # engine phases timed by --profile


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated timm names")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="subset of " + ",".join(VARIANTS))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None, help="timing only: this many timed steps, no accuracy")
    ap.add_argument("--warmup", type=int, default=3, help="first steps left out of the median")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--train-per-class", type=int, default=40)
    ap.add_argument("--val-per-class", type=int, default=20)
    ap.add_argument("--predict-n", type=int, default=20, help="predictions timed per latency figure")
    ap.add_argument("--ref-workers", type=int, default=None,
                    help="DataLoader workers of the reference loops (default: 0 on CPU, 4 on a GPU)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run (a) and (d) this many times, interleaved, and keep each one's fastest run")
    ap.add_argument("--profile", action="store_true", help="also time the phases of the engine's steps")
    ap.add_argument("--quick", action="store_true",
                    help="tiny run to smoke-test this script (64 px, 1 epoch, 30 images; (b) and (c) on one model)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per variant before it is killed")
    ap.add_argument("--out", default=None, help="result JSON (default benchmarks/results/<device>-<date>.json)")
    ap.add_argument("--keep-runs", action="store_true", help="keep the engine's run folders")
    ap.add_argument("--show", metavar="JSON", help="print the tables of a results file again and exit")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.image_size = min(args.image_size, 64)
        args.epochs, args.warmup, args.predict_n = 1, 1, 3
        args.train_per_class, args.val_per_class = 3, 1
        args.steps = None if args.steps is None else min(args.steps, 2)
    return args


# --------------------------------------------------------------------------- #
# machine
# --------------------------------------------------------------------------- #

def machine_info(device: str) -> dict:
    import torch
    cpu = platform.processor() or ""
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        cpu = re.search(r"model name\s*:\s*(.*)", text).group(1).strip()
        flags = re.search(r"flags\s*:\s*(.*)", text).group(1)
    except (OSError, AttributeError):
        pass
    info = {"hostname": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version(),
            "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")(),
            "cpu_bf16": {"avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
                         "mkldnn_bf16": _safe(lambda: bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))},
            "loadavg_start": os.getloadavg(), "device": device}
    for pkg in ("torch", "torchvision", "timm", "peft"):
        info[pkg] = _safe(lambda: __import__(pkg).__version__)
    if device.startswith("cuda"):
        info.update(gpu=torch.cuda.get_device_name(device), gpu_bf16=torch.cuda.is_bf16_supported(),
                    gpu_memory_gb=round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1),
                    cuda=torch.version.cuda)
    return info


def _safe(fn):
    try:
        return fn()
    except Exception as exc:
        return f"unknown ({type(exc).__name__})"


def device_tag(info: dict) -> str:
    name = info.get("gpu") or f"cpu-{info['cpu']}-{info['cpu_count']}c"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# --------------------------------------------------------------------------- #
# one variant in its own process
# --------------------------------------------------------------------------- #

def run_worker(spec_file: str) -> int:
    spec = json.loads(Path(spec_file).read_text())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        if spec["variant"] == "engine":
            import engine_run
            result = engine_run.run(spec)
        elif spec["variant"] == "engine-profile":
            import engine_run
            result = engine_run.profile(spec)
        else:
            import reference_loop
            result = reference_loop.run(spec)
        result["ok"] = True
    except Exception as exc:
        import traceback
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    Path(spec["result_file"]).write_text(json.dumps(result, default=str))
    return 0 if result["ok"] else 1


def launch(spec: dict, timeout: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        spec = dict(spec, result_file=f"{tmp}/result.json", workspace=f"{tmp}/runs")
        Path(f"{tmp}/spec.json").write_text(json.dumps(spec))
        env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(HERE), env.get("PYTHONPATH", "")])
        load0, t0 = os.getloadavg()[0], time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", f"{tmp}/spec.json"],
                                  env=env, cwd=str(REPO), capture_output=True, text=True, timeout=timeout)
            stderr = proc.stderr
        except subprocess.TimeoutExpired as exc:
            stderr = (exc.stderr or b"").decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            return {"ok": False, "error": f"timed out after {timeout} s", "stderr_tail": stderr[-2000:]}
        try:
            result = json.loads(Path(spec["result_file"]).read_text())
        except (OSError, ValueError):
            result = {"ok": False, "error": f"worker exited with {proc.returncode} and no result"}
        result.update(process_s=round(time.perf_counter() - t0, 1), loadavg_1min_before=load0,
                      loadavg_1min_after=os.getloadavg()[0])
        if not result.get("ok"):
            result["stderr_tail"] = stderr[-3000:]
        return result


# --------------------------------------------------------------------------- #
# tables
# --------------------------------------------------------------------------- #

def _f(v, fmt="{:.1f}", none="–"):
    return none if v is None or (isinstance(v, float) and v != v) else fmt.format(v)


def _mem(r: dict) -> float | None:
    return r.get("peak_cuda_mb", r.get("peak_rss_mb"))


def _acc(r: dict) -> str:
    """Validation accuracy; with --repeat, the range over the runs when they differ."""
    accs = sorted(x["val_acc"] for x in r.get("repeats", []) if x.get("val_acc") is not None)
    if len(accs) > 1 and accs[0] != accs[-1]:
        return f"{_f(r.get('val_acc'), '{:.1%}')} ({accs[0]:.1%}-{accs[-1]:.1%})"
    return _f(r.get("val_acc"), "{:.1%}")


def _added(r: dict) -> float | None:
    """Peak RSS above the process's RSS once torch/timm (and peft) were imported."""
    if r.get("peak_rss_mb") is None or r.get("baseline_rss_mb") is None:
        return None
    return r["peak_rss_mb"] - r["baseline_rss_mb"]


def _levers(r: dict) -> str:
    lv = r.get("levers") or {}
    on = [f"{k}={v}" for k, v in lv.items() if v not in (False, None, "off", 0) and k != "threads"]
    return ", ".join(on) or "none"


def tables(results: dict, meta: dict) -> str:
    mem_name = "peak CUDA MB" if meta["device"].startswith("cuda") else "peak RSS MB"
    lines = [f"Training steps on {meta['machine'].get('gpu') or meta['machine']['cpu']} "
             f"({meta['machine']['cpu_count']} cores, torch {meta['machine']['torch']}), batch {meta['batch_size']}, "
             f"{meta['image_size']} px, LoRA r={meta['rank']}, {meta['epochs_note']}, "
             f"{meta['n_train']} train / {meta['n_val']} val images (Fashion-MNIST, 10 classes).", "",
             f"| model | variant | trainable params | images/s | images/CPU-s | end-to-end images/s | {mem_name} | "
             "val acc | predict ms | train wall s | levers used |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for model, variants in results.items():
        init = "" if model == BUNDLED else " (random init)"
        for v, r in variants.items():
            if v == "engine-profile":
                continue
            if not r.get("ok"):
                lines.append(f"| {model}{init} | {VARIANTS.get(v, v)} | failed: {r.get('error', '?')[:80]} |||||||")
                continue
            lines.append(f"| {model}{init} | {VARIANTS.get(v, v)} | {_f(r.get('trainable_params'), '{:,}')} | "
                         f"{_f(r['images_per_s'])} | {_f(r.get('images_per_cpu_s'))} | "
                         f"{_f(r.get('end_to_end_images_per_s'))} | {_f(_mem(r), '{:.0f}')} | {_acc(r)} | "
                         f"{_f((r.get('predict') or {}).get('median_ms'))} | {_f(r.get('train_wall_s'))} | "
                         f"{_levers(r) if v == 'engine' else '–'} |")
    added = "" if meta["device"].startswith("cuda") else " RSS added by training (d)/(a) |"
    lines += ["", f"| model | images/s (d)/(a) | images/CPU-s (d)/(a) | end-to-end (d)/(a) | {mem_name} (d)/(a) |{added} val acc (a) → (d) | "
              "predict ms (a) / (d) / (d) while training | training images/s while predicting |",
              "|---|---:|---:|---:|---:|" + ("---:|" if added else "") + "---|---|---:|"]
    for model, variants in results.items():
        a, d = variants.get("peft", {}), variants.get("engine", {})
        if not (a.get("ok") and d.get("ok")):
            continue
        during = d.get("predict_during_training") or {}
        lines.append(f"| {model} | {_ratio(d['images_per_s'], a['images_per_s'])} | "
                     f"{_ratio(d.get('images_per_cpu_s'), a.get('images_per_cpu_s'))} | "
                     f"{_ratio(d.get('end_to_end_images_per_s'), a.get('end_to_end_images_per_s'))} | "
                     f"{_ratio(_mem(d), _mem(a))} | " + (f"{_ratio(_added(d), _added(a))} | " if added else "") +
                     f"{_acc(a)} → {_acc(d)} | "
                     f"{_f(a['predict'].get('median_ms'))} / {_f(d['predict'].get('median_ms'))} / "
                     f"{_f(during.get('median_ms'))} | {_f(during.get('train_images_per_s'))} |")
    prof = {m: v["engine-profile"] for m, v in results.items() if v.get("engine-profile", {}).get("ok")}
    if prof:
        lines += ["", "Where a step's time goes (mean ms per timed step; data = decoding + transforms + collation; "
                  "bookkeeping = the engine's metrics rows, RNG snapshot, loss check and device copy; other = the rest):", "",
                  "| model | loop | data | forward | backward | optimizer | bookkeeping | other | step |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for m, p in prof.items():
            for name, ph in (("(a) peft", results[m].get("peft", {}).get("phases_ms")), ("(d) engine", p["phases_ms"])):
                if ph:
                    book = sum(ph.get(k, 0.0) for k in BOOKKEEPING)
                    other = ph["s"] - ph["data"] - ph["forward"] - ph["backward"] - ph["optimizer"] - book
                    lines.append(f"| {m} | {name} | " + " | ".join(_f(ph[k], "{:.0f}") for k in
                                 ("data", "forward", "backward", "optimizer")) +
                                 f" | {book:.0f} | {other:.0f} | {ph['s']:.0f} |")
    return "\n".join(lines)


def _ratio(x, y) -> str:
    return f"{x / y:.2f}x" if x and y else "–"


# --------------------------------------------------------------------------- #

def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        # both loops with the allocator settings the CLI and the app start with (floor.tune_malloc):
        # the reference is not handicapped by glibc's defaults that lora_gui itself avoids
        from floor import tune_malloc
        tune_malloc()
        return run_worker(args.worker)
    if args.show:
        saved = json.loads(Path(args.show).read_text())
        print(tables(saved["results"], saved["meta"]))
        return 0
    from fmnist_folder import build_folder, list_split
    from reference_loop import resolve_device
    device = resolve_device(args.device)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise SystemExit(f"unknown variant(s) {bad}; choose from {', '.join(VARIANTS)}")
    # (a) and (d) run back to back, so that a change in the machine's load hits both alike
    pair = [v for v in ("peft", "engine") if v in variants]
    order = pair * max(1, args.repeat) + [v for v in ("probe", "full") if v in variants]
    if args.profile:
        order.insert(order.index("engine") + 1 if "engine" in order else len(order), "engine-profile")
    root = build_folder(HERE / ".data", args.train_per_class, args.val_per_class)
    n_train, n_val = len(list_split(root, "train")), len(list_split(root, "val"))
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    workers = args.ref_workers if args.ref_workers is not None else (4 if device.startswith("cuda") else 0)
    info = machine_info(device)
    if info["loadavg_start"][0] > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {info['loadavg_start'][0]:.1f} on {os.cpu_count()} cores: "
              "other work on this machine will distort the timings", file=sys.stderr)
    out = Path(args.out) if args.out else (HERE / "results" / f"{device_tag(info)}-{dt.date.today().isoformat()}-"
                                           f"{args.image_size}px{'-steps' if args.steps else ''}"
                                           f"{'-quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": device, "machine": info, "batch_size": args.batch_size, "image_size": args.image_size,
            "rank": args.rank, "n_train": n_train, "n_val": n_val, "epochs": args.epochs,
            "steps": args.steps, "warmup": args.warmup, "quick": args.quick, "ref_workers": workers,
            "epochs_note": f"{args.warmup} warm-up + {args.steps} timed steps" if args.steps else
                           f"{args.epochs} epoch(s), median after {args.warmup} warm-up steps",
            "weights": {m: "bundled ImageNet" if m == BUNDLED else "random (no pretrained weights offline)"
                        for m in models},
            "command": " ".join(sys.argv), "date": dt.datetime.now().isoformat(timespec="seconds")}
    started = time.perf_counter()
    results: dict[str, dict] = {}
    for model in models:
        results[model] = {}
        for variant in order:
            if args.quick and variant in ("full", "probe") and model != _quick_extra_model(models):
                continue  # the same loop as (a) with other parameters trainable: one model checks it
            spec = {"model": model, "weights": "bundled" if model == BUNDLED else "random", "variant": variant,
                    "data_root": str(root), "num_classes": len(classes), "n_train": n_train,
                    "image_size": args.image_size, "batch_size": args.batch_size, "rank": args.rank,
                    "epochs": args.epochs, "steps": args.steps, "warmup": args.warmup, "device": args.device,
                    "ref_workers": workers, "predict_n": args.predict_n, "seed": 0, "profile": args.profile,
                    "keep_runs": args.keep_runs}
            print(f"[{time.perf_counter() - started:6.0f} s] {model} {variant} ...", file=sys.stderr, flush=True)
            r = launch(spec, args.timeout)
            results[model][variant] = _keep_fastest(results[model].get(variant), r)
            msg = (f"{_f(r.get('images_per_s'))} img/s, {_f(r.get('images_per_cpu_s'))} img/CPU-s, peak "
                   f"{_f(_mem(r), '{:.0f}')} MB, val acc {_f(r.get('val_acc'), '{:.1%}')}"
                   if r.get("ok") and "images_per_s" in r else "ok" if r.get("ok") else
                   f"FAILED: {r.get('error')}\n{r.get('stderr_tail', '')[-1500:]}")
            print(f"         {msg} ({r.get('process_s')} s, load {r.get('loadavg_1min_before', 0):.1f})",
                  file=sys.stderr, flush=True)
            _save(out, meta, results, started, partial=True)  # a later crash keeps what was measured
        _check_targets(results[model])
    table = _save(out, meta, results, started, partial=False)
    print(table)
    print(f"\nwrote {out} ({meta['wall_s']:.0f} s in all)", file=sys.stderr)
    return 0 if all(r.get("ok") for v in results.values() for r in v.values()) else 1


def _quick_extra_model(models: list[str]) -> str:
    return "resnet18" if "resnet18" in models else models[0]


def _keep_fastest(old: dict | None, new: dict) -> dict:
    """Of repeated runs keep the fastest (the least disturbed); every run's figures ride along."""
    if old is None:
        return new
    runs = old.pop("repeats", [_summary(old)]) + [_summary(new)]
    best = new if (new.get("images_per_s") or 0) > (old.get("images_per_s") or 0) else old
    best["repeats"] = runs
    return best


def _summary(r: dict) -> dict:
    keys = ("ok", "images_per_s", "images_per_cpu_s", "end_to_end_images_per_s", "peak_rss_mb", "peak_cuda_mb",
            "val_acc", "loadavg_1min_before", "loadavg_1min_after")
    return {k: r.get(k) for k in keys if k in r}


def _save(out: Path, meta: dict, results: dict, started: float, partial: bool) -> str:
    meta.update(wall_s=round(time.perf_counter() - started, 1), partial=partial)
    meta["machine"]["loadavg_end"] = os.getloadavg()
    ordered = {m: {v: r[v] for v in [*VARIANTS, "engine-profile"] if v in r} for m, r in results.items()}
    table = tables(ordered, meta)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps({"meta": meta, "results": ordered, "table_md": table}, indent=1, default=str))
    tmp.replace(out)
    return table


def _check_targets(variants: dict) -> None:
    """The reference and the engine must train exactly the same layers."""
    a, d = variants.get("peft", {}), variants.get("engine", {})
    if a.get("ok") and d.get("ok") and sorted(a.get("layers") or []) != sorted(d.get("layers") or []):
        for r in (a, d):
            r["targets_differ"] = True
        print("warning: the engine's LoRA layers differ from the reference's", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
