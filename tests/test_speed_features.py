"""Issue 15's behaviours: the yield gate (predictions first), the first model (linear probe) saved
before LoRA trains, and a prefix cache too big for memory kept in a file instead."""
from __future__ import annotations

import json
import os
import threading
import time

import pytest
import timm
import torch

from lora_gui import lora
from lora_gui.config import DataConfig, LoraConfig, ModelConfig, RunConfig, TrainConfig
from lora_gui.inference.predict import load_adapter, predict
from lora_gui.store.run_folder import RunFolder
from lora_gui.training import batches
from lora_gui.training.loop import Trainer
from lora_gui.training.reporter import RecordingReporter
from lora_gui.training.yield_gate import YieldGate


def _wait_until(cond, what: str, timeout: float = 30.0) -> None:
    end = time.time() + timeout
    while not cond():
        assert time.time() < end, f"timed out waiting for {what}"
        time.sleep(0.01)


def _lora_model():
    torch.manual_seed(0)
    m = timm.create_model("resnet18", pretrained=False, num_classes=3)
    lora.inject_lora(m, LoraConfig(targets="late-blocks"))
    return m


# the yield gate ----------------------------------------------------------------
def test_training_waits_at_its_next_block_while_a_prediction_runs():
    gate = YieldGate(max_wait_s=60)
    model = _lora_model()
    gate.install(model)
    done = threading.Event()

    def train_step():
        model(torch.randn(2, 3, 32, 32)).sum().backward()
        done.set()

    gate.enter()   # a prediction is running
    worker = threading.Thread(target=train_step)
    worker.start()
    _wait_until(lambda: gate.trainers_waiting == 1, "the training to wait at a yield point")
    assert not done.is_set()
    gate.leave()   # the prediction is over: the training goes on
    worker.join(60)
    assert done.is_set() and gate.yields >= 1 and not gate.busy


def test_without_a_prediction_the_training_never_waits():
    gate = YieldGate()
    model = _lora_model()
    handles = gate.install(model)
    assert len(handles) > len(list(p for p in model.parameters() if p.requires_grad))  # blocks + tensors
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert gate.yields == 0


def test_a_watched_model_holds_the_gate_during_its_forward_even_when_it_fails():
    gate = YieldGate()
    model = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    seen = []
    model.fc.register_forward_pre_hook(lambda m, a: seen.append(gate.busy))
    assert gate.watch(model) is gate.watch(model)   # watched once, however often it is asked
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert seen == [True] and not gate.busy
    with pytest.raises(RuntimeError):
        model(torch.randn(1, 5, 32, 32))   # wrong channel count: the forward raises
    assert not gate.busy


# the first model ------------------------------------------------------------------
class _StopAtFirstStep(RecordingReporter):
    """Stops the run once training proper starts: what set-up left behind can be inspected."""

    def check_controls(self) -> None:
        from lora_gui.errors import StopRequested
        if any(msg.startswith("training on") for _, msg in self.statuses):
            raise StopRequested


def _config(root) -> RunConfig:
    return RunConfig(model=ModelConfig(name="resnet18", weights="random", image_size=32),
                     data=DataConfig(source=str(root), val_fraction=0.25),
                     train=TrainConfig(epochs=2, batch_size=4))


def _folder(make_image_folder):
    return make_image_folder({f"{c}/{i}.png": (32, 32) for c in "abc" for i in range(8)}, "set")


def test_a_first_model_is_saved_before_lora_trains_and_lora_starts_from_its_head(tmp_path, make_image_folder):
    from lora_gui.errors import StopRequested
    root = _folder(make_image_folder)
    run = RunFolder(tmp_path / "run").create()
    trainer = Trainer(_config(root), run, "cpu", _StopAtFirstStep(), interactive=True)
    with pytest.raises(StopRequested):
        trainer.run()
    meta = json.loads((run.path / "best" / "adapter.json").read_text())
    assert meta["metrics"]["stage"] == "linear probe" and meta["metrics"]["epoch"] == 0
    assert run.read_status()["best_epoch"] == 0
    assert json.loads(run.config_file.read_text())["speed"]["linear_probe"] is True
    # the saved first model is the model LoRA starts from, and scores what the log says
    loaded = load_adapter(run.path / "best")
    assert torch.equal(loaded.model.fc.weight, trainer.model.fc.weight.detach())
    val = trainer.val_samples
    top = predict(loaded, [s.path for s in val], topk=1)
    acc = sum(t[0][0] == trainer.classes[s.label] for t, s in zip(top, val)) / len(val)
    assert acc == pytest.approx(meta["metrics"]["val_acc"])
    # the Test tab and the Train tab's accuracy chart say that this is the first model, not LoRA's
    from types import SimpleNamespace

    from lora_gui.ui import charts
    from lora_gui.ui.tabs import test_tab, train_tab
    assert "the first model: the linear probe" in test_tab._run_line(run.path)
    acc = train_tab.first_model_acc(SimpleNamespace(run_dir=str(run.path)))
    assert acc == meta["metrics"]["val_acc"]
    names = [t.name for t in charts.accuracy_figure([], acc).data]
    assert any("first model" in n for n in names)
    # the app's trainings use every core; the gate stands in for the core once kept free
    assert torch.get_num_threads() == os.cpu_count() and trainer.gate_hooks


