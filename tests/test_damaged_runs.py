"""Damaged run folders (#13.10, #13.11) and the typed run records (#11): a run whose files are
wrong-shaped, cut off or not text is listed as damaged with the reason, every other run keeps
working, a resume of it is refused at once (exit 2) and never leaves the run locked."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lora_gui.errors import DamagedRun, UserError
from lora_gui.inference.evaluate import evaluate_run
from lora_gui.jobs.device_queue import DeviceQueue
from lora_gui.jobs.training_job import TrainingJob
from lora_gui.store.records import RunRecord, SplitRecord
from lora_gui.store.run_folder import RunFolder, list_runs

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    from conftest import write_colour_folder
    from test_train import make_config, run_job
    tmp = tmp_path_factory.mktemp("damaged")
    data = write_colour_folder(tmp / "data", per_class=4, side=32)
    job = run_job(make_config(data, epochs=1), tmp, "good")
    assert job.status == "finished", job.message
    return job.run.path


def _damage(run: Path, name: str) -> Path:
    """A copy of the good run next to it, damaged one way."""
    bad = run.parent / name
    shutil.rmtree(bad, ignore_errors=True)
    shutil.copytree(run, bad)
    cfg = bad / "config.json"
    if name == "config-5":
        cfg.write_text('{"config": 5}')
    elif name == "config-list":
        cfg.write_text("[1, 2]")
    elif name == "config-cut":
        cfg.write_bytes((run / "config.json").read_bytes()[:200])
    elif name == "metrics-binary":
        with open(bad / "metrics.csv", "ab") as f:
            f.write(b"step,1,\xff\xfe\x00junk\n")
    elif name == "no-split":
        (bad / "split.json").unlink()
    elif name == "status-list":
        (bad / "status.json").write_text("[1, 2]")
    elif name == "classes-number":
        raw = json.loads(cfg.read_text())
        cfg.write_text(json.dumps(dict(raw, classes=5)))
    return bad


DAMAGES = {"config-5": "'config' (the training settings) is a number, not an object", "config-list": "holds a list",
           "config-cut": "not valid JSON", "metrics-binary": "metrics.csv is damaged (not text",
           "no-split": "split.json is missing", "classes-number": "'classes' must be a list"}


def test_records_round_trip_and_refuse_wrong_shapes(good_run):
    rec, split = RunRecord.read(good_run), SplitRecord.read(good_run)
    assert rec.classes == ["class_0", "class_1", "class_2"] and rec.layers and rec.config.model.name == "resnet18"
    assert len(split.train) + len(split.val) == 12 and all(isinstance(p, str) for p, _ in split.train)
    copy = good_run.parent / "copy"
    copy.mkdir(exist_ok=True)
    rec.write(copy)
    split.write(copy)
    assert RunRecord.read(copy) == rec and SplitRecord.read(copy) == split
    for name in ("config-5", "config-list", "config-cut", "classes-number"):
        with pytest.raises(DamagedRun, match="config.json") as info:
            RunRecord.read(_damage(good_run, name))
        assert isinstance(info.value, UserError) and DAMAGES[name] in str(info.value)


def test_damaged_runs_are_listed_with_the_reason_and_the_others_keep_working(good_run):
    for name in DAMAGES:
        _damage(good_run, name)
    _damage(good_run, "status-list")
    rows = {r["run"]: r for r in list_runs(good_run.parent)}
    assert rows["good"]["status"] == "finished" and rows["good"]["damaged"] == ""
    assert rows["status-list"]["status"] == "unknown"  # a damaged status file only loses the status
    for name, reason in DAMAGES.items():
        assert rows[name]["status"] == "damaged" and reason in rows[name]["damaged"], rows[name]
    # a chart still draws the readable rows of the damaged metrics.csv
    assert RunFolder(good_run.parent / "metrics-binary").read_metrics() == RunFolder(good_run).read_metrics()
    out = subprocess.run([sys.executable, "-m", "lora_gui", "runs", "--workspace", str(good_run.parent)],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr and "damaged: " in out.stdout and "good" in out.stdout
    assert "holds a list instead of the run's settings" in out.stdout


@pytest.mark.parametrize("name", ["config-5", "config-list", "config-cut", "metrics-binary", "no-split",
                                  "status-list"])
def test_resume_of_a_damaged_run_exits_2_at_once_and_releases_the_run(good_run, name):
    bad = _damage(good_run, name)
    out = subprocess.run([sys.executable, "-m", "lora_gui", "train", "--resume", str(bad)], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=90)
    if name == "status-list":  # only the status was lost: the run resumes (and finishes)
        assert out.returncode == 0, out.stderr
    else:
        assert out.returncode == 2, (out.returncode, out.stderr)
        assert DAMAGES[name] in out.stderr and "Traceback" not in out.stderr
    assert not RunFolder(bad).in_use()


def test_a_failure_while_cleaning_up_still_ends_the_job_and_unlocks(good_run, tmp_path):
    # a run whose status.json becomes a directory: every status write fails with an OSError
    bad = _damage(good_run, "status-dir")
    (bad / "status.json").unlink()
    (bad / "status.json").mkdir()
    job = TrainingJob.resume_run(str(bad), queue=DeviceQueue()).start()
    assert job.wait(120)
    assert job.status in ("finished", "failed") and not RunFolder(bad).in_use()


def test_evaluate_on_a_run_without_split_says_so(good_run):
    bad = _damage(good_run, "no-split")
    with pytest.raises(DamagedRun, match="split.json is missing"):
        evaluate_run(bad)


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "foreign pickle"])
def test_a_damaged_checkpoint_says_what_to_do_never_torch_internals(good_run, damage):
    bad = _damage(good_run, f"ckpt-{damage.replace(' ', '-')}")
    ckpt = bad / "checkpoint.pt"
    data = ckpt.read_bytes()
    # "foreign pickle": random bytes that happen to start like a pickle of protocol 31 made torch print
    # a "weights_only Unpickler" warning (seen once in CI with plain random bytes)
    ckpt.write_bytes(data[: len(data) // 2] if damage == "truncated" else
                     (b"\x80\x1f" if damage == "foreign pickle" else b"") + os.urandom(len(data)))
    with pytest.raises(DamagedRun, match="Delete it to train the run again from the beginning"):
        RunFolder(bad).load_checkpoint()
    out = subprocess.run([sys.executable, "-m", "lora_gui", "train", "--resume", str(bad)], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=90)
    assert out.returncode == 2, out.stderr
    assert "checkpoint.pt is damaged: " + ("cut off" if damage == "truncated" else "not a checkpoint") in out.stderr
    for raw in ("miniz", "weights_only", "Traceback", "Unpickl"):
        assert raw not in out.stderr, out.stderr
    assert not RunFolder(bad).in_use()


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs: a real full disk (needs root; skipped where mounting is not allowed)."""
    mount = tmp_path / "full"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_says_so_and_leaves_no_partial_files(small_disk, tmp_path):
    from conftest import write_colour_folder
    data = write_colour_folder(tmp_path / "data", per_class=4, side=32)
    run = small_disk / "run"
    out = subprocess.run([sys.executable, "-m", "lora_gui", "train", "--data", str(data), "--model", "resnet18",
                          "--weights", "random", "--image-size", "32", "--epochs", "1", "--out", str(run)],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr
    assert "error: the disk is full (writing checkpoint.pt): free some space, then resume the run" in out.stderr
    assert "inline_container" not in out.stderr and "Traceback" not in out.stderr
    left = [p.name for p in run.rglob("*") if p.name.endswith((".tmp", ".partial")) or ".partial-" in p.name]
    assert left == []
    assert RunFolder(run).read_status()["status"] == "failed" and not RunFolder(run).in_use()


@pytest.mark.parametrize("bad", ["data", "model"])
def test_a_start_refused_for_its_input_leaves_no_run_folder(tmp_path, bad):
    from conftest import write_colour_folder
    from test_train import make_config
    cfg = make_config(write_colour_folder(tmp_path / "data", per_class=3, side=32), epochs=1)
    if bad == "data":
        cfg.data.source = str(tmp_path / "no-such-folder")
    else:
        cfg.model.name = "resnet_eighteen"
    job = TrainingJob(cfg, workspace=str(tmp_path / "ws"), queue=DeviceQueue()).start()
    assert job.wait(120) and job.status == "failed" and job.failure_kind == "input", job.message
    assert ("does not exist" if bad == "data" else "resnet_eighteen") in job.message
    assert not job.run.path.exists() and list((tmp_path / "ws").iterdir()) == []
