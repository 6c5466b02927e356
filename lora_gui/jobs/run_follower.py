"""Reading a run folder that another process is writing (rank 0 of a torchrun run), and torchrun's log.

Everything here tolerates files caught mid-write: metrics.csv is read in complete lines only, the
JSON files are replaced atomically by their writer (and a torn read is simply 'not there yet').
"""
from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path

from ..errors import DamagedRun
from ..store.run_folder import METRIC_FIELDS, RunFolder, _num
from ..training import distributed

ERROR_LINE = re.compile(r"^error(?: \(rank (\d+)\))?: (.+)$", re.M)  # what `lora_gui train` prints
# what a rank says when it only saw another one go: torchrun's summary knows more
SECOND_HAND = (distributed.TORN_DOWN[:30], distributed.PEER_LOST[:30])


class MetricsFollower:
    """The rows appended to a metrics.csv since the last look."""

    def __init__(self, path: Path):
        self.path, self.offset = Path(path), 0

    def new_rows(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n") + 1  # a half-written last line waits for the next look
        self.offset += end
        rows = csv.DictReader(io.StringIO(chunk[:end].decode("utf-8", "replace")), fieldnames=METRIC_FIELDS)
        # the same rules as RunFolder.read_metrics: the header and torn lines are skipped
        return [{k: (r[k] if k == "kind" else _num(r.get(k))) for k in METRIC_FIELDS} for r in rows
                if r.get("kind") in ("step", "epoch") and r.get("time") not in (None, "") and None not in r]


def planned_steps(run: RunFolder) -> int:
    """Optimizer steps of the whole run, from what rank 0 wrote (0 until its config.json is there)."""
    try:
        record, split = run.record(), run.split()
    except DamagedRun:  # not written yet (or damaged: the job's own failure says so)
        return 0
    train = record.config.train
    world = int((record.distributed or {}).get("world_size", 1))
    return distributed.remaining_steps(len(split.train), 0, 0, train.epochs, world, train.batch_size,
                                       train.grad_accum)


def file_tail(path: Path, lines: int) -> list[str]:
    """The last non-empty lines of a text file that may be growing (only its end is read)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 16_384))
            return [ln for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()][-lines:]
    except OSError:
        return []


def torchrun_failure(text: str, returncode: int) -> tuple[str, str]:
    """(one-line cause, kind 'input' | 'training') of a failed torchrun from its output: the failing
    rank's own error line if it printed one, else torchrun's summary of the first process to fail."""
    own = [m for m in ERROR_LINE.finditer(text)  # not the ranks that only saw another one go
           if "stopped by torchrun" not in m.group(2) and not m.group(2).startswith(SECOND_HAND)]
    if own:
        rank, cause = own[0].group(1), own[0].group(2).strip()
        kind = "input" if " (exitcode: 2)" in text else "training"  # `lora_gui train` exits 2 on bad input
        return (f"rank {rank}: {cause}" if rank else cause), kind
    if "Root Cause" not in text:
        return f"torchrun exited with code {returncode}", "training"
    # The summary lists every failed process; its 'root cause' is only the first torchrun
    # observed, which can be a rank that merely exited (code 1) on losing its peer a moment
    # before torchrun saw the peer's own death. A process killed by a signal is the cause.
    summary = text[text.rfind("Failures:") if "Failures:" in text else text.rindex("Root Cause"):]
    entries = re.split(r"^\[\d+\]:\s*$", summary, flags=re.M)[1:]
    killed = [e for e in entries if _summary_field(e, "exitcode").startswith("-")]
    entry = killed[0] if killed else text[text.rindex("Root Cause"):]
    trace = _summary_field(entry, "traceback")  # e.g. 'Signal 9 (SIGKILL) received by PID 123'
    if trace.startswith(("To enable", "?")):
        trace = f"exit code {_summary_field(entry, 'exitcode').split()[0]}"
    return f"process rank {_summary_field(entry, 'rank').split()[0]} of the run failed: {trace}", "training"


def _summary_field(summary: str, name: str) -> str:
    found = re.search(rf"^\s*{name}\s*:\s*(\S.*)$", summary, re.M)
    return found.group(1).strip() if found else "?"
