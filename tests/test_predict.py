"""Loading adapters for inference: results, the CLI, and refusing every kind of bad file."""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from test_export import make_adapter, rel_diff

import lora_gui
from lora_gui.cli.export_commands import add_predict_parser, cli_predict
from lora_gui.errors import AdapterError
from lora_gui.inference.predict import load_adapter, predict
from lora_gui.lora.inject import lora_layers
from lora_gui.store.adapter_check import check_adapter_fits
from lora_gui.store.adapter_file import ADAPTER_FILE, read_adapter
from lora_gui.store.exports import export_adapter


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_adapter(tmp_path_factory.mktemp("pred"), "resnet18", image_size=64, classes=4)


@pytest.fixture(scope="module")
def loaded(small):
    return load_adapter(small.run_dir)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(70, 90), (64, 64), (120, 80)]):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def forged(small, folder: Path, edit_meta=None, edit_tensors=None) -> Path:
    """A copy of the adapter with its metadata or tensors changed, written as a valid safetensors file."""
    tensors, meta = read_adapter(small.run_dir)
    raw = meta.to_dict()
    if edit_meta:
        edit_meta(raw)
    if edit_tensors:
        edit_tensors(tensors)
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / ADAPTER_FILE), metadata={"lora_gui": json.dumps(raw)})
    return folder


# --------------------------------------------------------------------------- results

def test_load_adapter_gives_a_ready_model(small, loaded):
    assert lora_gui.load_adapter is load_adapter                 # the package-level entry point
    assert not loaded.model.training and loaded.classes == small.meta.classes
    assert all(layer.merged for _, layer in lora_layers(loaded.model))   # merged once, for speed
    with torch.no_grad():
        assert rel_diff(loaded.model(small.x), small.logits) < 1e-5
    unmerged = lora_gui.load_adapter(small.run_dir / "best" / ADAPTER_FILE, merge=False)
    assert not any(layer.merged for _, layer in lora_layers(unmerged.model))
    with torch.no_grad():
        assert rel_diff(unmerged.model(small.x), small.logits) < 1e-5


def test_predict_top_k(loaded, photos):
    results = predict(loaded, photos, topk=3)
    assert len(results) == 3
    for res in results:
        labels, probs = [c for c, _ in res], [p for _, p in res]
        assert len(res) == 3 and set(labels) <= set(loaded.classes) and len(set(labels)) == 3
        assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)
        assert sum(probs) <= 1 + 1e-6
    full = predict(loaded, photos[:1], topk=10)[0]              # more than there are classes
    assert len(full) == 4 and abs(sum(p for _, p in full) - 1) < 1e-5
    # the same answer for a path or a PIL image, batched or one by one
    from_pil = predict(loaded, [Image.open(photos[2])], topk=3)[0]
    assert [c for c, _ in from_pil] == [c for c, _ in results[2]]
    assert [p for _, p in from_pil] == pytest.approx([p for _, p in results[2]], abs=1e-6)
    batched = predict(loaded, photos, topk=2, batch_size=2)
    assert [[c for c, _ in r] for r in batched] == [[c for c, _ in r[:2]] for r in results]
    assert predict(loaded, [], topk=1) == []
    with pytest.raises(ValueError, match="topk"):
        predict(loaded, photos, topk=0)


def test_transform_is_the_adapters_eval_transform(loaded, photos):
    x = loaded.transform(Image.open(photos[0]).convert("RGB"))
    assert tuple(x.shape) == tuple(loaded.meta.data_config["input_size"]) == (3, 64, 64)


def test_check_adapter_fits_accepts_a_good_adapter(small):
    tensors, meta = read_adapter(small.run_dir)
    skeleton = check_adapter_fits(tensors, meta)
    assert {n for n, _ in lora_layers(skeleton)} == set(meta.layers)


# --------------------------------------------------------------------------- refusing bad files

def _rank8(raw):
    raw["lora"]["rank"] = 8


def _four_to_five_classes(raw):
    raw["classes"].append("class_extra")


def _other_model(raw):
    raw["model"]["name"] = "convnext_atto"


