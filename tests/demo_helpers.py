"""Shared by the demo-mode tests: a synthetic 'bright square in corner X' dataset and a model
trained on it (the bundled EfficientNet-Lite0 at 64 px), whose answer depends on the square."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lora_gui.config import DataConfig, LoraConfig, ModelConfig, RunConfig, TrainConfig
from lora_gui.jobs.device_queue import DeviceQueue
from lora_gui.jobs.training_job import TrainingJob

CORNERS = ("bottom_left", "bottom_right", "top_left", "top_right")


def square_image(corner: str, seed: int, side: int = 96, square: int = 34, hard: bool = False) -> np.ndarray:
    """Dark noisy background, a bright (slightly coloured) square in ``corner``; ``hard``: the
    square sits near the centre, only a few pixels towards its corner (a genuinely unclear photo)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 70, (side, side, 3)).astype(np.uint8)
    margin = (side - square) // 2 - 4 - int(rng.integers(0, 4)) if hard else 6 + int(rng.integers(0, 6))
    top = margin if corner.startswith("top") else side - margin - square
    left = margin if corner.endswith("left") else side - margin - square
    img[top:top + square, left:left + square] = (np.array([235, 225, 120]) + rng.integers(-20, 20, 3)).clip(0, 255)
    return img


def write_squares(root: Path, per_class: int = 20, hard: int = 0) -> Path:
    """``per_class`` clear images per corner, and ``hard`` unclear ones (square near the centre)."""
    for c, corner in enumerate(CORNERS):
        folder = root / corner
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(square_image(corner, 100 * c + i)).save(folder / f"{corner}_{i:02d}.png")
        for i in range(hard):
            Image.fromarray(square_image(corner, 5000 + 100 * c + i, hard=True)).save(folder / f"unclear_{i:02d}.png")
    return root


def squares_config(data: Path, epochs: int = 3) -> RunConfig:
    return RunConfig(model=ModelConfig(name="tf_efficientnet_lite0", weights="bundled", image_size=64),
                     lora=LoraConfig(rank=4, alpha=8.0),
                     data=DataConfig(source=str(data), val_fraction=0.25, augmentation="none"),
                     # the probe's head would make this small model confident on every validation image, and
                     # the calibration tests need some unclear ones (they were written for LoRA from a fresh head)
                     train=TrainConfig(epochs=epochs, batch_size=16, lr=3e-3, num_threads=2, seed=3,
                                       label_smoothing=0.0, linear_probe="off"))


def train_squares(workspace: Path, data: Path, epochs: int = 3, timeout: float = 300) -> Path:
    job = TrainingJob(squares_config(data, epochs), workspace=str(workspace), run_dir=str(workspace / "squares"),
                      queue=DeviceQueue()).start()
    assert job.wait(timeout), f"training did not finish: {job.snapshot().message}"
    assert job.status == "finished", job.snapshot().message
    return job.run.path


def write_y4m(path: Path, image: np.ndarray, frames: int = 10) -> Path:
    """A still video (YUV4MPEG2, 4:2:0, BT.601) of ``image`` for Chromium's fake webcam
    (``--use-file-for-fake-video-capture``); width and height must be even."""
    rgb = image.astype(np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b

    def sub(c):   # 2x2 average: 4:2:0 chroma
        return (c[0::2, 0::2] + c[1::2, 0::2] + c[0::2, 1::2] + c[1::2, 1::2]) / 4
    planes = b"".join(np.clip(p, 0, 255).round().astype(np.uint8).tobytes() for p in (y, sub(u), sub(v)))
    h, w = image.shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F10:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            f.write(b"FRAME\n" + planes)
    return path
