"""BatchNorm statistics computed from the training images for random starting weights."""
from __future__ import annotations

import json
import warnings

import pytest
import timm
import torch
from conftest import write_colour_folder
from safetensors.torch import load_file
from test_export import load_with_peft, rel_diff

from lora_gui.backbones.build import build_model, data_config
from lora_gui.config import DataConfig, LoraConfig, ModelConfig, RunConfig, TrainConfig
from lora_gui.errors import AdapterError
from lora_gui.inference.predict import load_adapter
from lora_gui.jobs.device_queue import DeviceQueue
from lora_gui.jobs.training_job import TrainingJob
from lora_gui.lora.inject import inject_lora, train_mode
from lora_gui.lora.state import adapter_state_dict
from lora_gui.store.adapter_file import (
    AdapterMeta,
    build_from_adapter,
    read_adapter,
    save_adapter,
)
from lora_gui.store.exports import export_adapter
from lora_gui.training import norm_calibration


def _resnet(seed=0, **lora_kw):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(ModelConfig(name="resnet18", weights="random"), 3)
    layers = inject_lora(model, LoraConfig(rank=4, **lora_kw))
    return model, layers


def _batches(n=3, size=48, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, size, size, generator=gen) for _ in range(n)]


def test_running_statistics_are_those_of_the_images():
    model, _ = _resnet()
    train_mode(model)
    batches = _batches()
    with torch.no_grad():  # what the first BatchNorm sees: the stem conv's output
        stem = [model.conv1(x) for x in batches]
    names = norm_calibration.calibrate(model, batches)

    assert "bn1" in names and "layer4.1.bn2" in names
    bn = model.bn1
    per_batch_mean = torch.stack([s.mean((0, 2, 3)) for s in stem])
    per_batch_var = torch.stack([s.var((0, 2, 3), unbiased=True) for s in stem])
    # momentum=None: a plain average over the batches (equal sizes: the images' mean)
    assert torch.allclose(bn.running_mean, per_batch_mean.mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, per_batch_var.mean(0), rtol=1e-4)
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))  # not the init any more
    # everything is put back as train_mode leaves it: training, frozen norms in eval, momentum kept
    assert model.training and not bn.training and bn.momentum == 0.1
    assert all(getattr(model.get_submodule(n), "lora_gui_calibrated_norm") for n in names)
    # and the statistics are now the adapter's
    state = adapter_state_dict(model)
    assert torch.equal(state["bn1.running_mean"], bn.running_mean) and "bn1.weight" not in state


def test_trained_norms_are_left_to_training():
    model, _ = _resnet(train_norm=True)
    assert norm_calibration.frozen_norms(model) == []
    assert norm_calibration.calibrate(model, _batches()) == []


def test_auto_means_random_weights_only():
    assert norm_calibration.wanted("auto", "random")
    assert not norm_calibration.wanted("auto", "bundled") and not norm_calibration.wanted("auto", "hub")
    assert norm_calibration.wanted("on", "bundled") and not norm_calibration.wanted("off", "random")


@pytest.fixture
def calibrated(tmp_path):
    model, layers = _resnet(seed=3)
    names = norm_calibration.calibrate(model, _batches(size=64))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    model.eval()
    cfg = ModelConfig(name="resnet18", weights="random", image_size=64)
    meta = AdapterMeta(cfg, LoraConfig(rank=4), layers, ["a", "b", "c"], data_config(model, 64),
                       base_seed=3, calibrated_norms=names)
    save_adapter(model, meta, tmp_path / "run" / "best")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        logits = model(x)
    return tmp_path / "run", meta, x, logits


def test_calibrated_adapter_reproduces_the_model_in_every_format(calibrated, tmp_path):
    run, meta, x, logits = calibrated
    assert "layer2.0.bn1.running_var" in load_file(str(run / "best" / "adapter.safetensors"))
    assert json.loads((run / "best" / "adapter.json").read_text())["calibrated_norms"] == meta.calibrated_norms
    with torch.no_grad():
        assert rel_diff(load_adapter(run).model(x), logits) < 1e-5           # native
        export_adapter(run, "peft", tmp_path / "peft")                        # real peft, timm base
        assert rel_diff(load_with_peft(tmp_path / "peft", meta)(x), logits) < 1e-5
        export_adapter(run, "merged", tmp_path / "merged")                    # plain timm, strict
        plain = timm.create_model("resnet18", pretrained=False, num_classes=3)
        plain.load_state_dict(load_file(str(tmp_path / "merged" / "model.safetensors")), strict=True)
        assert rel_diff(plain.eval()(x), logits) < 1e-5


def test_an_adapter_naming_a_norm_the_model_lacks_is_refused(calibrated, tmp_path):
    run, meta, _, _ = calibrated
    for bad, words in ((["layer9.bn1"], "does not have"), (["layer1"], "not a BatchNorm")):
        raw = json.loads((run / "best" / "adapter.json").read_text())
        raw["calibrated_norms"] = bad
        tensors, _ = read_adapter(run)
        forged = AdapterMeta.from_dict(raw)
        with pytest.raises(AdapterError, match=words):
            build_from_adapter(tensors, forged)


def _train(data, tmp_path, name, weights="random", calibrate="auto", model="resnet18"):
    cfg = RunConfig(model=ModelConfig(name=model, weights=weights, image_size=32),
                    lora=LoraConfig(rank=4),
                    data=DataConfig(source=str(data), val_fraction=0.25, augmentation="flip"),
                    # no linear probe: a head fitted first would hide what the statistics do to LoRA's steps
                    train=TrainConfig(epochs=3, batch_size=4, lr=3e-3, num_threads=1, seed=1,
                                      calibrate_norms=calibrate, linear_probe="off"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        job = TrainingJob(cfg, workspace=str(tmp_path / "ws"), run_dir=str(tmp_path / "ws" / name),
                          queue=DeviceQueue()).start()
        assert job.wait(120) and job.status == "finished", job.message
    return job, json.loads((job.run.path / "config.json").read_text())


def test_training_calibrates_random_weights_and_learns_faster_for_it(tmp_path):
    data = write_colour_folder(tmp_path / "data", per_class=8)
    on, on_cfg = _train(data, tmp_path, "on")
    off, off_cfg = _train(data, tmp_path, "off", calibrate="off")
    assert len(on_cfg["calibrated_norms"]) == 20 and off_cfg["calibrated_norms"] == []
    assert any("BatchNorm statistics of 20 frozen norms" in line for line in on.snapshot().log)
    assert on_cfg["speed"]["cache_frozen_prefix"]  # the cache is computed after the statistics
    loss_on = on.snapshot().epoch_rows[-1]["train_loss"]
    loss_off = off.snapshot().epoch_rows[-1]["train_loss"]
    # uncalibrated random BatchNorms barely normalise: the same steps fit the data far less
    assert loss_on < 0.8 * loss_off, (loss_on, loss_off)
    assert load_adapter(on.run.path).meta.calibrated_norms == on_cfg["calibrated_norms"]


def test_pretrained_statistics_are_kept_by_default(tmp_path):
    data = write_colour_folder(tmp_path / "data", per_class=4)
    _, cfg = _train(data, tmp_path, "bundled", weights="bundled", model="tf_efficientnet_lite0")
    assert cfg["calibrated_norms"] == []


def test_a_lone_last_image_is_left_out_of_the_statistics():
    model, _ = _resnet()
    batches = [torch.randn(4, 3, 32, 32), torch.randn(1, 3, 32, 32)]  # 32 px: layer4's maps are 1x1
    assert norm_calibration.calibrate(model, batches)
    assert int(model.bn1.num_batches_tracked) == 1