@pytest.mark.parametrize("edit_meta, edit_tensors, message", [
    (_rank8, None, r"rank mismatch: .*rank 4 but its metadata says rank 8"),
    (_four_to_five_classes, None, r"class count mismatch: .*4 outputs .* 5 class names"),
    (_other_model, None, r"names layer 'layer4\.0\.conv1', which convnext_atto does not have"),
    (lambda raw: raw["model"].update(name="resnet_nonexistent"), None, r"timm .* does not have"),
    (lambda raw: raw["layers"].append("layer9.conv1"), None, r"names layer 'layer9\.conv1'"),
    (lambda raw: raw.update(classes=["a", "a", "b", "c"]), None, "distinct"),
    (lambda raw: raw["data_config"].update(input_size=[3, 100000, 100000]), None, "data config is invalid"),
    (None, lambda t: t.pop("fc.bias"), r"1 missing, e\.g\. fc\.bias"),
    # a frozen base weight smuggled in would silently replace the base model's
    (None, lambda t: t.update({"conv1.weight": torch.zeros(64, 3, 7, 7)}), r"1 unexpected, e\.g\. conv1\.weight"),
    (None, lambda t: t["fc.weight"].__setitem__((0, 0), float("nan")), "NaN"),
    (None, lambda t: t.update({"layer4.0.conv1.lora_B.weight": torch.zeros(512, 4, 3, 3)}),
     r"layer4\.0\.conv1\.lora_B\.weight has shape"),
])
def test_mismatched_adapters_are_refused(small, tmp_path, edit_meta, edit_tensors, message):
    folder = forged(small, tmp_path / "forged", edit_meta, edit_tensors)
    with pytest.raises(AdapterError, match=message):
        load_adapter(folder)
    with pytest.raises(AdapterError, match=message):               # nor exported
        export_adapter(folder, "native", tmp_path / "out")


def test_adapter_of_another_rank_is_refused(small, tmp_path):
    other = make_adapter(tmp_path, "resnet18", image_size=64, classes=4, rank=2)
    tensors, _ = read_adapter(other.run_dir)
    folder = forged(small, tmp_path / "mixed", edit_tensors=lambda t: (t.clear(), t.update(tensors)))
    with pytest.raises(AdapterError, match="rank"):
        load_adapter(folder)


def test_damaged_files_are_refused(small, tmp_path):
    good = (small.run_dir / "best" / ADAPTER_FILE).read_bytes()
    cases = {"truncated": good[: len(good) // 2], "header": bytearray(good), "length": bytearray(good)}
    cases["header"][20:28] = b"\xff" * 8                         # inside the JSON header
    cases["length"][0:8] = (10 ** 12).to_bytes(8, "little")      # header length beyond the file
    for name, data in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / ADAPTER_FILE).write_bytes(bytes(data))
        with pytest.raises(AdapterError, match="damaged|not a safetensors|metadata"):
            load_adapter(tmp_path / name)


def test_pickle_files_are_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    torch.save({"fc.weight": Payload()}, tmp_path / "adapter.pth")
    with pytest.raises(AdapterError, match="safetensors only"):
        load_adapter(tmp_path / "adapter.pth")
    (tmp_path / "disguised").mkdir()
    shutil.copy(tmp_path / "adapter.pth", tmp_path / "disguised" / ADAPTER_FILE)
    with pytest.raises(AdapterError, match="damaged or not a safetensors"):
        load_adapter(tmp_path / "disguised")
    with pytest.raises(AdapterError, match="no adapter found"):
        load_adapter(tmp_path)                                   # a folder with only the .pth in it
    assert not marker.exists()


def test_edited_exports_are_refused(small, tmp_path):
    export_adapter(small.run_dir, "peft", tmp_path / "peft")
    config_file = tmp_path / "peft" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps(dict(config, r=8)))
    with pytest.raises(AdapterError, match="rank is 8 but the adapter was trained with 4"):
        load_adapter(tmp_path / "peft")
    config_file.write_text(json.dumps(dict(config, target_modules=".*")))
    with pytest.raises(AdapterError, match="target_modules is '.*' but"):
        load_adapter(tmp_path / "peft")
    merged = export_adapter(small.run_dir, "merged", tmp_path / "merged")
    state = load_file(str(merged))
    state["fc.weight"], state["fc.bias"] = state["fc.weight"][:3], state["fc.bias"][:3]
    from safetensors import safe_open
    with safe_open(str(merged), "pt") as f:
        metadata = f.metadata()
    save_file(state, str(merged), metadata=metadata)
    with pytest.raises(AdapterError, match="class count mismatch: .*3 outputs .* 4 class names"):
        load_adapter(merged)
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    with pytest.raises(AdapterError, match="onnxruntime"):
        load_adapter(tmp_path / "model.onnx")


# --------------------------------------------------------------------------- the CLI

def _parse(argv):
    parser = argparse.ArgumentParser(prog="lora_gui")
    add_predict_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_predict_text_and_json(small, photos, capsys):
    args = _parse(["predict", "--adapter", str(small.run_dir), *map(str, photos[:2]), "--topk", "2"])
    assert args.func is cli_predict and cli_predict(args) == 0
    out = capsys.readouterr().out
    assert str(photos[0]) in out and "class_" in out and "%" in out
    assert cli_predict(_parse(["predict", "--adapter", str(small.run_dir), str(photos[0]), "--json"])) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["image"] == str(photos[0]) and len(data[0]["predictions"]) == 4
    probs = [p["probability"] for p in data[0]["predictions"]]
    assert probs == sorted(probs, reverse=True) and data[0]["predictions"][0]["label"] in small.meta.classes


