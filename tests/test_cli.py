"""``python -m lora_gui``: the headless CLI over the training engine.

Real subprocesses (``sys.executable -m lora_gui``) where the process boundary
matters (help, exit codes, the summary table, JSON on stdout, a real SIGKILL);
``cli.main`` in-process for the bad-input checks, which never get to training.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from conftest import write_colour_folder

from lora_gui import cli
from lora_gui.cli.train_command import build_config
from lora_gui.config import RunConfig, load_preset
from lora_gui.errors import ConfigError
from lora_gui.jobs.device_queue import DeviceQueue
from lora_gui.jobs.training_job import TrainingJob
from lora_gui.store.run_folder import RunFolder

warnings.filterwarnings("ignore", message=".*random weights.*")

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "presets").glob("*.json"))
# a small real model, one thread (so runs are reproducible and the box stays usable)
SMALL = ["--model", "resnet18", "--weights", "random", "--image-size", "32", "--rank", "4", "--alpha", "8",
         "--batch-size", "4", "--lr", "0.003", "--val-fraction", "0.25", "--seed", "5", "--threads", "1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_colour_folder(tmp_path_factory.mktemp("cli") / "data")


def env(**extra) -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e["HF_HUB_OFFLINE"] = "1"
    e["PYTHONWARNINGS"] = "ignore"
    e.update(extra)
    return e


def run_cli(*args, timeout=180, **env_extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lora_gui", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env(**env_extra), cwd=str(ROOT))


def strict_json(text: str):
    def no_nan(name):
        raise ValueError(f"{name} is not valid JSON")
    return json.loads(text, parse_constant=no_nan)


def key_metrics(rows) -> list[tuple]:
    keys = ("kind", "epoch", "step", "loss", "lr", "train_loss", "train_acc", "val_loss", "val_acc")
    return [tuple(r.get(k) for k in keys) for r in rows]


# --------------------------------------------------------------------------- #
# Help
# --------------------------------------------------------------------------- #

def _train_flags() -> list[str]:
    sub = next(a for a in cli.parser()._actions if a.dest == "command")
    return [o for a in sub.choices["train"]._actions for o in a.option_strings if o.startswith("--")]


def test_help_documents_every_command_and_flag(capsys):
    flags = _train_flags()
    for required in ("--data", "--model", "--weights", "--targets", "--rank", "--alpha", "--epochs",
                     "--batch-size", "--lr", "--out", "--resume", "--preset", "--json", "--checkpoint-minutes"):
        assert required in flags
    top = run_cli("--help")
    assert top.returncode == 0, top.stderr
    sub = next(a for a in cli.parser()._actions if a.dest == "command")
    for name, command in sub.choices.items():
        assert name in top.stdout
        for action in command._actions:
            for option in action.option_strings:
                assert option in top.stdout, f"{name} {option} missing from the top-level --help"
    assert "Exit codes" in top.stdout
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--help"])
    assert exit_.value.code == 0
    train_help = capsys.readouterr().out
    for flag in flags:
        assert flag in train_help


# --------------------------------------------------------------------------- #
# Training from the command line
# --------------------------------------------------------------------------- #

def test_train_prints_a_summary_table_and_exits_0(data_dir, tmp_path, capsys):
    out = tmp_path / "runs" / "table"
    r = run_cli("train", "--data", data_dir, *SMALL, "--epochs", "2", "--out", out)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["epoch", "train", "loss", "train", "acc", "val", "loss", "val", "acc"]
    assert [ln.split()[0] for ln in lines[2:4]] == ["1", "2"]
    assert lines[4].startswith("finished: best validation accuracy")
    assert lines[5] == f"run folder: {out}"
    assert "24 images used in 3 classes" in r.stderr      # the dataset report
    assert "epoch 2/2" in r.stderr and "step 10/10" in r.stderr  # progress
    run = RunFolder(out)
    assert run.read_status()["status"] == "finished"
    assert [x["step"] for x in run.read_metrics() if x["kind"] == "step"] == list(range(1, 11))
    # the run is listed
    assert cli.main(["runs", "--workspace", str(out.parent), "--json"]) == 0
    listing = strict_json(capsys.readouterr().out)
    assert [(x["run"], x["status"], x["model"]) for x in listing] == [("table", "finished", "resnet18")]


def test_train_json_prints_the_final_metrics(data_dir, tmp_path):
    out = tmp_path / "runs" / "json"
    r = run_cli("train", "--data", data_dir, *SMALL, "--epochs", "1", "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    result = strict_json(r.stdout)
    assert result["status"] == "finished" and result["run_dir"] == str(out)
    assert result["steps"] == result["total_steps"] == 5
    final = result["final"]
    assert final["epoch"] == 1 and set(final) >= {"train_loss", "train_acc", "val_loss", "val_acc"}
    assert 0 <= final["val_acc"] <= 1 and result["best_val_acc"] == final["val_acc"]
    metrics = RunFolder(out).read_metrics()
    assert final["val_loss"] == metrics[-1]["val_loss"]
    assert "epoch 1/1" not in r.stdout  # progress stays off stdout


def test_training_failure_exits_1(data_dir, tmp_path):
    r = run_cli("train", "--data", data_dir, *SMALL, "--lr", "10", "--grad-clip", "0", "--label-smoothing", "0",
                "--warmup-fraction", "0", "--augmentation", "none", "--epochs", "3", "--out", tmp_path / "nan")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "failed: the loss became" in r.stdout
    assert "lower the learning rate" in r.stderr.lower()


def test_hub_weights_offline_exit_2(data_dir, tmp_path):
    # an empty hub cache and no network: resnet18's pretrained weights cannot be had
    r = run_cli("train", "--data", data_dir, "--model", "resnet18", "--weights", "hub", "--out", tmp_path / "r",
                HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf" / "hub"))
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: pretrained weights for resnet18 are not in the local cache")
    assert not (tmp_path / "r" / "config.json").exists()


@pytest.mark.parametrize("case", ["missing folder", "one class", "unknown model", "no data", "bad value",
                                  "existing run", "resume nothing", "resume damaged", "missing preset"])
def test_bad_input_exits_2_with_a_clear_message(case, data_dir, tmp_path, capsys):
    one = write_colour_folder(tmp_path / "one", classes=1)
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "config.json").write_text("{}")
    argv, expected = {
        "missing folder": (["--data", tmp_path / "nope", *SMALL], "does not exist"),
        "one class": (["--data", one, *SMALL], "only 1 class"),
        "unknown model": (["--data", data_dir, "--model", "resnet_eighteen"], "timm has no model named 'resnet_eighteen'"),
        "no data": ([*SMALL], "--data is required"),
        "bad value": (["--data", data_dir, *SMALL, "--epochs", "0"], "epochs must be a whole number"),
        "existing run": (["--data", data_dir, *SMALL, "--out", existing], "already holds a run; continue it with --resume"),
        "resume nothing": (["--resume", tmp_path / "nothing"], "is not a run folder"),
        "resume damaged": (["--resume", existing], "config.json is damaged: its 'config' (the training settings) is missing"),
        "missing preset": (["--data", data_dir, "--preset", tmp_path / "nope.json"], "does not exist"),
    }[case]
    argv = ["train", *map(str, argv)]
    if case != "existing run" and "--out" not in argv and "--resume" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err, err
    assert not (tmp_path / "out" / "config.json").exists()


# --------------------------------------------------------------------------- #
# Presets
# --------------------------------------------------------------------------- #

def test_the_three_presets_exist():
    assert {p.name for p in PRESETS} >= {"quick-cpu-demo.json", "balanced-vit.json", "cnn-resnet.json"}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_every_preset_loads_and_its_targets_exist(path):
    from lora_gui.backbones.build import build_model
    from lora_gui.config import ModelConfig
    from lora_gui.lora.targets import resolve_targets
    raw = json.loads(path.read_text())
    assert set(raw) == {"name", "description", "config"} and set(raw["config"]) == {"model", "lora", "data", "train"}
    cfg, meta = load_preset(path)
    assert meta["name"] and len(meta["description"]) > 40
    assert isinstance(cfg, RunConfig) and cfg.data.source == ""  # a preset never names someone's data
    for section, values in raw["config"].items():  # every value written in the file is taken
        assert {k: getattr(getattr(cfg, section), k) for k in values} == values
    model = build_model(ModelConfig(name=cfg.model.name, weights="random"), 3)
    layers, _ = resolve_targets(model, cfg.lora.targets)
    assert layers, f"{path.name}: targets {cfg.lora.targets!r} match no layer of {cfg.model.name}"


def test_presets_match_their_descriptions():
    quick, _ = load_preset(ROOT / "presets" / "quick-cpu-demo.json")
    assert (quick.model.name, quick.model.weights, quick.train.epochs) == ("tf_efficientnet_lite0", "bundled", 3)
    assert quick.model.image_size <= 160 and quick.lora.targets == "auto"
    vit, _ = load_preset(ROOT / "presets" / "balanced-vit.json")
    assert (vit.model.name, vit.model.weights, vit.lora.targets, vit.lora.rank) == \
        ("vit_tiny_patch16_224", "hub", "attention+mlp", 8)
    cnn, _ = load_preset(ROOT / "presets" / "cnn-resnet.json")
    assert (cnn.model.name, cnn.model.weights, cnn.lora.targets) == ("resnet18", "hub", "late-blocks")


def test_an_unknown_preset_key_is_an_error_naming_it(tmp_path):
    good = json.loads((ROOT / "presets" / "quick-cpu-demo.json").read_text())
    bad = dict(good, config=dict(good["config"], train=dict(good["config"]["train"], epochz=4)))
    (tmp_path / "typo.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="epochz"):
        load_preset(tmp_path / "typo.json")
    (tmp_path / "top.json").write_text(json.dumps(dict(good, notes="x")))
    with pytest.raises(ConfigError, match="notes"):
        load_preset(tmp_path / "top.json")
    (tmp_path / "section.json").write_text(json.dumps(dict(good, config=dict(good["config"], optimiser={}))))
    with pytest.raises(ConfigError, match="optimiser"):
        load_preset(tmp_path / "section.json")


def test_cli_preset_unknown_key_exits_2(tmp_path, data_dir, capsys):
    (tmp_path / "typo.json").write_text(json.dumps({"name": "t", "config": {"lora": {"rnak": 4}}}))
    assert cli.main(["train", "--data", str(data_dir), "--preset", str(tmp_path / "typo.json"),
                     "--out", str(tmp_path / "r")]) == 2
    assert "rnak" in capsys.readouterr().err


def test_example_and_builtin_preset_by_name(tmp_path, monkeypatch, capsys):
    """`--data example --preset quick-cpu-demo` from any folder (an installed package has no presets/ or
    assets/ beside the user); a real file or folder of that name still wins."""
    from lora_gui.data import example_dataset_path
    monkeypatch.chdir(tmp_path)
    cfg = build_config(cli.parser().parse_args(["train", "--data", "example", "--preset", "quick-cpu-demo"]))
    assert cfg.data.source == str(example_dataset_path()) and Path(cfg.data.source).is_dir()
    assert cfg == build_config(cli.parser().parse_args(["train", "--data", "example", "--preset",
                                                        str(ROOT / "presets" / "quick-cpu-demo.json")]))
    (tmp_path / "example").mkdir()
    assert build_config(cli.parser().parse_args(["train", "--data", "example"])).data.source == str(tmp_path / "example")
    assert cli.main(["train", "--data", "example", "--preset", "no-such-preset", "--out", "r"]) == 2
    assert "quick-cpu-demo" in capsys.readouterr().err   # the built-in names are listed


def test_preset_is_applied_and_flags_override_it(data_dir, tmp_path, capsys):
    preset = ROOT / "presets" / "quick-cpu-demo.json"
    base, _ = load_preset(preset)
    args = cli.parser().parse_args(["train", "--preset", str(preset), "--data", str(data_dir), "--rank", "2",
                                    "--epochs", "1", "--image-size", "64", "--lr", "0.01"])
    cfg = build_config(args)
    assert (cfg.lora.rank, cfg.train.epochs, cfg.model.image_size, cfg.train.lr) == (2, 1, 64, 0.01)
    assert cfg.lora.alpha == base.lora.alpha  # not given: the preset's
    assert (cfg.model.name, cfg.model.weights, cfg.lora.targets) == (base.model.name, base.model.weights,
                                                                     base.lora.targets)
    assert (cfg.train.warmup_fraction, cfg.train.batch_size) == (base.train.warmup_fraction, base.train.batch_size)
    # another model than the preset's: its weights come from the hub unless --weights says otherwise
    other = build_config(cli.parser().parse_args(["train", "--preset", str(preset), "--model", "resnet18"]))
    assert (other.model.name, other.model.weights) == ("resnet18", "hub")

    # end to end: a real (short) run from the preset records the merged config
    out = tmp_path / "runs" / "preset"
    code = cli.main(["train", "--preset", str(preset), "--data", str(data_dir), "--epochs", "1",
                     "--image-size", "64", "--batch-size", "8", "--threads", "1", "--out", str(out), "--json"])
    assert code == 0, capsys.readouterr().err
    saved = RunFolder(out).record().config
    assert (saved.model.name, saved.model.weights, saved.model.image_size) == ("tf_efficientnet_lite0", "bundled", 64)
    assert (saved.train.epochs, saved.train.batch_size, saved.train.lr) == (1, 8, base.train.lr)
    assert saved.lora == base.lora
    assert strict_json(capsys.readouterr().out)["status"] == "finished"


# --------------------------------------------------------------------------- #
# A real SIGKILL, then --resume
# --------------------------------------------------------------------------- #

def test_sigkill_then_resume_continues_without_duplicates(tmp_path):
    # 54 training images at 96 px, batch 2: 27 steps per epoch, 54 in all, ~30-150 ms a step;
    # a checkpoint at every epoch and at least every 0.6 s (the smallest interval allowed).
    # The kill waits for a checkpoint inside epoch 2 with a metrics row written after it, so
    # the resume restarts mid-epoch and must drop that row.
    data = write_colour_folder(tmp_path / "data", per_class=24, side=96)
    out = tmp_path / "runs" / "killed"
    argv = ["train", "--data", data, "--model", "resnet18", "--weights", "random", "--image-size", "96",
            "--rank", "4", "--alpha", "8", "--epochs", "2", "--batch-size", "2", "--lr", "0.003",
            "--val-fraction", "0.25", "--seed", "11", "--threads", "1", "--checkpoint-minutes", "0.01",
            "--out", out]
    proc = subprocess.Popen([sys.executable, "-m", "lora_gui", *map(str, argv)], env=env(), cwd=str(ROOT),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = RunFolder(out)
    ckpt_step, seen_mtime = None, None
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            if run.checkpoint_file.is_file() and run.checkpoint_file.stat().st_mtime_ns != seen_mtime:
                seen_mtime = run.checkpoint_file.stat().st_mtime_ns
                try:
                    ckpt_step = torch.load(run.checkpoint_file, weights_only=True)["step"]
                except Exception:
                    seen_mtime = None  # replaced while being read: look again
            done = len([r for r in run.read_metrics() if r["kind"] == "step"])
            if ckpt_step is not None and 27 < ckpt_step < done:
                break  # mid-epoch-2 checkpoint, and a step row past it
            if done >= 48 and ckpt_step:
                break  # a very fast machine: take what there is
            time.sleep(0.01)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    config_before = run.config_file.read_text()
    rows_before = [r["step"] for r in run.read_metrics() if r["kind"] == "step"]
    checkpoint_step = torch.load(run.checkpoint_file, weights_only=True)["step"]
    print(f"\nkilled after step {rows_before[-1]}, last checkpoint at step {checkpoint_step}")
    assert 27 <= checkpoint_step <= rows_before[-1] < 54
    assert run.read_status()["status"] == "running"  # it never got to say anything else

    r = run_cli("train", "--resume", out, "--json")
    assert r.returncode == 0, r.stderr
    result = strict_json(r.stdout)
    assert result["status"] == "finished" and result["steps"] == result["total_steps"] == 54
    assert run.config_file.read_text() == config_before
    rows = run.read_metrics()
    steps = [x["step"] for x in rows if x["kind"] == "step"]
    assert steps == list(range(1, 55))  # continuous, strictly increasing, nothing twice, nothing lost
    assert [x["epoch"] for x in rows if x["kind"] == "epoch"] == [1, 2]
    assert f"resumed at epoch 2, step {checkpoint_step}" in run.log_file.read_text()
    assert [e["epoch"] for e in result["epochs"]] == [1, 2]

    # the killed-and-resumed run is the uninterrupted run, metric for metric
    cfg = RunConfig.from_dict(json.loads(config_before)["config"])
    baseline = TrainingJob(cfg, workspace=str(tmp_path / "runs"), run_dir=str(tmp_path / "runs" / "baseline"),
                           queue=DeviceQueue()).start()
    assert baseline.wait(120) and baseline.status == "finished", baseline.message
    assert key_metrics(rows) == key_metrics(baseline.run.read_metrics())
    from lora_gui.store.adapter_file import read_adapter
    a, _ = read_adapter(out / "last")
    b, _ = read_adapter(baseline.run.path / "last")
    assert all(torch.equal(a[k], b[k]) for k in a)
