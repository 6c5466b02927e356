"""Frames per second of the Demo tab's live webcam mode (issue 16), on this machine.

Two numbers, for the default backbone (tf_efficientnet_lite0, bundled weights) at its training
resolution (224 px) with a rank-8 LoRA adapter merged for inference:
  handler  the stream handler's work per frame (numpy frame -> PIL -> predict -> top 5), in-process;
  served   frames pushed one after the other through a real Gradio server's stream endpoint over
           raw HTTP (the browser's path: a JPEG data URL per frame, decode, predict, the SSE reply).
A script, not a test: it asserts nothing. Results go to benchmarks/results/live-fps-<host>-<date>.json.

    .venv/bin/python benchmarks/live_fps.py [--frames 60] [--width 640 --height 480]
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def make_adapter(folder: Path, classes: int = 5) -> Path:
    from lora_gui.backbones.build import build_model, data_config
    from lora_gui.config import LoraConfig, ModelConfig
    from lora_gui.lora.inject import inject_lora
    from lora_gui.store.adapter_file import AdapterMeta, save_adapter
    cfg = ModelConfig(name="tf_efficientnet_lite0", weights="bundled")
    model = build_model(cfg, classes)
    lora = LoraConfig(rank=8, alpha=16.0)
    layers = inject_lora(model, lora)
    meta = AdapterMeta(cfg, lora, layers, [f"class_{i}" for i in range(classes)], data_config(model, None))
    save_adapter(model.eval(), meta, folder / "best")
    return folder / "best"


def frames(n: int, w: int, h: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def handler_fps(adapter: Path, frames_: list[np.ndarray], threads: int) -> dict:
    import torch
    from lora_gui.inference.calibration import verdict
    from lora_gui.inference.predict import load_adapter, predict
    torch.set_num_threads(threads)
    loaded = load_adapter(adapter)
    predict(loaded, [Image.fromarray(frames_[0])])   # warm-up
    start = time.perf_counter()
    for f in frames_:
        top = predict(loaded, [Image.fromarray(f)], topk=5)[0]
        verdict(loaded, top)
    s = time.perf_counter() - start
    return {"torch_threads": threads, "frames": len(frames_), "seconds": round(s, 3),
            "fps": round(len(frames_) / s, 2), "ms_per_frame": round(1000 * s / len(frames_), 1)}


def _jpeg_payload(img: np.ndarray) -> dict:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=85)
    return {"path": None, "url": "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode(),
            "meta": {"_type": "gradio.FileData"}}


def served_fps(adapter: Path, workspace: Path, frames_: list[np.ndarray], threads: int) -> dict:
    import httpx
    from demo_stream_client import fn_index
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(threads))
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "demo_server.py"), str(port), str(workspace),
                             str(adapter)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        index, trigger = fn_index(url, "demo_frame")
        session = uuid.uuid4().hex[:10]
        payloads = [_jpeg_payload(f) for f in frames_]
        times = []
        with httpx.Client(timeout=120) as client:
            event_id = client.post(f"{url}/gradio_api/queue/join", json={
                "data": [payloads[0], None], "fn_index": index, "session_hash": session,
                "trigger_id": trigger}).json()["event_id"]
            sent = time.perf_counter()
            with client.stream("GET", f"{url}/gradio_api/queue/data", params={"session_hash": session}) as sse:
                for line in sse.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    msg = json.loads(line[5:])
                    if msg.get("msg") != "process_streaming":
                        if msg.get("msg") in ("process_completed", "close_stream"):
                            break
                        continue
                    times.append(time.perf_counter() - sent)
                    if len(times) == len(payloads):
                        client.post(f"{url}/gradio_api/stream/{event_id}/close")
                        continue
                    sent = time.perf_counter()
                    client.post(f"{url}/gradio_api/stream/{event_id}", json={
                        "data": [payloads[len(times)], None], "fn_index": index, "session_hash": session,
                        "event_id": event_id})
        steady = times[3:] or times   # the first frames load the model
        s = sum(steady)
        return {"torch_threads": threads, "frames": len(steady), "seconds": round(s, 3), "fps": round(len(steady) / s, 2),
                "ms_per_frame": round(1000 * s / len(steady), 1), "first_frame_s": round(times[0], 2)}
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                    help="torch intra-op threads to measure (on a busy 2-core machine 2 threads collapse)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="live_fps_") as tmp:
        adapter = make_adapter(Path(tmp))
        fr = frames(args.frames, args.width, args.height)
        result = {
            "benchmark": "live_fps", "model": "tf_efficientnet_lite0 (bundled) + LoRA r8, merged", "resolution": 224,
            "frame": f"{args.width}x{args.height}", "host": platform.node(), "cpu_count": os.cpu_count(),
            "load_average_at_start": list(os.getloadavg()),
            "date": time.strftime("%Y-%m-%d %H:%M"), "device": "cpu",
            "handler": [handler_fps(adapter, fr, t) for t in args.threads],
            "served": [served_fps(adapter, Path(tmp) / "ws", fr, t) for t in args.threads],
            "load_average_at_end": list(os.getloadavg()),
        }
    out = REPO / "benchmarks" / "results" / f"live-fps-{platform.node() or 'host'}-{time.strftime('%Y-%m-%d')}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"written to {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
