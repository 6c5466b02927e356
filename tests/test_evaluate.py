"""Evaluation on a run's validation split: the numbers match a hand computation."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from lora_gui.backbones.build import build_model, data_config
from lora_gui.config import LoraConfig, ModelConfig, RunConfig
from lora_gui.errors import DamagedRun, DataError
from lora_gui.inference.evaluate import (
    EvalResult,
    evaluate_run,
    find_run_dir,
    metrics_from_predictions,
    read_split,
)
from lora_gui.inference.predict import load_adapter, predict
from lora_gui.lora.inject import inject_lora
from lora_gui.store.adapter_file import AdapterMeta, save_adapter
from lora_gui.store.records import RunRecord
from lora_gui.ui.charts import confusion_figure

CLASSES = ["ant", "bee", "cat"]


@pytest.fixture
def run_dir(tmp_path, make_image_folder):
    """A run folder as training leaves it: config.json, split.json, best/adapter.safetensors."""
    layout = {f"{c}/{i}.png": (40, 40) for c in CLASSES for i in range(5)}
    images = make_image_folder(layout, "data")
    run = tmp_path / "run-test"
    val = [[str(images / rel), CLASSES.index(rel.split("/")[0])] for rel in sorted(layout)]
    (run / "split.json").parent.mkdir(parents=True, exist_ok=True)
    (run / "split.json").write_text(json.dumps({"train": [], "val": val}))
    # random weights decide the predictions: take the first seed whose adapter
    # gets some images right and some wrong, so the hand computation is a real check
    for seed in range(20):
        _save_random_adapter(run, seed)
        true, pred = _hand(run)
        if len(set(pred)) > 1 and pred != true:
            return run
    raise AssertionError("no seed in 0..19 gave a non-trivial adapter")


def _save_random_adapter(run, seed):
    torch.manual_seed(seed)
    cfg, lcfg = ModelConfig(name="resnet18", weights="random", image_size=32), LoraConfig(rank=4, targets="all-conv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(cfg, len(CLASSES))
    layers = inject_lora(model, lcfg)
    with torch.no_grad():  # LoRA B starts at zero; give it weight so the adapter matters
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    meta = AdapterMeta(cfg, lcfg, layers, CLASSES, data_config(model, 32), base_seed=seed)
    save_adapter(model, meta, run / "best")
    RunRecord(RunConfig(model=cfg, lora=lcfg), CLASSES, layers, data_config(model, 32)).write(run)


def _hand(run_dir):
    """Predictions through the public predict(), then metrics by hand."""
    val = json.loads((run_dir / "split.json").read_text())["val"]
    loaded = load_adapter(run_dir)
    preds = [CLASSES.index(r[0][0]) for r in predict(loaded, [p for p, _ in val], topk=1)]
    return [label for _, label in val], preds


def test_accuracy_and_matrix_match_hand_computation(run_dir):
    true, pred = _hand(run_dir)
    assert len(set(pred)) > 1 and pred != true   # a non-trivial case: some right, some wrong
    result = evaluate_run(run_dir)
    assert isinstance(result, EvalResult)
    assert result.classes == CLASSES
    assert result.accuracy == pytest.approx(sum(t == p for t, p in zip(true, pred)) / len(true))
    assert result.total == sum(map(sum, result.confusion)) == len(true) == 15
    for i in range(3):
        for j in range(3):
            assert result.confusion[i][j] == sum(t == i and p == j for t, p in zip(true, pred))
    for i, row in enumerate(result.per_class):
        tp = sum(t == i and p == i for t, p in zip(true, pred))
        predicted, support = pred.count(i), true.count(i)
        assert row["class"] == CLASSES[i] and row["support"] == support == 5
        assert row["precision"] == pytest.approx(tp / predicted if predicted else 0.0)
        assert row["recall"] == pytest.approx(tp / support)
    wrong = [(t, p) for t, p in zip(true, pred) if t != p]
    assert len(result.misclassified) == len(wrong)
    probs = [m[3] for m in result.misclassified]
    assert probs == sorted(probs, reverse=True) and all(0 < p <= 1 for p in probs)
    for path, t, p, _ in result.misclassified:
        assert t != p and path.endswith(".png") and f"/{t}/" in path


def test_loaded_adapter_with_samples_and_class_names(run_dir):
    loaded = load_adapter(run_dir)
    val = read_split(run_dir)
    by_name = [(p, CLASSES[label]) for p, label in val]
    a = evaluate_run(loaded, samples=by_name, batch_size=4)
    b = evaluate_run(loaded, run_dir=run_dir / "best" / "adapter.safetensors")
    assert a.confusion == b.confusion == evaluate_run(run_dir).confusion


def test_metrics_known_example():
    # true: 0 0 0 1 1 2 ; pred: 0 0 1 1 2 2
    acc, cm, rows = metrics_from_predictions([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], CLASSES)
    assert acc == pytest.approx(4 / 6)
    assert cm == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert [r["precision"] for r in rows] == pytest.approx([1.0, 0.5, 0.5])
    assert [r["recall"] for r in rows] == pytest.approx([2 / 3, 0.5, 1.0])
    assert rows[0]["f1"] == pytest.approx(0.8)
    assert [r["support"] for r in rows] == [3, 2, 1]
    _, _, rows = metrics_from_predictions([0, 1], [0, 0], CLASSES)  # never predicted, never present
    assert rows[1]["precision"] == 0.0 and rows[2]["support"] == 0


def test_missing_images_are_skipped_not_fatal(run_dir):
    split = json.loads((run_dir / "split.json").read_text())
    gone = split["val"][0][0]
    (run_dir / "split.json").write_text(json.dumps({"train": [], "val": split["val"] + [[gone + ".gone.png", 0]]}))
    result = evaluate_run(run_dir)
    assert result.total == 15 and len(result.skipped) == 1 and "not found" in result.skipped[0][1]


def test_refusals_name_the_problem(run_dir, tmp_path):
    with pytest.raises(DataError, match="none of the 1 validation images"):
        evaluate_run(run_dir, samples=[(str(tmp_path / "nope.png"), 0)])
    with pytest.raises(DataError, match="out of range"):
        evaluate_run(run_dir, samples=[(str(tmp_path / "x.png"), 7)])
    with pytest.raises(DataError, match="not one of the model's classes"):
        evaluate_run(run_dir, samples=[(str(tmp_path / "x.png"), "dog")])
    (run_dir / "split.json").write_text(json.dumps({"train": [], "val": []}))
    with pytest.raises(DataError, match="validation fraction"):
        evaluate_run(run_dir)
    (run_dir / "split.json").unlink()
    # still a run (not "an uploaded adapter"): evaluating it says what is missing
    assert find_run_dir(run_dir) == run_dir
    with pytest.raises(DamagedRun, match="split.json is missing"):
        evaluate_run(run_dir)


def test_other_run_classes_refused(run_dir):
    cfg = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps(dict(cfg, classes=["x", "y", "z"])))
    with pytest.raises(DataError, match="not those of run"):
        evaluate_run(run_dir)


def test_confusion_figure(run_dir):
    result = evaluate_run(run_dir)
    fig = confusion_figure(result)
    heat = fig.data[0]
    assert heat.type == "heatmap" and list(fig.layout.xaxis.ticktext) == CLASSES == list(fig.layout.yaxis.ticktext)
    assert [list(r) for r in heat.z] == result.confusion
    norm = confusion_figure(result, normalize=True).data[0]
    assert all(abs(sum(r) - 1) < 1e-9 for r in norm.z)
    assert f"{result.accuracy:.1%}" in fig.layout.title.text


def test_long_and_marked_up_class_names_stay_readable_on_the_charts():
    """Long names (95 characters) squeezed the confusion matrix into a strip and '<b>' in a name
    turned bold: the axes show cut, escaped names at fixed positions; the hover shows them whole."""
    from types import SimpleNamespace

    from lora_gui.ui.charts import class_distribution_figure
    names = [f"A very very long class name that goes on and on describing the category number {i}"
             for i in range(3)] + ["c00_<b>bold<", "& ampersand"]
    k = len(names)
    result = SimpleNamespace(classes=names, confusion=[[int(i == j) for j in range(k)] for i in range(k)],
                             accuracy=1.0, total=k)
    fig = confusion_figure(result)
    ticks = list(fig.layout.xaxis.ticktext)
    assert ticks[:3] == ["A very very long …"] * 3 and len(set(fig.layout.xaxis.tickvals)) == k   # three columns
    assert ticks[3:] == ["c00_&lt;b&gt;bold&lt;", "&amp; ampersand"] and list(fig.layout.yaxis.ticktext) == ticks
    assert fig.data[0].customdata[0][0][1] == names[0]   # the hover names the whole class
    bars = class_distribution_figure(dict(zip(names, range(1, k + 1))))
    assert list(bars.layout.xaxis.ticktext) == ticks and list(bars.data[0].customdata)[3] == "c00_&lt;b&gt;bold&lt;"


def test_evaluate_says_why_training_scored_the_same_images_differently(tmp_path):
    """Training scores validation in bf16 (fast), Evaluate in full precision: a borderline image
    can flip (78.6% vs 85.7% on 14 images in the QA pass). The summary says so, once the run is over."""
    from lora_gui.config import RunConfig
    from lora_gui.store.records import RunRecord
    from lora_gui.store.run_folder import RunFolder
    from lora_gui.ui.tabs.test_tab import _precision_note

    def trained_with(precision):
        RunRecord(RunConfig(), ["a", "b"], [], {}, speed={"mixed_precision": precision}).write(run)
    run = RunFolder(tmp_path / "run").create()
    trained_with("bf16")
    run.update_status(status="finished", best_val_acc=11 / 14)
    note = _precision_note(run.path, 12 / 14)
    assert "Training scored these images 78.6% with bf16 arithmetic" in note and "full precision" in note
    assert _precision_note(run.path, 11 / 14) == ""                      # the same score: nothing to explain
    run.update_status(status="running")
    assert _precision_note(run.path, 12 / 14) == ""                      # still training: its best may move
    run.update_status(status="finished")
    trained_with("off")
    assert _precision_note(run.path, 12 / 14) == ""                      # fp32 training: no such cause
