"""Exports load where they claim to: PEFT (the real package), plain timm, onnxruntime.

Adapters are made the fast way: a real timm model (no downloads), LoRA injected,
every trainable tensor randomised so LoRA deltas and the head are far from
their initial values, then saved with save_adapter. The in-memory model is the
reference every export must reproduce.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import warnings
import zipfile
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from lora_gui.backbones.build import build_model, data_config
from lora_gui.cli.export_commands import add_export_parser, cli_export
from lora_gui.config import LoraConfig, ModelConfig
from lora_gui.errors import AdapterError, ExportError
from lora_gui.inference.predict import load_adapter, predict
from lora_gui.lora.inject import inject_lora
from lora_gui.lora.targets import head_modules
from lora_gui.store.adapter_file import AdapterMeta, save_adapter
from lora_gui.store.exports import FORMATS, export_adapter, export_zip

# ViT needs its own 224 px; the CNNs run at 96 px, which keeps the suite fast on 2 cores.
FAMILIES = {
    "vit": ("vit_tiny_patch16_224", "random", None),
    "convnext": ("convnext_atto", "random", 96),
    "resnet": ("resnet18", "random", 96),
    "efficientnet": ("tf_efficientnet_lite0", "bundled", 96),
}


@dataclass
class Trained:
    run_dir: Path
    model: nn.Module        # the trained model in memory: the reference
    meta: AdapterMeta
    x: torch.Tensor         # a batch of 2 inputs at the adapter's size

    @property
    def logits(self) -> torch.Tensor:
        with torch.no_grad():
            return self.model(self.x)


def make_adapter(root: Path, name: str, weights: str = "random", image_size: int | None = None,
                 seed: int = 0, classes: int = 3, **lora_kwargs) -> Trained:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random weights learn poorly": true, and irrelevant here
        model = build_model(ModelConfig(name=name, weights=weights, image_size=image_size), classes)
    cfg = LoraConfig(**{"rank": 4, "alpha": 8.0, **lora_kwargs})
    layers = inject_lora(model, cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    model.eval()
    meta = AdapterMeta(ModelConfig(name=name, weights=weights, image_size=image_size), cfg, layers,
                       [f"class_{i}" for i in range(classes)], data_config(model, image_size), base_seed=seed)
    run_dir = root / name
    save_adapter(model, meta, run_dir / "best")   # a run folder: export resolves best/
    x = torch.randn(2, *meta.data_config["input_size"], generator=torch.Generator().manual_seed(7))
    return Trained(run_dir, model, meta, x)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def peft_base(meta: AdapterMeta) -> nn.Module:
    """The base model exactly as the export's README tells a PEFT user to build it."""
    k = len(meta.classes)
    if meta.model.weights == "random":
        torch.manual_seed(meta.base_seed)
        return timm.create_model(meta.model.name, pretrained=False, num_classes=k)
    return build_model(ModelConfig(name=meta.model.name, weights=meta.model.weights), k)


def load_with_peft(folder: Path, meta: AdapterMeta):
    import peft
    base = peft_base(meta)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = peft.PeftModel.from_pretrained(base, str(folder))
    assert [str(w.message) for w in caught] == []
    return model.eval()


@pytest.fixture(scope="module", params=list(FAMILIES))
def trained(request, tmp_path_factory) -> Trained:
    name, weights, size = FAMILIES[request.param]
    return make_adapter(tmp_path_factory.mktemp(request.param), name, weights, size)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Trained:
    return make_adapter(tmp_path_factory.mktemp("small"), "resnet18", image_size=64)


# --------------------------------------------------------------------------- round trips, every family

def test_native_round_trip(trained, tmp_path):
    artefact = export_adapter(trained.run_dir, "native", tmp_path)
    assert artefact == tmp_path / "adapter.safetensors"
    assert {p.name for p in tmp_path.iterdir()} == {"adapter.safetensors", "adapter.json", "labels.json",
                                                    "preprocessing.json", "README.md"}
    assert json.loads((tmp_path / "labels.json").read_text()) == trained.meta.classes
    loaded = load_adapter(tmp_path)
    assert loaded.layout == "native" and loaded.classes == trained.meta.classes
    with torch.no_grad():
        assert rel_diff(loaded.model(trained.x), trained.logits) < 1e-5


