"""torch.compile on the trainable blocks (opt-in), and its fallback when the compiler fails."""
from __future__ import annotations

import json
import warnings

import pytest
from conftest import write_colour_folder

from lora_gui.config import DataConfig, LoraConfig, ModelConfig, RunConfig, TrainConfig
from lora_gui.jobs.device_queue import DeviceQueue
from lora_gui.jobs.training_job import TrainingJob
from lora_gui.training import compile_lever


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 3 classes x 8, val 0.25 -> 18 train / 6 val: batches of 6 are all full, so each graph
    # (training, validation) compiles once
    return write_colour_folder(tmp_path_factory.mktemp("colours") / "data")


def _run(data, tmp_path, name, compile_switch):
    cfg = RunConfig(model=ModelConfig(name="resnet18", weights="random", image_size=32),
                    lora=LoraConfig(rank=4),
                    data=DataConfig(source=str(data), val_fraction=0.25, augmentation="flip"),
                    # fp32: compiled and eager kernels are compared, not bf16 rounding
                    train=TrainConfig(epochs=1, batch_size=6, lr=3e-3, num_threads=2, seed=5,
                                      mixed_precision="off", compile=compile_switch))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        job = TrainingJob(cfg, workspace=str(tmp_path / "ws"), run_dir=str(tmp_path / "ws" / name),
                          queue=DeviceQueue()).start()
        assert job.wait(300) and job.status == "finished", job.message
    return job, json.loads(job.run.config_file.read_text())["speed"]


def _metrics(job):
    return [(r["kind"], r["step"], r.get("loss"), r.get("val_loss"), r.get("val_acc")) for r in job.run.read_metrics()]


def test_compiled_blocks_train_like_eager_ones(data, tmp_path):
    eager, eager_speed = _run(data, tmp_path, "eager", "auto")
    assert eager_speed["compile"] is False and "auto" in eager_speed["compile_note"]
    compiled, speed = _run(data, tmp_path, "compiled", "on")
    assert speed["compile"] is True, speed
    assert any("2 trainable blocks compiled" in line for line in compiled.snapshot().log)
    a, b = _metrics(eager), _metrics(compiled)
    assert [r[:2] for r in a] == [r[:2] for r in b]
    for x, y in zip(a, b):  # fused kernels round differently, nothing more
        for u, v in zip(x[2:], y[2:]):
            assert (u is None) == (v is None) and (u is None or abs(u - v) <= 1e-3 * max(1.0, abs(u))), (x, y)


def test_a_failing_compiler_falls_back_and_leaves_no_trace(data, tmp_path, monkeypatch):
    def broken_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler found")
    real_apply = compile_lever.apply
    monkeypatch.setattr(compile_lever, "apply", lambda model, names: real_apply(model, names, broken_backend))
    fallback, speed = _run(data, tmp_path, "fallback", "on")
    assert speed["compile"] is False and "torch.compile failed" in speed["compile_note"]
    assert "no C++ compiler found" in speed["compile_note"]
    assert any("training without it" in line for line in fallback.snapshot().log)
    monkeypatch.undo()
    eager, _ = _run(data, tmp_path, "eager", "off")
    # the trial step was undone: gradients, tensors and random numbers as if it never ran
    assert _metrics(fallback) == _metrics(eager)
