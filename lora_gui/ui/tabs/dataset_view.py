"""What the Data tab shows about a dataset: the summary in words, the split per class, the
class chart, a few pictures per class and the validation report of every file. Shared by every
way a dataset arrives (Data tab, class builder, health check, a re-attached job)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from ... import data
from ..charts import class_distribution_figure
from ..common import md, thumbnails
from ..fields import field_problem

REPORT_SHOWS = [("skipped files", "skipped"), ("used files", "used"), ("all files", "all")]
MAX_REPORT_ROWS = 2000


def _report_rows(ds: data.Dataset | None, show: str = "all") -> list[list[str]]:
    # Skipped files first: they are what a person needs to act on.
    rows = ds.report.as_rows() if ds is not None else []
    rows = [r for r in rows if show == "all" or r[2] == show]
    return sorted(rows, key=lambda r: (r[2] == "used", r[0]))[:MAX_REPORT_ROWS]


def _group(path: str, reason: str) -> str:
    if reason == "not an image":   # thousands of .txt/.json/.DS_Store read better as one line each
        return f"not an image ({Path(path).suffix.lower() or 'no extension'})"
    return reason.split(" (")[0].split(" of ")[0].split(":")[0]


def report_groups(ds: data.Dataset | None) -> str:
    """What happened to the files, one line per kind ('not an image' per extension)."""
    if ds is None:
        return ""
    used = sum(1 for f in ds.report.files if f.status == "used")
    skipped = Counter(_group(f.path, f.reason) for f in ds.report.files if f.status == "skipped")
    lines = [f"- used for training: {used:,} files"] + [f"- {md(k)}: {n:,} files" for k, n in skipped.most_common()]
    total = len(ds.report.files)
    more = f" The table shows the first {MAX_REPORT_ROWS:,} of each choice." if total > MAX_REPORT_ROWS else ""
    return "\n".join(lines) + more


def dataset_outputs(ds: data.Dataset | None, label: str, val_fraction: float, split_seed: int = 0):
    """(summary markdown, report rows, split rows, chart, gallery) for a dataset or none."""
    if ds is None:
        return ("No dataset yet. Click **Use the example dataset**, or bring your own below.",
                [], [], None, [], "", "all")
    # The report's summary ends with its errors and warnings; they are shown once, below it.
    counts = [line for line in ds.report.summary().splitlines() if not line.startswith(("Error: ", "Warning: "))]
    lines = [f"**{md(label)}** — " + "  \n".join(md(line) for line in counts)]
    lines += [f"\nNote: {md(w)}" for w in ds.report.warnings]
    if ds.report.errors:
        lines.append("\n**Fix before training:**\n" + "\n".join(f"- {md(e)}" for e in ds.report.errors))
    else:
        lines.append("\nReady: go to **2 · Model & LoRA** to check the settings, or straight to **3 · Train**.")
    split_rows = []
    problem = field_problem("val_fraction", val_fraction)
    if problem:
        lines.append(f"\n**Held out for validation:** {md(problem)}.")
    elif not ds.report.errors:
        train, val = data.split_dataset(ds, val_fraction, split_seed)
        split_rows = data.split_counts(train, val, ds.classes)
    chart = class_distribution_figure(split_rows if split_rows else ds.class_counts())
    return ("\n".join(lines), _report_rows(ds), split_rows, chart, thumbnails(data.gallery_items(ds, per_class=4)),
            report_groups(ds), "all")


def has_split(ds) -> bool:
    return ds is not None and not ds.report.errors


def show_dataset(session, ds, label, vf):
    """Make ``ds`` the session's dataset; (session, *outputs of the Data tab)."""
    session.dataset, session.dataset_label = ds, label
    return (session, *dataset_outputs(ds, label, vf))


def filter_report(session, show):
    return _report_rows(session.dataset, show)


def resplit(session, vf):
    return (session, *dataset_outputs(session.dataset, session.dataset_label, vf))
