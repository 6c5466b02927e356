"""``python -m lora_gui``: the same engine as the app, without a browser.

Exit codes (``errors.EXIT_*``): 0 done, 2 bad input (the message says what), 1 training failed.
"""
from __future__ import annotations

import argparse
import json
import sys

from ..config import DataConfig, ModelConfig
from .. import malloc_tuning
from ..errors import EXIT_BAD_INPUT, EXIT_OK
from .train_command import add_config_arguments, cmd_train, field_help


def cmd_runs(args) -> int:
    from ..store.run_folder import list_runs
    rows = list_runs(args.workspace)
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print(f"no runs in {args.workspace}")
        return EXIT_OK
    print(f"{'run':34} {'model':26} {'rank':>4} {'best val':>8} {'status':>9}")
    for r in rows:
        acc = "-" if r["best_val_acc"] is None else f"{r['best_val_acc']:.1%}"
        print(f"{r['run']:34} {r['model'][:26]:26} {str(r['rank']):>4} {acc:>8} {r['status']:>9}")
        if r["damaged"]:
            print(f"    damaged: {r['damaged']}")
    return EXIT_OK


def cmd_check_data(args) -> int:
    from ..data.sources import load_dataset
    from ..errors import DataError
    try:
        ds = load_dataset(args.data, args.workspace)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(ds.report.summary())
    if args.verbose:
        for row in ds.report.as_rows():
            print("  " + " | ".join(map(str, row)))
    return EXIT_BAD_INPUT if ds.report.errors else EXIT_OK


def cmd_models(args) -> int:
    from ..backbones.build import model_info
    from ..backbones.catalog import CATALOG, search_models
    if args.search:
        print("\n".join(search_models(args.search)))
        return EXIT_OK
    for entry in CATALOG:
        info = model_info(entry.name)
        print(f"{entry.name:30} {info['params'] / 1e6:6.1f}M {info['resolution']:4}px  "
              f"{info['weights']:13}  {entry.note}")
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lora_gui", description=(
        "Fine-tune timm vision models with LoRA on your own labelled images. "
        "Run `lora-gui` (or `python app.py`) for the browser app; these commands use the same engine. "
        "Exit codes: 0 done, 2 bad input (the message says what), 1 training failed."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser(APP_COMMAND, help="launch the browser app (the default with no command; "
                                     "`lora-gui app --help` lists its flags)", add_help=False)

    t = sub.add_parser("train", help="train a LoRA adapter (progress bar, then a summary table)",
                       description="Train a LoRA adapter. Flags override the preset's values.")
    t.add_argument("--data", help=field_help(DataConfig, "source"))
    t.add_argument("--model", help=field_help(ModelConfig, "name") + f" (default {ModelConfig().name}, whose bundled "
                   "ImageNet weights work offline)")
    t.add_argument("--weights", help="bundled | hub | random | path to a .safetensors/.pth file")
    add_config_arguments(t)  # --rank, --epochs, ...: one per config field with a flag, help from its metadata
    t.add_argument("--preset", help="a built-in preset's name (e.g. quick-cpu-demo) or a preset .json file to start from")
    t.add_argument("--config-json", metavar="JSON_OR_FILE", help="a full run configuration (as in a run's "
                   "config.json 'config', or RunConfig JSON) to start from instead of a preset; flags override it")
    t.add_argument("--dist-timeout", type=float, metavar="SECONDS", help="under torchrun: how long a collective "
                   "waits for a silent process before the job fails (default 60, or $LORA_GUI_DIST_TIMEOUT)")
    t.add_argument("--out", help="run folder to create (default: a new folder under --workspace)")
    t.add_argument("--workspace", default="runs", help="where run folders go (default ./runs)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    t.add_argument("--json", action="store_true", help="print the final metrics as JSON on stdout "
                                                       "(no progress output)")
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
    from .audit_command import add_audit_parser
    add_audit_parser(sub)  # `audit DATA [--json]`: the health check

    m = sub.add_parser("models", help="list the curated backbones, or search all timm models")
    m.add_argument("--search", help="a name fragment or wildcard, e.g. 'vit_*' ")
    m.set_defaults(func=cmd_models)

    from .export_commands import add_export_parser, add_predict_parser
    add_export_parser(sub)
    add_predict_parser(sub)
    # `python -m lora_gui --help` documents every command and every flag, not just the command names
    p.epilog = "commands and their flags:\n\n" + "\n".join(
        f"{'=' * 8} {name} {'=' * 8}\n{cmd.format_help()}" for name, cmd in sub.choices.items())
    return p


APP_COMMAND = "app"


def main(argv: list[str] | None = None) -> int:
    """``lora-gui`` alone (or ``lora-gui app [flags]``) launches the app; otherwise one command."""
    malloc_tuning.tune()  # first, before any thread starts (see malloc_tuning)
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] == APP_COMMAND or (argv[0].startswith("--") and argv[0] not in ("--help", "-h")):
        from ..ui.launch import (
            main as launch_app,  # gradio is imported only when the app is wanted
        )
        return launch_app(argv[1:] if argv and argv[0] == APP_COMMAND else argv, prog="lora-gui app")
    args = parser().parse_args(argv)
    return args.func(args)