def test_the_probe_takes_fewer_epochs_only_for_big_sets():
    from lora_gui.training import probe
    assert [probe.epochs_for(n) for n in (1, 18, 200, 320)] == [50] * 4   # small sets: as before
    assert probe.epochs_for(1_000) == 16 and probe.epochs_for(5_000) == 5 and probe.epochs_for(50_000) == 5
    assert all(probe.epochs_for(n) * -(-n // probe.BATCH) >= min(probe.STEP_BUDGET, 50 * -(-n // probe.BATCH))
               for n in (321, 999, 4_321))   # about the step budget, never less


def test_the_probe_fit_takes_the_same_steps_as_autograd_and_adamw():
    """The head fit writes softmax cross-entropy's gradient out by hand (for speed): it must be the
    gradient autograd computes, label smoothing and weight decay included."""
    import torch.nn.functional as F

    from lora_gui.training import probe
    gen = torch.Generator().manual_seed(3)
    feats = torch.randn(70, 48, generator=gen).relu()
    labels = torch.randint(0, 5, (70,), generator=gen)
    threads = torch.get_num_threads()
    got = probe.fit_head(feats, labels, 5, seed=11, weight_decay=0.05, label_smoothing=0.1)
    with torch.random.fork_rng(devices=[]):   # the reference: the plain autograd loop
        torch.manual_seed(11)
        ref = torch.nn.Linear(48, 5)
        opt = torch.optim.AdamW(ref.parameters(), lr=probe.LR, weight_decay=0.05)
        g = torch.Generator().manual_seed(11)
        for _ in range(probe.epochs_for(70)):
            for idx in torch.randperm(70, generator=g).split(probe.BATCH):
                loss = F.cross_entropy(ref(feats[idx]), labels[idx], label_smoothing=0.1)
                opt.zero_grad()
                loss.backward()
                opt.step()
    assert not torch.equal(ref.weight, torch.nn.Linear(48, 5).weight)   # it did train
    torch.testing.assert_close(got.weight, ref.weight, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.bias, ref.bias, rtol=1e-4, atol=1e-5)
    assert got.weight.grad is None and torch.get_num_threads() == threads


def test_no_first_model_when_switched_off(tmp_path, make_image_folder):
    from lora_gui.errors import StopRequested
    root = _folder(make_image_folder)
    cfg = _config(root)
    cfg.train.linear_probe = "off"
    run = RunFolder(tmp_path / "run").create()
    with pytest.raises(StopRequested):
        Trainer(cfg, run, "cpu", _StopAtFirstStep()).run()
    assert not (run.path / "best").exists()
    assert json.loads(run.config_file.read_text())["speed"]["linear_probe_note"] == "off in the config"


# a prefix cache too big for memory ----------------------------------------------
def test_cache_place_memory_disk_or_none(tmp_path):
    mb = 2**20
    assert batches.cache_place(10 * mb, 100 * mb, tmp_path, available=1000 * mb) == ("memory", "")
    where, why = batches.cache_place(200 * mb, 100 * mb, tmp_path, available=1000 * mb)
    assert where == "disk" and "over cache_mb=100" in why
    where, why = batches.cache_place(80 * mb, 100 * mb, tmp_path, available=100 * mb)
    assert where == "disk" and "memory available" in why
    where, why = batches.cache_place(2**60, 100 * mb, tmp_path, available=1000 * mb)
    assert where is None and "disk has" in why


def test_a_cache_over_its_budget_goes_to_disk_and_trains_the_same(tmp_path, make_image_folder, monkeypatch):
    root = _folder(make_image_folder)
    rows = {}
    for name in ("memory", "disk"):
        if name == "disk":   # a machine with (almost) no memory left: the cache must not go there
            monkeypatch.setattr(batches, "available_memory", lambda: 1)
        reporter = RecordingReporter()
        run = RunFolder(tmp_path / name).create()
        Trainer(_config(root), run, "cpu", reporter).run()
        speed = json.loads(run.config_file.read_text())["speed"]
        assert speed["cache_frozen_prefix"] is True and speed["prefix_cache_storage"] == name
        assert not list(run.path.glob(".prefix-cache-*"))   # nothing left behind
        rows[name] = [(r["kind"], r.get("loss"), r.get("val_acc")) for r in reporter.rows]
    assert rows["disk"] == rows["memory"]


# the first model before the mirrored views ------------------------------------------
def test_the_first_model_is_ready_before_the_mirrored_views_and_the_cache_holds_them(tmp_path, make_image_folder,
                                                                                   monkeypatch):
    from lora_gui.data.transforms import ImageDataset, build_transform
    root = _folder(make_image_folder)
    run = RunFolder(tmp_path / "run").create()
    cfg = _config(root)
    cfg.model.name, cfg.model.weights = "tf_efficientnet_lite0", "random"
    # the first model is saved before the validation images go through the frozen front (it only
    # needs the training images); its score follows
    seen = {}
    real_complete_val = batches.CachedBatches.complete_val

    def complete_val(self, trainer):
        if "best" not in seen:
            meta = run.path / "best" / "adapter.json"
            seen["best"] = json.loads(meta.read_text())["metrics"] if meta.exists() else None
            from lora_gui.ui.tabs import test_tab
            seen["line"] = test_tab._run_line(run.path)
            # a page that started this run and opened the Test tab: its follower switches to the
            # first model and stops
            line, *_, timer = test_tab.follow_pending(page)
            seen["page"] = (line, timer.active, page.current_model())
        real_complete_val(self, trainer)
    monkeypatch.setattr(batches.CachedBatches, "complete_val", complete_val)
    run.update_status(status="running")   # as the job that runs a Trainer says
    from lora_gui.ui.session import Session
    from lora_gui.ui.tabs import test_tab
    page = Session()
    page.pending_run = str(run.path)   # as Start leaves it (Session.started)
    line, *_, timer = test_tab.follow_pending(page)   # the Test tab opened during set-up
    assert "is setting up" in line and "switches to it" in line and timer.active, line
    trainer = Trainer(cfg, run, "cpu", RecordingReporter())
    trainer.run()
    line, active, model = seen["page"]
    assert "the first model: the linear probe" in line and "its validation score follows" in line, line
    assert active is True and model == str(run.path)   # it goes on ticking for the score
    run.update_status(status="finished")
    line, *_, timer = test_tab.follow_pending(page)
    assert "validation accuracy" in line and "follows" not in line and timer.active is False, line
    assert seen["best"] and seen["best"]["stage"] == "linear probe" and seen["best"]["val_acc"] is None
    assert "the first model: the linear probe" in seen["line"] and "its validation score follows" in seen["line"]
    assert run.read_status()["first_model"]["val_acc"] is not None
    log = run.log_tail(40)
    first = next(i for i, line in enumerate(log) if "first model (linear probe" in line)
    mirrored = next(i for i, line in enumerate(log) if "mirrored views of the 18 training images" in line)
    assert first < mirrored, log
    # view 1 of every training image is the frozen front's output for the mirrored image
    b = trainer.batches
    assert b.train_cache.shape[0] == 2 and not b.pending_views
    ds = ImageDataset(trainer.train_samples, build_transform(trainer.data_config, "none", False))
    x = trainer._to_device(torch.stack([ds[i][0] for i in range(len(ds))]))
    trainer.model.eval()
    with torch.no_grad(), trainer.autocast():
        assert torch.equal(b.plan.capture(trainer.model, x.flip(-1)), b.train_cache[1])
        assert torch.equal(b.plan.capture(trainer.model, x), b.train_cache[0])


def test_the_mirrored_views_reuse_the_plain_pass_decoding(tmp_path, make_image_folder, monkeypatch):
    """The mirrored views' pass reads the pixels the plain view's pass decoded (no second decode of
    any training image), and lets them go once it is done."""
    from lora_gui.data import decoded_cache
    seen = {"inside": False, "decoded_inside": 0}
    real_load = decoded_cache.load_rgb

    def counting_load(*args, **kwargs):
        seen["decoded_inside"] += seen["inside"]
        return real_load(*args, **kwargs)
    monkeypatch.setattr(decoded_cache, "load_rgb", counting_load)
    real_complete = batches.CachedBatches.complete

    def complete(self, trainer):
        seen["held"] = self.decoded
        seen["inside"] = True
        try:
            real_complete(self, trainer)
        finally:
            seen["inside"] = False
    monkeypatch.setattr(batches.CachedBatches, "complete", complete)
    cfg = _config(_folder(make_image_folder))
    cfg.train.epochs = 1
    trainer = Trainer(cfg, RunFolder(tmp_path / "run").create(), "cpu", RecordingReporter())
    trainer.run()
    assert trainer.batches.cached and trainer.batches.train_cache.shape[0] == 2
    assert seen["held"] is not None and len(seen["held"]._items) == len(trainer.train_samples) == 18
    assert seen["decoded_inside"] == 0
    assert trainer.batches.decoded is None   # freed after the mirrored views


# strided depthwise convolutions train in fp32 under CPU bf16 -----------------------
def test_strided_depthwise_convs_go_through_autograd_in_fp32_and_nothing_else_changes():
    import copy

    from lora_gui.training import depthwise_fp32
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=3)
    lora.inject_lora(model, LoraConfig(targets="auto"))
    keys = list(model.state_dict())
    names = depthwise_fp32.apply(model)
    # EfficientNet-Lite0 downsamples in four depthwise convs (blocks 1-3 and 5)
    assert names == ["blocks.1.0.conv_dw", "blocks.2.0.conv_dw", "blocks.3.0.conv_dw", "blocks.5.0.conv_dw"]
    assert list(model.state_dict()) == keys   # the saved files are the same
    dtypes = {}
    conv = model.get_submodule(names[-1])
    conv.register_forward_hook(lambda m, a, out: dtypes.update({torch.is_grad_enabled(): out.dtype}) and None)
    x = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            model.eval()(x)
        model.train()(x).float().sum().backward()
    assert dtypes == {False: torch.bfloat16, True: torch.float32}
    lora_grads = [p.grad for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]
    assert lora_grads and all(g is not None and torch.isfinite(g).all() for g in lora_grads)
    # a copy's convolutions run as the copy's own (not the original's weights)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.get_submodule(names[-1]).weight.zero_()
        assert not torch.equal(twin.eval()(x), model.eval()(x))