def test_peft_interop(trained, tmp_path):
    import peft
    export_adapter(trained.run_dir, "peft", tmp_path)
    model = load_with_peft(tmp_path, trained.meta)          # no warnings
    with torch.no_grad():
        assert rel_diff(model(trained.x), trained.logits) < 1e-5
    # target_modules matched exactly the trained layers, and the head went through modules_to_save
    wrapped = {n.removeprefix("base_model.model.") for n, m in model.named_modules()
               if isinstance(m, peft.tuners.lora.LoraLayer)}
    assert wrapped == set(trained.meta.layers)
    saved = {n.removeprefix("base_model.model.") for n, m in model.named_modules()
             if isinstance(m, peft.utils.other.ModulesToSaveWrapper)}
    assert saved == set(head_modules(trained.model))
    # the file holds exactly what PEFT's own save_pretrained would write
    ours = load_file(str(tmp_path / "adapter_model.safetensors"))
    theirs = peft.get_peft_model_state_dict(model)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8.0 and config["modules_to_save"]


def test_merged_loads_strictly_into_plain_timm(trained, tmp_path):
    file = export_adapter(trained.run_dir, "merged", tmp_path)
    plain = timm.create_model(trained.meta.model.name, pretrained=False, num_classes=3)
    plain.load_state_dict(load_file(str(file)), strict=True)
    with torch.no_grad():
        assert rel_diff(plain.eval()(trained.x), trained.logits) < 1e-5
    assert json.loads((tmp_path / "preprocessing.json").read_text())["input_size"] == \
        list(trained.meta.data_config["input_size"])


def test_onnx_matches_pytorch(trained, tmp_path):
    import onnxruntime as ort
    file = export_adapter(trained.run_dir, "onnx", tmp_path)
    check = json.loads((tmp_path / "onnx_check.json").read_text())
    assert check["relative_diff"] < 1e-4
    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    x = trained.x[:1]                                        # batch 1: the batch axis is dynamic
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    with torch.no_grad():
        assert rel_diff(got, trained.model(x)) < 1e-4


# --------------------------------------------------------------------------- one family is enough

def test_exports_load_back_with_load_adapter(small, tmp_path):
    export_adapter(small.run_dir, "peft", tmp_path / "peft")
    merged = export_adapter(small.run_dir, "merged", tmp_path / "merged")
    for path, layout in ((tmp_path / "peft", "peft"), (merged, "merged"), (tmp_path / "merged", "merged")):
        loaded = load_adapter(path)
        assert loaded.layout == layout and loaded.classes == small.meta.classes
        with torch.no_grad():
            assert rel_diff(loaded.model(small.x), small.logits) < 1e-5


def test_trained_norms_and_biases_travel_to_peft(tmp_path):
    t = make_adapter(tmp_path, "resnet18", image_size=64, train_norm=True, train_bias=True)
    export_adapter(t.run_dir, "peft", tmp_path / "peft")
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["bias"] == "all"
    model = load_with_peft(tmp_path / "peft", t.meta)
    with torch.no_grad():
        assert rel_diff(model(t.x), t.logits) < 1e-5
    assert rel_diff(load_adapter(tmp_path / "peft").model(t.x).detach(), t.logits) < 1e-5


def test_readme_code_runs_as_written(small, tmp_path, monkeypatch):
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8))
    expected = None
    for fmt in ("merged", "peft", "onnx"):
        out = tmp_path / fmt
        export_adapter(small.run_dir, fmt, out)
        photo.save(out / "photo.jpg")
        readme = (out / "README.md").read_text()
        code = readme.split("```python\n")[1].split("```")[0]
        monkeypatch.chdir(out)
        buf = io.StringIO()
        with redirect_stdout(buf):
            exec(compile(code, f"{fmt}/README.md", "exec"), {})
        label = buf.getvalue().strip()
        expected = expected or predict(load_adapter(small.run_dir), [out / "photo.jpg"], topk=1)[0][0][0]
        assert label == expected, fmt


