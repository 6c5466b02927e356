"""The app's public endpoints through gradio_client, against the real launched server."""
from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.timeout(400)

FIELD_VALUES = {  # FIELD_NAMES order, as the form would send them
    "model_name": "tf_efficientnet_lite0", "weights": "bundled", "weights_file": "", "image_size": 96,
    "rank": 4, "alpha": 8, "dropout": 0.0, "targets": "auto", "train_norm": False, "train_bias": False,
    "use_rslora": False, "epochs": 2, "batch_size": 16, "lr": 0.002, "seed": 0, "augmentation": "flip",
    "val_fraction": 0.2,
}


@pytest.fixture
def client(app_server):
    from gradio_client import Client
    return Client(app_server[0], analytics_enabled=False, verbose=False)


def _values(**over):
    from lora_gui.ui.fields import FIELD_NAMES
    v = dict(FIELD_VALUES, **over)
    return [v[n] for n in FIELD_NAMES]


def test_endpoints_train_predict_export(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    summary, *_ = client.predict(0.2, api_name="/use_example")
    assert "120 images used in 4 classes" in summary

    # the Resolution as the API schema lists it: a string ('96'), which was refused
    client.predict(*_values(image_size="96"), api_name="/start_training")
    deadline = time.time() + 240
    while time.time() < deadline:
        progress, *_ = client.predict(api_name="/training_status")
        if progress and any(f"data-status='{s}'" in progress for s in ("finished", "failed", "stopped")):
            break
        time.sleep(1)
    assert "data-status='finished'" in progress, progress

    # A second start while nothing runs is fine; a bad value is refused with its reason.
    bad = dict(FIELD_VALUES, lr=-1)
    from lora_gui.ui.fields import FIELD_NAMES
    with pytest.raises(AppError, match="learning rate"):
        client.predict(*[bad[n] for n in FIELD_NAMES], api_name="/start_training")

    label, _ = client.predict(handle_file(str(REPO / "assets/example/sneaker/00.png")), api_name="/predict")
    assert label["label"] == "sneaker", label
    assert abs(sum(c["confidence"] for c in label["confidences"]) - 1) < 0.02

    summary_md, table, *_ = client.predict(api_name="/evaluate")
    assert "ccuracy" in summary_md

    file_path, code, _ = client.predict("merged", api_name="/export")
    with zipfile.ZipFile(file_path) as z:
        names = [Path(n).name for n in z.namelist()]
        labels = json.loads(next(z.read(n) for n in z.namelist() if n.endswith("labels.json")))
    assert "model.safetensors" in " ".join(names) and labels == ["bag", "sneaker", "t-shirt", "trouser"]
    assert "load_state_dict" in code
    # the shareable demo app is one of the Export tab's formats, with its run commands as the code shown
    file_path, code, _ = client.predict("demo_app", api_name="/export")
    with zipfile.ZipFile(file_path) as z:
        assert {"app.py", "requirements.txt", "model.safetensors", "calibration.json"} <= set(z.namelist())
        assert "sdk: gradio" in z.read("README.md").decode()
    assert code.startswith("pip install -r requirements.txt") and "python app.py" in code

    runs = client.predict(None, [], api_name="/list_runs")
    assert any("tf_efficientnet_lite0" in json.dumps(r) for r in runs[:1]), runs[:1]


def test_unusable_uploads_are_refused_with_a_sentence(client, tmp_path):
    """An upload Gradio cannot decode (too many pixels, not an image) fails in the component's
    preprocess, before the handler: the caller still gets a sentence, not a bare error."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    from PIL import Image
    huge = tmp_path / "huge.png"
    Image.new("1", (10_000, 10_000)).save(huge)            # 100 MP: Pillow's bomb error in Gradio
    big = tmp_path / "big.png"
    Image.new("1", (8_000, 6_000)).save(big)               # 48 MP: over our 40 MP, under Pillow's error
    text = tmp_path / "notes.png"
    text.write_text("this is a shopping list, not a picture")
    with pytest.raises(AppError, match="too many pixels.*scale it down"):
        client.predict(handle_file(str(huge)), api_name="/predict")
    with pytest.raises(AppError, match="8000×6000 .*more than the 40 MP"):
        client.predict(handle_file(str(big)), api_name="/predict")
    with pytest.raises(AppError, match="could not be read as a picture"):
        client.predict(handle_file(str(text)), api_name="/predict")
    # a real picture in a format only Pillow's wider set of decoders opens (EPS would start Ghostscript):
    # refused from its header by name, never handed to that decoder
    for ext in ("eps", "ppm"):
        other = tmp_path / f"scan.{ext}"
        Image.new("RGB", (32, 32), (0, 128, 255)).save(other)
        with pytest.raises(AppError, match=rf"scan\.{ext} is a \.{ext} picture, a format this app does not read"):
            client.predict(handle_file(str(other)), api_name="/predict")


def test_class_builder_says_which_files_it_left_out(client, tmp_path):
    from gradio_client import handle_file
    from PIL import Image
    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "red mug.png")
    (tmp_path / "mug.png").write_bytes(b"GIF89a but not really")        # an image name, not an image
    client.predict("mug", api_name="/add_class")
    _, text, _ = client.predict("mug", [handle_file(str(tmp_path / "red mug.png")),
                                           handle_file(str(tmp_path / "mug.png"))], api_name="/add_class_images")
    assert "**mug**: 1 image(s)" in text
    assert "1 image(s) added, 1 left out: mug.png (" in text.replace("\\", ""), text


def test_errors_reach_the_client_as_messages(client):
    from gradio_client.exceptions import AppError
    with pytest.raises(AppError, match="Choose a dataset first"):
        client.predict(*_values(), api_name="/start_training")
    with pytest.raises(AppError, match="^'/no/such/folder' does not exist"):   # its opening quote kept
        client.predict("/no/such/folder", 0.2, api_name="/load_path")
    # pasted as "Copy as path" gives it, or as a file manager's address: the same folder
    example = REPO / "assets" / "example"
    for typed in (f'"{example}"', f"'{example}'", "file://" + str(example).replace(" ", "%20")):
        summary = client.predict(typed, 0.2, api_name="/load_path")[0]
        assert "120" in str(summary) or "bag" in str(summary), (typed, summary)
    with pytest.raises(AppError, match="00.png is one picture: give the folder that holds the class folders"):
        client.predict(str(example / "bag" / "00.png"), 0.2, api_name="/load_path")
    with pytest.raises(AppError, match="Train a model first"):
        from gradio_client import handle_file
        client.predict(handle_file(str(REPO / "assets/example/bag/00.png")), api_name="/predict")