def test_a_cpu_bf16_run_records_the_fp32_depthwise_lever(tmp_path, make_image_folder):
    root = _folder(make_image_folder)
    cfg = _config(root)
    cfg.model.name = "tf_efficientnet_lite0"
    cfg.train.mixed_precision, cfg.train.epochs = "bf16", 1
    run = RunFolder(tmp_path / "run").create()
    Trainer(cfg, run, "cpu", RecordingReporter()).run()
    assert json.loads(run.config_file.read_text())["speed"]["fp32_strided_depthwise"] == 4
    assert any("4 strided depthwise conv(s) train in fp32" in line for line in run.log_tail(20))


# attention takes its explicit path under CPU bf16 ----------------------------------
def test_explicit_attention_path_computes_the_same_and_saves_the_same():
    from lora_gui.training import attention_path
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=64).eval()
    lora.inject_lora(model, LoraConfig(targets="auto"))
    keys = list(model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fused = model(x)
    names = attention_path.apply(model)
    assert names == [f"blocks.{i}.attn" for i in range(12)]
    assert all(model.get_submodule(n).fused_attn is False for n in names)
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        explicit = model(x)
    assert torch.allclose(fused, explicit, atol=1e-5), (fused - explicit).abs().max()
    assert attention_path.apply(model) == []   # once per model
    # a freshly built model (a prediction's, an export's) keeps the fused path
    assert timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=64).blocks[0].attn.fused_attn


