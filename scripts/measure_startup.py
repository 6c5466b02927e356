"""Seconds from starting `python app.py` to the first HTTP 200 on the page (issue #12.7, #15.3), the
CPU seconds the app process had used by then (steadier than wall time on a shared, busy machine), and
the seconds until the first click that needs the engine (torch + timm: the Model tab's model search)
was answered.

    python scripts/measure_startup.py [--runs 3] [--workspace DIR] [--repo CHECKOUT]

``--repo`` measures another checkout's code (e.g. an older commit unpacked with ``git archive``);
benchmarks/startup.py uses these functions for its before/after table.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
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


def app_env(repo: Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(repo), HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
                HF_HUB_DISABLE_TELEMETRY="1")


def first_engine_answer(url: str, timeout: float = 300) -> None:
    """Call the Model tab's search (timm.list_models) through Gradio's HTTP API and wait for its answer."""
    req = urllib.request.Request(f"{url}/gradio_api/call/search_models", data=json.dumps({"data": ["vit_t"]}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        event_id = json.load(r)["event_id"]
    with urllib.request.urlopen(f"{url}/gradio_api/call/search_models/{event_id}", timeout=timeout) as r:
        text = r.read().decode()
    if "event: complete" not in text:
        raise RuntimeError(f"the model search did not complete: {text[-300:]}")


def once(workspace: Path, repo: Path = REPO, engine: bool = True) -> dict:
    """One start of the app: {'page_s', 'page_cpu_s', 'engine_s' (None unless ``engine``)}."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(repo / "app.py"), "--port", str(port), "--workspace", str(workspace)],
                            env=app_env(repo), cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{url}/", timeout=5) as r:
                    if r.status == 200:
                        result = {"page_s": time.perf_counter() - started, "page_cpu_s": cpu_seconds(proc.pid),
                                  "engine_s": None}
                        break
            except OSError:
                time.sleep(0.05)
        else:
            raise SystemExit("the app exited before answering")
        if engine:
            first_engine_answer(url)
            result["engine_s"] = time.perf_counter() - started
        return result
    finally:
        proc.terminate()
        proc.wait(30)


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workspace", default=None)
    ap.add_argument("--repo", default=str(REPO), help="the checkout whose app.py is measured (default: this one)")
    args = ap.parse_args()
    workspace = Path(args.workspace or tempfile.mkdtemp(prefix="lg-startup-"))
    runs = [once(workspace, Path(args.repo).resolve()) for _ in range(args.runs)]
    for key, label in (("page_s", "seconds to HTTP 200"), ("page_cpu_s", "CPU seconds by then"),
                       ("engine_s", "seconds to the first engine answer")):
        values = [r[key] for r in runs]
        print(f"{label}:", ", ".join(f"{v:.1f}" for v in values), f"(median {median(values):.1f})")


if __name__ == "__main__":
    main()
