"""Seconds from starting `python app.py` to the first HTTP 200 on the page (issue #12.7), and the
CPU seconds the app process had used by then (steadier than wall time on a shared, busy machine).

    python scripts/measure_startup.py [--runs 3] [--workspace DIR]
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process and its threads, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def once(workspace: Path) -> tuple[float, float]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--port", str(port), "--workspace", str(workspace)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    if r.status == 200:
                        return time.perf_counter() - started, cpu_seconds(proc.pid)
            except OSError:
                time.sleep(0.1)
        raise SystemExit("the app exited before answering")
    finally:
        proc.terminate()
        proc.wait(20)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workspace", default=None)
    args = ap.parse_args()
    workspace = Path(args.workspace or tempfile.mkdtemp(prefix="lg-startup-"))
    runs = [once(workspace) for _ in range(args.runs)]
    for label, values in (("seconds to HTTP 200", [w for w, _ in runs]), ("CPU seconds by then", [c for _, c in runs])):
        print(f"{label}:", ", ".join(f"{v:.1f}" for v in values), f"(median {sorted(values)[len(values) // 2]:.1f})")


if __name__ == "__main__":
    main()