def test_a_cpu_bf16_vit_run_records_the_explicit_attention_lever(tmp_path, make_image_folder):
    root = _folder(make_image_folder)
    cfg = _config(root)
    cfg.model.name, cfg.model.weights, cfg.model.image_size = "vit_tiny_patch16_224", "random", 64
    cfg.train.mixed_precision, cfg.train.epochs = "bf16", 1
    run = RunFolder(tmp_path / "run").create()
    Trainer(cfg, run, "cpu", RecordingReporter()).run()
    speed = json.loads(run.config_file.read_text())["speed"]
    assert speed["explicit_attention"] == 12 and speed["fp32_strided_depthwise"] == 0
    assert any("12 attention layer(s) on the explicit path" in line for line in run.log_tail(20))


# the allocator settings ------------------------------------------------------------
_FAULTS = """
import resource
from lora_gui import malloc_tuning
print(malloc_tuning.tune())
import torch
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def batch():   # a forward pass's activations: blocks of 1-48 MB alive together, then all freed
    kept = [torch.ones(n << 18) for n in (1, 3, 6, 12, 24, 6, 3, 48, 12)]
    del kept
for _ in range(3):   # warm up: the heap grows once
    batch()
per_batch = []
for _ in range(20):
    before = faults()
    batch()
    per_batch.append(faults() - before)
# the median batch: a page-out by the kernel now and then (a reclaimer such as DAMON on a VM up for
# a day) refaults once, in one batch, and is not what the tuning is about
print(sorted(per_batch)[len(per_batch) // 2])
"""


