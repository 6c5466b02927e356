"""Start-up times before and after a change, side by side in one run (issue #15.3).

    python benchmarks/startup.py --before 13b9db5 [--runs 3] [--out benchmarks/results/startup-DATE.json]

For each checkout (``--before`` REV, unpacked with ``git archive`` into a temporary folder, and this
one), interleaved run by run so both see the same load on a shared machine, and for each of
``--runs`` repetitions (the median is reported):

* ``python -m lora_gui --help`` and ``check-data`` on the bundled example (120 real images):
  wall seconds and CPU seconds (user + system of the process, steadier on a busy machine);
* ``python app.py``: seconds (and CPU seconds) until the page answers HTTP 200, and seconds until
  the first click that needs the engine (the Model tab's model search, timm) has its answer
  (scripts/measure_startup.py).

The floor: a bare interpreter, ``import gradio`` alone (and as the app imports it, without Gradio's
stub writer: lora_gui/ui/gradio_stubs.py), and a one-Markdown Gradio app from start to its page
served: what any Gradio app pays before lora_gui does anything. Nothing here asserts.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from measure_startup import app_env, cpu_seconds, free_port, median, once  # noqa: E402

EXAMPLE = REPO / "assets" / "example"
TINY_APP = """
import gradio as gr
with gr.Blocks() as demo:
    gr.Markdown("hello")
demo.launch(server_port={port}, quiet=True)
"""


def timed(cmd: list[str], env: dict, cwd: Path) -> tuple[float, float]:
    """(wall s, CPU s) of one command run to its end."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def tiny_app_page() -> tuple[float, float]:
    """(seconds, CPU seconds) from start to HTTP 200 of a one-Markdown Gradio app."""
    import urllib.request
    port = free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_DISABLE_TELEMETRY="1")
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", TINY_APP.format(port=port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    if r.status == 200:
                        return time.perf_counter() - started, cpu_seconds(proc.pid)
            except OSError:
                time.sleep(0.05)
        raise SystemExit("the tiny Gradio app exited before answering")
    finally:
        proc.terminate()
        proc.wait(20)


def measure(repo: Path, workspace: Path) -> dict:
    env = app_env(repo)
    cli = [sys.executable, "-m", "lora_gui"]
    help_wall, help_cpu = timed([*cli, "--help"], env, repo)
    check_wall, check_cpu = timed([*cli, "check-data", str(EXAMPLE), "--workspace", str(workspace)], env, repo)
    app = once(workspace, repo)
    return {"help_s": help_wall, "help_cpu_s": help_cpu, "check_data_s": check_wall, "check_data_cpu_s": check_cpu,
            **app}


def unpack(rev: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=f"lg-{rev[:10]}-"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "load_avg": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", help="git revision to compare with (e.g. the commit before the change)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", help="JSON file to write (default benchmarks/results/startup-<date>.json)")
    args = ap.parse_args()
    checkouts = {"after": REPO}
    if args.before:
        checkouts = {"before": unpack(args.before), "after": REPO}
    load_start = machine()
    floor = {"python_s": [], "import_gradio_s": [], "import_gradio_cpu_s": [], "import_gradio_as_the_app_s": [],
             "import_gradio_as_the_app_cpu_s": [], "tiny_gradio_app_page_s": [], "tiny_gradio_app_page_cpu_s": []}
    raw = {name: [] for name in checkouts}
    for i in range(args.runs):
        for name, repo in checkouts.items():
            workspace = Path(tempfile.mkdtemp(prefix=f"lg-startup-{name}-"))
            raw[name].append(measure(repo, workspace))
            print(f"run {i + 1} {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in raw[name][-1].items()), flush=True)
        env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_DISABLE_TELEMETRY="1")
        floor["python_s"].append(timed([sys.executable, "-c", "pass"], env, REPO)[0])
        wall, cpu = timed([sys.executable, "-c", "import gradio"], env, REPO)
        floor["import_gradio_s"].append(wall)
        floor["import_gradio_cpu_s"].append(cpu)
        # as the app imports it: lora_gui.ui first, which skips Gradio's stub writer (ui/gradio_stubs.py)
        wall, cpu = timed([sys.executable, "-c", "import lora_gui.ui, gradio"], dict(env, PYTHONPATH=str(REPO)), REPO)
        floor["import_gradio_as_the_app_s"].append(wall)
        floor["import_gradio_as_the_app_cpu_s"].append(cpu)
        wall, cpu = tiny_app_page()
        floor["tiny_gradio_app_page_s"].append(wall)
        floor["tiny_gradio_app_page_cpu_s"].append(cpu)
    medians = {name: {k: median([r[k] for r in runs]) for k in runs[0]} for name, runs in raw.items()}
    medians["floor"] = {k: median(v) for k, v in floor.items()}
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "before": args.before, "after": subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                                             capture_output=True, text=True).stdout.strip(),
              "runs": args.runs, "machine": load_start, "load_avg_end": os.getloadavg(),
              "median": medians, "raw": {**raw, "floor": floor}}
    if "before" in medians:
        result["ratio_before_over_after"] = {k: medians["before"][k] / medians["after"][k]
                                             for k in medians["after"] if medians["after"][k]}
    out = Path(args.out or REPO / "benchmarks" / "results" / f"startup-{datetime.date.today().isoformat()}.json")
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["median"], indent=1))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
