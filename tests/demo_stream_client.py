"""Drive a Gradio streaming event over raw HTTP (gradio_client 2.7 cannot: see the research memo):
join the queue with the first frame, push the others to /stream/<event_id>, read the SSE replies."""
from __future__ import annotations

import base64
import io
import json
import uuid

import httpx
import numpy as np
from PIL import Image


def frame_payload(image: np.ndarray) -> dict:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")   # lossless: the server sees these exact pixels
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return {"path": None, "url": url, "meta": {"_type": "gradio.FileData"}}


def fn_index(url: str, api_name: str) -> tuple[int, int]:
    """(fn_index, trigger component id) of the event named ``api_name``."""
    config = httpx.get(f"{url}/config", timeout=30).json()
    for i, dep in enumerate(config["dependencies"]):
        if dep.get("api_name") == api_name:
            return dep.get("id", i), dep["targets"][0][0]
    raise KeyError(api_name)


def stream_frames(url: str, api_name: str, frames: list[np.ndarray], extra_inputs: int = 0,
                  timeout: float = 120) -> list[list]:
    """Send ``frames`` one after the other (each after the previous answer) and return each answer's data."""
    index, trigger = fn_index(url, api_name)
    session = uuid.uuid4().hex[:10]
    answers: list[list] = []
    with httpx.Client(timeout=timeout) as client:
        data = [frame_payload(frames[0])] + [None] * extra_inputs
        join = client.post(f"{url}/gradio_api/queue/join", json={
            "data": data, "fn_index": index, "session_hash": session, "trigger_id": trigger}).json()
        event_id = join["event_id"]
        with client.stream("GET", f"{url}/gradio_api/queue/data", params={"session_hash": session}) as sse:
            for line in sse.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_streaming":
                    answers.append(msg["output"]["data"])
                    if len(answers) == len(frames):
                        client.post(f"{url}/gradio_api/stream/{event_id}/close")
                    else:
                        body = {"data": [frame_payload(frames[len(answers)])] + [None] * extra_inputs,
                                "fn_index": index, "session_hash": session, "event_id": event_id}
                        client.post(f"{url}/gradio_api/stream/{event_id}", json=body)
                elif msg.get("msg") in ("process_completed", "close_stream"):
                    break
    return answers