def _faults(env_extra: dict) -> tuple[str, int]:
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, env=env, check=True)
    lines = out.stdout.strip().splitlines()
    return lines[0], int(lines[-1])


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="glibc's malloc (Linux) only")
def test_tuned_malloc_keeps_freed_activations_instead_of_faulting_them_in_again():
    said, tuned = _faults({})
    assert said == "tuned"
    said_off, default = _faults({"LORA_GUI_MALLOC_TUNING": "0"})
    assert said_off.startswith("off")
    # glibc's defaults: a block above its mmap threshold (which grows to 32 MB at most) is unmapped
    # when freed and faults in again page by page in the next batch (the 48 MB one: ~12,300 faults
    # in the median batch); tuned, the heap keeps it (0 here)
    assert default > 10_000 and tuned < default / 20, (tuned, default)
    said_user, _ = _faults({"MALLOC_ARENA_MAX": "2"})
    assert said_user == "left as set in the environment"


# OpenMP thread teams ---------------------------------------------------------------
_TEAMS = """
import json, os, threading, time
import torch
from lora_gui import openmp_teams
from lora_gui.training.yield_gate import YieldGate

torch.set_num_threads(2)
tasks = lambda: len(os.listdir("/proc/self/task"))   # the process's OS threads
class Busy(torch.nn.Module):   # one parallel loop (an element-wise op far above torch's grain size)
    def forward(self, x):
        return x.exp()
x = torch.randn(2_000_000)
seen = {"base": tasks()}

def in_thread(name, fn):
    t = threading.Thread(target=lambda: seen.__setitem__(name, fn()))
    t.start()
    t.join()

gate = YieldGate(max_wait_s=0.3)
in_thread("plain", lambda: (Busy()(x), tasks())[1])                # a team stays with its thread
in_thread("predicted", lambda: (gate.watch(Busy())(x), tasks())[1])  # a watched model's leaves
def trainer():
    Busy()(x)
    gate.enter()   # a prediction is running: the training gives way, without its team
    try:
        gate.give_way()
    finally:
        gate.leave()
    return tasks()
in_thread("gave_way", trainer)
Busy()(x)
seen["main_with_team"] = tasks()
seen["released"] = openmp_teams.release()
seen["main_after"] = tasks()
print(json.dumps(seen))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="counts threads in /proc (Linux)")
def test_idle_threads_hand_back_their_openmp_team():
    """An idle thread's team slows every other (libgomp stops spinning once its threads outnumber
    the CPUs): a prediction as it leaves the gate, a training as it waits, and any thread through
    openmp_teams.release() end theirs. Counted as OS threads in a fresh process."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", _TEAMS], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items()
                              if not k.startswith(("OMP_", "GOMP_")) and k != "LORA_GUI_OPENMP_RELEASE"})
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    base = seen["base"]
    assert seen["plain"] == base + 2, seen       # the thread and its team's helper
    assert seen["predicted"] == base + 1, seen   # the helper is gone as the prediction leaves
    assert seen["gave_way"] == base + 1, seen
    assert seen["main_with_team"] == base + 1 and seen["released"] is True and seen["main_after"] == base, seen


def test_openmp_teams_are_left_alone_when_switched_off(monkeypatch):
    from lora_gui import openmp_teams
    monkeypatch.setenv(openmp_teams.SWITCH, "0")
    assert openmp_teams.release() is False
