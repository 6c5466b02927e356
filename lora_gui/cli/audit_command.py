"""``python -m lora_gui audit DATA``: the app's health check from the command line."""
from __future__ import annotations

import json
import sys

from ..errors import EXIT_BAD_INPUT, EXIT_OK, UserError


def add_audit_parser(sub) -> None:
    a = sub.add_parser("audit", help="health check of a dataset: wrong labels, near-duplicates, "
                       "train/validation leaks, outliers, images needed per class",
                       description="Look for suspected wrong labels, near-duplicate images (within a class, across "
                       "classes, across train and validation), outliers, and how many more images each class "
                       "needs. Nothing is changed; decide in the app's Data tab (Health check).")
    a.add_argument("data", help="a folder of class folders, a .zip/.tar/.tar.gz archive, a .csv file, or "
                   "'example' for the built-in example dataset")
    a.add_argument("--workspace", default="runs", help="where archives are unpacked and embeddings cached "
                   "(default ./runs)")
    a.add_argument("--val-fraction", type=float, default=0.2, help="validation share, as in training (default 0.2)")
    a.add_argument("--split-seed", type=int, default=0, help="seed of the train/validation split (default 0)")
    a.add_argument("--image-size", type=int, help="embed at this square resolution instead of the model's own "
                   "(224 for the default backbone); smaller is faster on a CPU")
    a.add_argument("--json", action="store_true", help="print every finding as JSON on stdout")
    a.set_defaults(func=cmd_audit)


def _print_text(result, ds) -> None:
    counts = {k: len(result.of_kind(k)) for k in ("label", "leak", "label conflict", "duplicate",
                                                  "exact duplicate", "outlier")}
    print(f"{len(result.paths)} images in {len(result.classes)} classes: "
          + ", ".join(f"{n} {k}" for k, n in counts.items()))
    for f in result.findings:
        files = " <-> ".join(f.paths)
        extra = f" -> looks like '{f.suggested}' ({f.score:.0%})" if f.kind == "label" else ""
        print(f"  [{f.kind}] {files} (given: {', '.join(f.labels)}){extra}  {f.note}")
    if result.curves:
        print("More images (validation recall per class, fitted learning curve):")
        for c in result.curves:
            more = "-" if c.more_needed is None else f"~{c.more_needed} more"
            dbl = "-" if c.recall_at_double is None else f"{c.recall_at_double:.0%}"
            print(f"  {c.name:20} {c.n_train:5} train images, recall {c.recall[-1]:.0%}, "
                  f"at 2x images {dbl}, {more} to near its ceiling ({c.method})")
    print("took " + ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items()))


def cmd_audit(args) -> int:
    from ..config import DataConfig, ModelConfig
    from ..data.sources import load_dataset
    from ..health import run_audit
    try:
        ds = load_dataset(args.data, args.workspace)
        ds.report.raise_if_blocking()
        split = DataConfig(source=str(args.data), val_fraction=args.val_fraction, split_seed=args.split_seed)
        progress = None if args.json else (lambda f, m: print(f"\r{f:4.0%} {m:50}", end="", file=sys.stderr))
        model = ModelConfig(image_size=args.image_size)
        result = run_audit(ds, args.workspace, model, split=split, progress=progress)
        if progress:
            print(file=sys.stderr)
    except (UserError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        print(json.dumps(result.as_json(ds), indent=2))
    else:
        _print_text(result, ds)
    return EXIT_OK
