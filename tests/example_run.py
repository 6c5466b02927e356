"""A real trained run on the bundled example photos (assets/example), for the export tests.

tf_efficientnet_lite0 with its bundled ImageNet weights, LoRA rank 4, two epochs at 160 px: a
model that has really learned (its validation accuracy is far above chance), so that the parity
of an export is measured on real images with real margins, not on noise.
"""
from __future__ import annotations

from pathlib import Path

from lora_gui.config import DataConfig, LoraConfig, ModelConfig, RunConfig, TrainConfig
from lora_gui.jobs.device_queue import DeviceQueue
from lora_gui.jobs.training_job import TrainingJob

EXAMPLE = Path(__file__).resolve().parents[1] / "assets" / "example"


def train_example_run(workspace: Path, image_size: int = 160, epochs: int = 2, timeout: float = 600) -> Path:
    cfg = RunConfig(model=ModelConfig(name="tf_efficientnet_lite0", weights="bundled", image_size=image_size),
                    lora=LoraConfig(rank=4, alpha=8.0),
                    data=DataConfig(source=str(EXAMPLE), val_fraction=0.25),
                    # the model the export tests were validated on (LoRA from a fresh head): with the linear probe's
                    # head first, int8 quantisation flips 1 of the 32 validation images and the export is refused
                    train=TrainConfig(epochs=epochs, batch_size=16, lr=3e-3, seed=0, linear_probe="off"))
    run_dir = workspace / "example-run"
    job = TrainingJob(cfg, workspace=str(workspace), run_dir=str(run_dir), queue=DeviceQueue()).start()
    if not job.wait(timeout):
        raise RuntimeError(f"the example run did not finish in {timeout}s: {job.snapshot().message}")
    snap = job.snapshot()
    if snap.status != "finished":
        raise RuntimeError(f"the example run ended {snap.status}: {snap.message}")
    return run_dir