def test_cli_predict_says_not_sure_below_the_saved_threshold(small, photos, tmp_path, capsys):
    """#16: the calibration saved beside the adapter (temperature, threshold) is what the CLI uses."""
    from lora_gui.store.calibration_file import Calibration, write_calibration
    run = tmp_path / "run"
    shutil.copytree(small.run_dir, run)
    argv = ["predict", "--adapter", str(run), str(photos[0]), "--topk", "2"]
    write_calibration(run / "best", Calibration(temperature=1.0, threshold=1.0))   # nothing is sure enough
    assert cli_predict(_parse(argv)) == 0
    out = capsys.readouterr().out
    assert f"{photos[0]}: Not sure — looks most like class_" in out and "below the 100% threshold" in out
    assert cli_predict(_parse([*argv, "--json"])) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["not_sure"] is True and row["verdict"].startswith("Not sure — looks most like "
                                                                 + row["predictions"][0]["label"])
    write_calibration(run / "best", Calibration(temperature=1.0, threshold=0.0))   # every answer kept
    assert cli_predict(_parse([*argv, "--json"])) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["not_sure"] is False and row["verdict"].startswith(row["predictions"][0]["label"])
    assert cli_predict(_parse(argv)) == 0
    assert "Not sure" not in capsys.readouterr().out


def test_cli_predict_bad_input_exits_2(small, photos, tmp_path, capsys):
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("not a picture")
    for argv in (["--adapter", str(tmp_path / "missing"), str(photos[0])],
                 ["--adapter", str(small.run_dir), str(not_image)],
                 ["--adapter", str(small.run_dir), str(tmp_path / "gone.png")],
                 ["--adapter", str(small.run_dir), str(photos[0]), "--topk", "0"]):
        assert cli_predict(_parse(["predict", *argv])) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err


def test_a_flipped_byte_in_the_tensor_data_is_caught(small, tmp_path):
    """safetensors checks its header only; the digest saved beside the metadata covers the tensors."""
    data = bytearray((small.run_dir / "best" / ADAPTER_FILE).read_bytes())
    data[-5] ^= 0x01                                             # one bit of the last tensor
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / ADAPTER_FILE).write_bytes(bytes(data))
    with pytest.raises(AdapterError, match="does not match the checksum"):
        load_adapter(tmp_path / "bad")
    with pytest.raises(AdapterError, match="does not match the checksum"):
        export_adapter(tmp_path / "bad", "merged", tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()


BIG_SIDE = 13_000  # 169 MP: a ~20 KB PNG that would take ~500 MB as RGB pixels
CAP_SCRIPT = r"""
import json, resource, sys, time
import numpy as np
from PIL import Image
from lora_gui.data.class_builder import ClassBuilder
from lora_gui.errors import DataError
from lora_gui.inference.predict import load_adapter, predict
loaded = load_adapter(sys.argv[1])
cb = ClassBuilder(sys.argv[3], "cap")
cb.add_class("big")
frame = np.zeros((13000, 13000), np.uint8)   # what a webcam or Python caller could hand over
frame[::97] = 255
def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out = {"before_mb": peak_mb()}
for name, call in (("predict array", lambda: predict(loaded, [frame])),
                   ("predict PIL", lambda: predict(loaded, [Image.fromarray(frame)])),
                   ("predict file", lambda: predict(loaded, [sys.argv[2]])),
                   ("builder array", lambda: cb.add_image_array("big", frame))):
    try:
        call()
        out[name] = "accepted"
    except DataError as exc:
        out[name] = str(exc)
added = cb.add_images("big", [sys.argv[2]])
out["builder file"] = [added.added, added.skipped]
out["after_mb"] = peak_mb()
try:
    Image.open(sys.argv[2])
    out["pillow open"] = "opened"
except Image.DecompressionBombError:
    out["pillow open"] = "refused"
print(json.dumps(out))
"""


def test_one_image_size_cap_everywhere_an_image_enters(small, tmp_path):
    # #13.8: the same 40 MP cap for files, PIL images and arrays, checked before any pixels are copied
    import subprocess
    import sys
    big = tmp_path / "big.png"
    Image.new("1", (BIG_SIDE, BIG_SIDE), 1).save(big, optimize=True)
    assert big.stat().st_size < 100_000
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", CAP_SCRIPT, str(small.run_dir), str(big), str(tmp_path / "ws")],
                         cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    for name in ("predict array", "predict PIL", "builder array"):
        assert res[name] == ("image of 13000x13000 pixels (169 MP) refused: the limit is 40 MP; "
                             "scale it down and try again"), (name, res[name])
    assert "too many pixels" in res["predict file"]
    assert res["builder file"][0] == 0 and "too many pixels" in res["builder file"][1][0][1]
    assert res["pillow open"] == "refused"  # Pillow's own guard is set for the whole process
    assert res["after_mb"] - res["before_mb"] < 150, res