def test_snippets_rebuild_a_vit_at_the_size_it_was_trained_at(tmp_path, monkeypatch):
    """A ViT trained at 64 px instead of its own 224: its position embeddings are sized for 64, so
    every snippet (merged, PEFT, the demo app) must build it with img_size=64 to load the weights."""
    t = make_adapter(tmp_path, "vit_tiny_patch16_224", image_size=64)
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 255, (90, 70, 3), dtype=np.uint8))
    expected = None
    for fmt in ("merged", "peft"):
        out = tmp_path / fmt
        export_adapter(t.run_dir, fmt, out)
        photo.save(out / "photo.jpg")
        code = (out / "README.md").read_text().split("```python\n")[1].split("```")[0]
        assert "img_size=64" in code, fmt
        monkeypatch.chdir(out)
        buf = io.StringIO()
        with redirect_stdout(buf):
            exec(compile(code, f"{fmt}/README.md", "exec"), {})
        expected = expected or predict(load_adapter(t.run_dir), [out / "photo.jpg"], topk=1)[0][0][0]
        assert buf.getvalue().strip() == expected, fmt
    loaded = load_adapter(tmp_path / "merged")   # lora_gui reads the merged file back at 64 px too
    with torch.no_grad():
        assert rel_diff(loaded.model(t.x), t.logits) < 1e-5
    export_adapter(t.run_dir, "demo_app", tmp_path / "demo")
    app_line = next(line for line in (tmp_path / "demo" / "app.py").read_text().splitlines()
                    if "timm.create_model(" in line)
    assert app_line.endswith("num_classes=len(LABELS), img_size=64)")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=64)
    model.load_state_dict(load_file(str(tmp_path / "demo" / "model.safetensors")), strict=True)


def test_demo_app_is_an_export_format_with_its_own_readme(small, tmp_path, capsys):
    """#16: the demo app goes through the same export path as every format (the CLI's --format, a zip,
    the Export tab's list), and keeps its own README: the Hugging Face Space card, not the generic one."""
    from lora_gui.store.demo_app_format import DEMO_FILES
    from lora_gui.ui.tabs.export_tab import FORMAT_CHOICES, readme_snippet
    assert "demo_app" in [v for _, v in FORMAT_CHOICES]
    parser = argparse.ArgumentParser()
    add_export_parser(parser.add_subparsers())
    out = tmp_path / "demo"
    assert cli_export(parser.parse_args(["export", str(small.run_dir), "--format", "demo_app", "--out", str(out)])) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(DEMO_FILES)
    readme = (out / "README.md").read_text()
    assert readme.startswith("---\n") and "sdk: gradio" in readme and "app_file: app.py" in readme
    assert "demo_app export (lora_gui)" not in readme
    assert "lora_gui" not in (out / "requirements.txt").read_text()
    assert json.loads((out / "labels.json").read_text()) == small.meta.classes
    assert load_adapter(out).layout == "merged"   # its model.safetensors is the merged export's
    zip_path = export_zip(small.run_dir, "demo_app", tmp_path / "dl" / "demo.zip")
    with zipfile.ZipFile(zip_path) as zf:
        assert sorted(zf.namelist()) == sorted(DEMO_FILES)
        assert zf.read("README.md").decode() == readme
    assert readme_snippet(zip_path).startswith("pip install -r requirements.txt")


