"""``python -m lora_gui``: the same engine as the app, without a browser.

Exit codes: 0 done, 2 bad input (the message says what), 1 training failed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _fmt_time(seconds) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def progress_line(snap, width: int = 24) -> str:
    filled = int(width * snap.progress)
    loss = snap.step_rows[-1]["loss"] if snap.step_rows else None
    loss_txt = f"loss {loss:.4f}" if loss is not None else "loss -"
    return (f"epoch {max(1, snap.epoch)}/{snap.epochs} [{'#' * filled}{'.' * (width - filled)}] "
            f"step {snap.step}/{snap.total_steps} {loss_txt} ETA {_fmt_time(snap.eta_s)}")


def summary_table(epoch_rows: list[dict]) -> str:
    head = f"{'epoch':>5} {'train loss':>10} {'train acc':>9} {'val loss':>9} {'val acc':>8}"
    lines = [head, "-" * len(head)]
    for r in epoch_rows:
        def f(v, pct=False):
            return "-" if v is None else (f"{v:.1%}" if pct else f"{v:.4f}")
        lines.append(f"{r['epoch']:>5} {f(r['train_loss']):>10} {f(r['train_acc'], True):>9} "
                     f"{f(r['val_loss']):>9} {f(r['val_acc'], True):>8}")
    return "\n".join(lines)


def build_config(args):
    """Preset (if any) first, then each flag given on the command line overrides it."""
    from .config import RunConfig, load_preset
    from .models import BUNDLED_MODEL
    cfg = load_preset(args.preset)[0] if args.preset else RunConfig()
    d = cfg.to_dict()
    if args.data:
        d["data"]["source"] = str(Path(args.data).expanduser().resolve())
    if args.model:
        d["model"]["name"] = args.model
        if not args.weights and args.model != BUNDLED_MODEL:
            d["model"]["weights"] = "hub"
    if args.weights:
        if args.weights in ("bundled", "hub", "random"):
            d["model"]["weights"], d["model"]["weights_file"] = args.weights, None
        else:
            d["model"]["weights"], d["model"]["weights_file"] = "file", str(Path(args.weights).resolve())
    for flag, section, key in (("targets", "lora", "targets"), ("rank", "lora", "rank"), ("alpha", "lora", "alpha"),
                               ("dropout", "lora", "dropout"), ("epochs", "train", "epochs"),
                               ("batch_size", "train", "batch_size"), ("lr", "train", "lr"),
                               ("seed", "train", "seed"), ("device", "train", "device"),
                               ("image_size", "model", "image_size"), ("augmentation", "data", "augmentation"),
                               ("val_fraction", "data", "val_fraction")):
        value = getattr(args, flag)
        if value is not None:
            d[section][key] = value
    if args.rank is not None and args.alpha is None and not args.preset:
        d["lora"]["alpha"] = float(2 * args.rank)  # the usual alpha = 2 x rank
    return RunConfig.from_dict(d)


def cmd_train(args) -> int:
    from .train import TrainingJob, preflight, user_errors
    try:
        if args.resume:
            job = TrainingJob.resume_run(args.resume)
        else:
            cfg = build_config(args)
            if not cfg.data.source:
                raise ValueError("--data is required: a folder of class folders, an archive or a CSV")
            workspace = Path(args.out).parent if args.out else Path(args.workspace)
            dataset = preflight(cfg, str(workspace))
            if not args.json:
                print(dataset.report.summary(), file=sys.stderr)
            job = TrainingJob(cfg, workspace=str(workspace), run_dir=args.out, dataset=dataset)
    except (*user_errors(), ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    job.start()
    tty = sys.stderr.isatty()
    last = ""
    try:
        while not job.wait(0.5):
            snap = job.snapshot(last_steps=1)
            line = progress_line(snap) if snap.status == "running" else f"{snap.status}: {snap.message}"
            if not args.json and line != last and (tty or snap.step != getattr(cmd_train, "_last_step", -1)):
                print(("\r" if tty else "") + line, end="" if tty else "\n", file=sys.stderr, flush=True)
                cmd_train._last_step = snap.step
                last = line
    except KeyboardInterrupt:
        print("\nstopping (the adapter so far is kept) ...", file=sys.stderr)
        job.stop()
        job.wait()
    snap = job.snapshot()
    if tty and not args.json:
        print(file=sys.stderr)
    if args.json:
        final = snap.epoch_rows[-1] if snap.epoch_rows else {}
        print(json.dumps({"status": snap.status, "message": snap.message, "run_dir": snap.run_dir,
                          "epochs": snap.epoch_rows, "final": final,
                          "best_val_acc": job.run.read_status().get("best_val_acc")}, indent=2))
    else:
        if snap.epoch_rows:
            print(summary_table(snap.epoch_rows))
        print(f"{snap.status}: {snap.message}\nrun folder: {snap.run_dir}")
    if snap.status == "failed":
        return 2 if job.failure_kind == "input" else 1
    return 0


def cmd_runs(args) -> int:
    from .runs import list_runs
    rows = list_runs(args.workspace)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no runs in {args.workspace}")
        return 0
    print(f"{'run':34} {'model':26} {'rank':>4} {'best val':>8} {'status':>9}")
    for r in rows:
        acc = "-" if r["best_val_acc"] is None else f"{r['best_val_acc']:.1%}"
        print(f"{r['run']:34} {r['model'][:26]:26} {str(r['rank']):>4} {acc:>8} {r['status']:>9}")
    return 0


def cmd_check_data(args) -> int:
    from .data import DataError, load_dataset
    try:
        ds = load_dataset(args.data, args.workspace)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(ds.report.summary())
    if args.verbose:
        for row in ds.report.as_rows():
            print("  " + " | ".join(map(str, row)))
    return 2 if ds.report.errors else 0


def cmd_models(args) -> int:
    from .models import CATALOG, model_info, search_models
    if args.search:
        print("\n".join(search_models(args.search)))
        return 0
    for entry in CATALOG:
        info = model_info(entry.name)
        print(f"{entry.name:30} {info['params'] / 1e6:6.1f}M {info['resolution']:4}px  "
              f"{info['weights']:13}  {entry.note}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lora_gui", description=(
        "Fine-tune timm vision models with LoRA on your own labelled images. "
        "Run `python app.py` for the browser app; these commands use the same engine."))
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a LoRA adapter (progress bar, then a summary table)",
                       description="Train a LoRA adapter. Flags override the preset's values.")
    t.add_argument("--data", help="folder of class folders, .zip/.tar/.tar.gz archive, or .csv (filename,label)")
    t.add_argument("--model", help="timm model name (default tf_efficientnet_lite0, bundled weights)")
    t.add_argument("--weights", help="bundled | hub | random | path to a .safetensors/.pth file")
    t.add_argument("--targets", help="LoRA targets: auto, attention, attention+mlp, all-linear, all-conv, "
                                     "late-blocks, 're:<regex>' or comma-separated name suffixes")
    t.add_argument("--rank", type=int, help="LoRA rank r (default 8)")
    t.add_argument("--alpha", type=float, help="LoRA alpha; update scale is alpha / rank (default 2 x rank)")
    t.add_argument("--dropout", type=float, help="dropout on the LoRA path (default 0)")
    t.add_argument("--epochs", type=int, help="passes over the training images (default 3)")
    t.add_argument("--batch-size", type=int, help="images per step (default 16)")
    t.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    t.add_argument("--image-size", type=int, help="square input resolution (default: the model's own)")
    t.add_argument("--augmentation", choices=["none", "light", "strong"], help="training augmentation")
    t.add_argument("--val-fraction", type=float, help="share of images held out for validation (default 0.2)")
    t.add_argument("--seed", type=int, help="random seed: same seed and data give the same metrics on CPU")
    t.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps")
    t.add_argument("--preset", help="presets/NAME.json to start from")
    t.add_argument("--out", help="run folder to create (default: a new folder under --workspace)")
    t.add_argument("--workspace", default="runs", help="where run folders go (default ./runs)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    t.add_argument("--json", action="store_true", help="print the final metrics as JSON on stdout")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("runs", help="list the runs in a workspace")
    r.add_argument("--workspace", default="runs")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_runs)

    c = sub.add_parser("check-data", help="validate a dataset and print its report")
    c.add_argument("data")
    c.add_argument("--workspace", default="runs", help="where archives are unpacked")
    c.add_argument("-v", "--verbose", action="store_true", help="list every file with its status")
    c.set_defaults(func=cmd_check_data)

    m = sub.add_parser("models", help="list the curated backbones, or search all timm models")
    m.add_argument("--search", help="a name fragment or wildcard, e.g. 'vit_*' ")
    m.set_defaults(func=cmd_models)

    try:
        from .export import add_export_parser, add_predict_parser
        add_export_parser(sub)
        add_predict_parser(sub)
    except ImportError:
        pass
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)
