"""Several processes, one run: ``torchrun --nproc_per_node=2 -m lora_gui train`` on CPU (gloo).

Real torchrun subprocesses (``sys.executable -m torch.distributed.run --standalone``, a free port
each time), real image folders, a real timm model (resnet18, random weights): the adapter of a
2-process run with per-rank batch B equals a 1-process run with batch 2B; only rank 0 writes
(checked with an audit hook in the other rank); killing a rank ends the job within seconds with
the last checkpoint intact; the killed run resumes in 1 process (continuing its metrics) and in
2 processes (then it equals the uninterrupted run exactly).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from conftest import torchrun_rank
from PIL import Image

from lora_gui.config import RunConfig
from lora_gui.jobs import torchrun_launch
from lora_gui.jobs.device_queue import DeviceQueue
from lora_gui.jobs.training_job import TrainingJob
from lora_gui.store.adapter_file import read_adapter
from lora_gui.store.run_folder import RunFolder
from lora_gui.training import distributed, schedule

warnings.filterwarnings("ignore", message=".*random weights.*")

ROOT = Path(__file__).resolve().parents[1]
COLOURS = [(220, 40, 40), (40, 190, 60), (50, 60, 220)]
# 3 classes x 25 images, val 0.25 -> 57 train / 18 val. Per-rank batch 2 x 2 ranks = global 4:
# 57 = 14 x 4 + 1, so the last global batch has one sample and rank 1 runs a padding sample there.
SMALL = ["--model", "resnet18", "--weights", "random", "--rank", "4", "--alpha", "8", "--lr", "0.003",
         "--val-fraction", "0.25", "--threads", "1", "--label-smoothing", "0.1", "--grad-clip", "1.0"]


def write_colour_folder(root: Path, per_class: int, side: int) -> Path:
    for c in range(len(COLOURS)):
        for i in range(per_class):
            rng = np.random.default_rng(1000 * c + i)
            pixels = np.clip(np.array(COLOURS[c])[None, None, :] + rng.integers(-60, 60, (side, side, 3)),
                             0, 255).astype(np.uint8)
            path = root / f"class_{c}" / f"{i:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_colour_folder(tmp_path_factory.mktemp("ddp") / "data", per_class=25, side=72)


def env(**extra) -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e.update(HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(k, None)
    e.update(extra)
    return e


def torchrun(nproc: int, *args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "lora_gui", "train", *map(str, args)]


def run(cmd, timeout=150, **env_extra) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env(**env_extra), cwd=str(ROOT))


def final_json(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{"):])


def key_metrics(rows) -> list[tuple]:
    keys = ("kind", "epoch", "step", "loss", "lr", "train_loss", "train_acc", "val_loss", "val_acc")
    return [tuple(r.get(k) for k in keys) for r in rows]


# an audit hook in every rank but 0: it records any write-mode open, rename, removal or mkdir
# under the run folder (safetensors writes from Rust, unaudited: the adapter files are checked by listing)
SITECUSTOMIZE = r'''
import os, sys, threading
_run, _log = os.environ.get("AUDIT_RUN_DIR"), os.environ.get("AUDIT_LOG")
if _run and _log and os.environ.get("RANK", "0") != "0":
    _run = os.path.realpath(_run)
    _busy = threading.local()
    def _note(line):
        _busy.on = True
        try:
            with open(f"{_log}.rank{os.environ['RANK']}", "a") as f:
                f.write(line + "\n")
        finally:
            _busy.on = False
    def _inside(p):
        try:
            return isinstance(p, (str, bytes, os.PathLike)) and os.path.realpath(os.fsdecode(p)).startswith(_run)
        except Exception:
            return False
    def _hook(event, args):
        if getattr(_busy, "on", False):
            return
        if event == "open":
            path, mode, flags = (list(args) + [None, None])[:3]
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND))
            if writes and _inside(path):
                _note(f"open {path} {mode} {flags}")
        elif event in ("os.rename", "os.replace", "os.remove", "os.unlink", "os.mkdir", "os.rmdir",
                       "os.truncate", "os.symlink", "os.link", "os.chmod", "os.utime", "shutil.rmtree",
                       "shutil.copyfile", "shutil.move"):
            if any(_inside(a) for a in args):
                _note(f"{event} {args}")
    _note("installed")
    sys.addaudithook(_hook)
'''


# --------------------------------------------------------------------------- #
# The pieces, in-process
# --------------------------------------------------------------------------- #

def test_outside_torchrun_it_is_a_world_of_one(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    ctx = distributed.init_from_env("cpu")
    assert (ctx.rank, ctx.world, ctx.enabled, ctx.is_main) == (0, 1, False, True)
    assert distributed.all_reduce_sum([1.0, 2.0]) == [1.0, 2.0]
    assert distributed.local_device("cuda") == "cuda"


@pytest.mark.parametrize("n,world,bs", [(57, 2, 2), (18, 2, 4), (5, 4, 2), (1, 3, 1), (40, 3, 4), (7, 1, 3)])
def test_shard_gives_every_rank_the_same_steps_and_each_global_batch_exactly(n, world, bs):
    order = list(np.random.default_rng(n).permutation(n))
    plans = [distributed.shard(order, r, world, bs) for r in range(world)]
    steps = math.ceil(n / (world * bs))
    assert all(len(p) == steps for p in plans)
    for k in range(steps):
        glob = order[k * world * bs:(k + 1) * world * bs]
        real = [p[k][0][:p[k][1]] if p[k][1] else [] for p in plans]
        assert sum(real, []) == glob  # the ranks' real samples, in rank order, are the global batch
        assert all(p[k][2] == len(glob) for p in plans)
        assert all(len(p[k][0]) >= 1 and len(p[k][0]) <= bs for p in plans)  # never empty, never over
    assert distributed.epoch_batches(n, 0, world, bs) == steps


def test_a_world_size_change_maps_the_schedule_onto_the_new_steps():
    # 2 ranks: 30 steps in all; after 10, 1 rank takes 45 more: the rate is continuous and ends at 0
    from lora_gui.training.schedule import cosine_with_warmup
    base = cosine_with_warmup(30, 3)
    knots = [[10, schedule.virtual_step(10, []), (30 - 10) / 45]]
    f = schedule.scheduled(base, knots)
    assert f(10) == pytest.approx(base(10)) and f(55) == pytest.approx(base(30))
    values = [f(s) for s in range(10, 56)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # still decaying, no jump
    assert max(abs(a - b) for a, b in zip(values, values[1:])) < 0.05
    # and position arithmetic: 57 samples, 20 done, 1 rank x batch 2, accum 2 -> ceil(19/2) = 10 this epoch
    assert distributed.remaining_steps(57, 1, 20, 3, 1, 2, 2) == 10 + 15


def test_other_ranks_get_a_folder_that_writes_nothing(tmp_path):
    folder = distributed.MutedRunFolder(tmp_path / "run").create()
    folder.log("x")
    folder.append_metrics([{"kind": "step", "step": 1, "time": 1.0}])
    folder.update_status(status="running")
    folder.save_checkpoint({"step": 1})
    folder.truncate_metrics(0, 0)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- #
# 2 processes = 1 process with twice the batch
# --------------------------------------------------------------------------- #

def test_two_processes_match_one_process_with_twice_the_batch_and_only_rank_0_writes(data_dir, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    out, audit = tmp_path / "runs" / "ddp", tmp_path / "audit"
    cfg = RunConfig.from_dict({
        "model": {"name": "resnet18", "weights": "random", "image_size": 32},
        "lora": {"rank": 4, "alpha": 8.0},
        "data": {"source": str(data_dir), "val_fraction": 0.25, "augmentation": "none"},
        # fp32: the comparison is of the maths, not of bf16 rounding (which depends on batch shapes)
        "train": {"epochs": 2, "batch_size": 2, "grad_accum": 2, "lr": 3e-3, "label_smoothing": 0.1,
                  "grad_clip": 1.0, "num_threads": 1, "seed": 3, "mixed_precision": "off",
                  # the linear probe does not run under torchrun (each rank caches only its share of the
                  # images: training/probe.py); the one-process run must skip it too to be the same run
                  "linear_probe": "off"}})
    t0 = time.time()
    # the engine's launcher: torchrun --standalone --nproc_per_node=2 -m lora_gui train --config-json ... --out
    proc = torchrun_launch.launch_torchrun(cfg, out, 2, env=env(PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]),
                                                            AUDIT_RUN_DIR=str(out), AUDIT_LOG=str(audit)))
    try:
        assert proc.wait(150) == 0, (out / "torchrun.log").read_text()[-4000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    print(f"\n2-process run: {time.time() - t0:.1f}s")
    run_ = RunFolder(out)
    assert run_.read_status()["status"] == "finished"
    saved = json.loads(run_.config_file.read_text())
    assert RunConfig.from_dict(saved["config"]) == cfg
    assert saved["distributed"] == {"world_size": 2, "backend": "gloo", "global_batch": 4}

    cfg.train.batch_size = 4  # one process, twice the batch (and the prefix cache, which must not matter)
    single = TrainingJob(cfg, workspace=str(tmp_path / "runs"), run_dir=str(tmp_path / "runs" / "single"),
                         queue=DeviceQueue()).start()
    assert single.wait(120) and single.status == "finished", single.message
    # 57 images in (global) batches of 4 -> 15 micro-batches, 8 optimizer steps (accum 2) per epoch
    assert single.snapshot().total_steps == 16

    a, _ = read_adapter(out / "last")
    b, _ = read_adapter(single.run.path / "last")
    assert set(a) == set(b)
    diff, worst = max(((a[k] - b[k]).abs().max().item(), k) for k in a)
    print(f"largest adapter difference, 2 x batch 2 vs 1 x batch 4: {diff:.2e} ({worst})")

    assert diff < 1e-5
    assert any(a[k].abs().max() > 1e-3 for k in a if "lora_B" in k)  # it did learn something
    ddp_rows, one_rows = RunFolder(out).read_metrics(), single.run.read_metrics()
    assert [(r["kind"], r["epoch"], r["step"]) for r in ddp_rows] == [(r["kind"], r["epoch"], r["step"])
                                                                      for r in one_rows]
    for x, y in zip(ddp_rows, one_rows):  # losses, accuracies (reduced over ranks), rates
        for k in ("loss", "lr", "train_loss", "train_acc", "val_loss", "val_acc"):
            assert (x[k] is None) == (y[k] is None) and (x[k] is None or abs(x[k] - y[k]) < 1e-5), (k, x, y)

    # only rank 0 wrote: rank 1's audit hook ran and saw no write, and nothing is there twice
    lines = (tmp_path / "audit.rank1").read_text().splitlines()
    assert lines == ["installed"], lines
    assert sorted(p.name for p in out.iterdir()) == [".lock", "best", "checkpoint.pt", "config.json", "last", "metrics.csv",
                                                   "split.json", "status.json", "torchrun.log", "train.log"]
    steps = [x["step"] for x in ddp_rows if x["kind"] == "step"]
    assert steps == list(range(1, 17))
    log = (out / "train.log").read_text()
    assert log.count("[finished]") == 1 and log.count("preparing data and model") == 1


# --------------------------------------------------------------------------- #
# A rank dies: the job ends, the checkpoint survives, the run resumes
# --------------------------------------------------------------------------- #

KILL_ARGS = [*SMALL, "--image-size", "72", "--epochs", "3", "--batch-size", "2", "--grad-accum", "1",
             "--augmentation", "light", "--seed", "11", "--checkpoint-minutes", "0.01"]
STEPS_PER_EPOCH = 15  # 57 images in global batches of 4


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp-full") / "full"
    r = run(torchrun(2, *KILL_ARGS, "--data", data_dir, "--out", out, "--json"))
    assert r.returncode == 0, r.stderr[-4000:]
    return out


def test_killing_a_rank_ends_the_job_then_the_run_resumes_in_1_or_2_processes(data_dir, tmp_path, uninterrupted):
    out = tmp_path / "runs" / "killed"
    proc = subprocess.Popen(torchrun(2, *KILL_ARGS, "--data", data_dir, "--out", out), env=env(), cwd=str(ROOT),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run_ = RunFolder(out)
    ckpt_step, seen = None, None
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if run_.checkpoint_file.is_file() and run_.checkpoint_file.stat().st_mtime_ns != seen:
                seen = run_.checkpoint_file.stat().st_mtime_ns
                try:
                    ckpt_step = torch.load(run_.checkpoint_file, weights_only=True)["step"]
                except Exception:
                    seen = None  # replaced while being read
            done = len([r for r in run_.read_metrics() if r["kind"] == "step"])
            if ckpt_step is not None and STEPS_PER_EPOCH < ckpt_step < done and ckpt_step % STEPS_PER_EPOCH:
                break  # a checkpoint inside epoch 2 or 3, and a step row after it
            if done >= 3 * STEPS_PER_EPOCH - 4 and ckpt_step:
                break  # a very fast machine: take what there is
            time.sleep(0.01)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-3000:]}"
        victim = torchrun_rank(proc.pid, "1")
        assert victim is not None
        killed_at = time.time()
        victim.send_signal(signal.SIGKILL)
        proc.wait(90)  # torchrun notices, stops rank 0, and exits: bounded, never a hang
        ended_after = time.time() - killed_at
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait()
        proc.stderr.close()
    print(f"\ntorchrun exited {proc.returncode} {ended_after:.1f}s after rank 1 was killed")
    assert proc.returncode != 0 and ended_after < 60
    assert "SIGKILL" in stderr or "Signal 9" in stderr  # torchrun's summary names the rank that died
    status = run_.read_status()
    assert status["status"] == "failed" and "--resume" in status["message"], status
    state = torch.load(run_.checkpoint_file, weights_only=True)  # the last checkpoint still loads
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    rows_before = [r["step"] for r in run_.read_metrics() if r["kind"] == "step"]
    print(f"killed after step {rows_before[-1]}, checkpoint at step {state['step']} "
          f"({state['samples_in_epoch']} samples into epoch {state['epoch'] + 1})")
    assert STEPS_PER_EPOCH <= state["step"] <= rows_before[-1]

    same = tmp_path / "runs" / "same-world"
    shutil.copytree(out, same)

    # 1 process: a world-size change; the epoch goes on from the same sample, metrics continue
    r = run([sys.executable, "-m", "lora_gui", "train", "--resume", out, "--json"])
    assert r.returncode == 0, r.stderr[-3000:]
    result = final_json(r.stdout)
    assert result["status"] == "finished" and result["steps"] == result["total_steps"]
    rows = run_.read_metrics()
    steps = [x["step"] for x in rows if x["kind"] == "step"]
    assert steps == list(range(1, result["total_steps"] + 1))  # continuous, nothing twice, nothing lost
    assert [x["epoch"] for x in rows if x["kind"] == "epoch"] == [1, 2, 3]
    left_at_1 = distributed.remaining_steps(57, state["epoch"], state["samples_in_epoch"], 3, 1, 2, 1)
    assert result["total_steps"] == state["step"] + left_at_1
    lrs = [x["lr"] for x in rows if x["kind"] == "step"]
    assert all(a >= b - 1e-12 for a, b in zip(lrs[state["step"] - 1:], lrs[state["step"]:]))  # no jump up
    assert "resumed with 1 process(es) instead of 2" in run_.log_file.read_text()
    assert run_.read_status()["status"] == "finished"

    # 2 processes again: the same world size resumes exactly, = the uninterrupted run
    r = run(torchrun(2, "--resume", same, "--json"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert final_json(r.stdout)["steps"] == 3 * STEPS_PER_EPOCH
    assert key_metrics(RunFolder(same).read_metrics()) == key_metrics(RunFolder(uninterrupted).read_metrics())
    a, _ = read_adapter(same / "last")
    b, _ = read_adapter(uninterrupted / "last")
    assert all(torch.equal(a[k], b[k]) for k in a)