def test_export_zip_holds_the_export(small, tmp_path):
    zip_path = export_zip(small.run_dir, "peft", tmp_path / "dl" / "adapter_peft.zip")
    with zipfile.ZipFile(zip_path) as zf:
        # random base weights are on no hub: the export carries them (base_model.safetensors)
        assert set(zf.namelist()) == {"adapter_config.json", "adapter_model.safetensors", "labels.json",
                                      "preprocessing.json", "README.md", "base_model.safetensors"}
        assert json.loads(zf.read("labels.json")) == small.meta.classes
    assert not list((tmp_path / "dl").glob("*.partial"))


def test_peft_export_refused_where_peft_would_bypass_lora(tmp_path):
    # EVA's attention calls F.linear(x, self.qkv.weight): PEFT's wrapper would be skipped silently.
    t = make_adapter(tmp_path, "eva02_tiny_patch14_224", targets="attention")
    with pytest.raises(AdapterError, match="reads qkv.weight directly.*merged"):
        export_adapter(t.run_dir, "peft", tmp_path / "peft")
    assert not (tmp_path / "peft" / "adapter_model.safetensors").exists()


def test_peft_export_refused_where_peft_would_pick_another_head():
    # PEFT picks modules_to_save by str.endswith: a block named "...fc" would be taken for the head "fc".
    from lora_gui.store.peft_format import _peft_config

    class Net(nn.Module):
        pretrained_cfg = {"classifier": "fc"}

        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 4))
            self.body.add_module("se_fc", nn.Linear(4, 4))
            self.fc = nn.Linear(4, 2)
    meta = AdapterMeta(ModelConfig(name="resnet18", weights="random"), LoraConfig(), ["body.0"], ["a", "b"],
                       {"input_size": (3, 32, 32)})
    with pytest.raises(AdapterError, match="would also treat body.se_fc as the head 'fc'"):
        _peft_config(Net(), meta)


def test_bad_export_requests_are_refused(small, tmp_path, monkeypatch):
    with pytest.raises(AdapterError, match="unknown export format 'pdf'"):
        export_adapter(small.run_dir, "pdf", tmp_path)
    with pytest.raises(AdapterError, match="another folder"):
        export_adapter(small.run_dir, "native", small.run_dir / "best")
    with pytest.raises(AdapterError, match="no adapter found"):
        export_adapter(tmp_path / "nowhere", "native", tmp_path / "out")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)    # as if the optional extra were not installed
    with pytest.raises(ExportError, match="pip install onnx onnxruntime"):
        export_adapter(small.run_dir, "onnx", tmp_path / "onnx")


def test_cli_export_exit_codes(small, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="lora_gui")
    add_export_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", str(small.run_dir), "--format", "merged", "--out", str(tmp_path / "m")])
    assert args.func(args) == 0 and (tmp_path / "m" / "model.safetensors").is_file()
    assert "exported merged" in capsys.readouterr().out
    args = parser.parse_args(["export", str(small.run_dir), "--out", str(tmp_path / "n.zip")])
    assert cli_export(args) == 0 and zipfile.is_zipfile(tmp_path / "n.zip")
    args = parser.parse_args(["export", str(tmp_path / "missing"), "--format", "peft", "--out", str(tmp_path / "x")])
    assert cli_export(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no adapter found") and "Traceback" not in err
    with pytest.raises(SystemExit):
        parser.parse_args(["export", str(small.run_dir), "--format", "pdf", "--out", "x"])
    assert set(FORMATS) == {"native", "peft", "merged", "onnx", "onnx_int8", "openvino", "coreml", "tflite",
                            "demo_app"}


def test_onnx_export_that_fails_its_check_is_not_written(small, tmp_path, monkeypatch, capsys):
    import lora_gui.store.onnx_format as onnx_format
    monkeypatch.setattr(onnx_format, "ONNX_TOLERANCE", -1.0)         # no model can pass: the failure path
    args = argparse.Namespace(run_dir=str(small.run_dir), format="onnx", out=str(tmp_path))
    assert cli_export(args) == 1
    assert "differs from PyTorch" in capsys.readouterr().err
    assert not (tmp_path / "model.onnx").exists() and not (tmp_path / "README.md").exists()
