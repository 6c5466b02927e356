"""Variants (a) peft LoRA, (b) full fine-tuning and (c) linear probe: the loop a
careful user writes by hand, with no help from lora_gui's engine.

fp32, ``torchvision.datasets.ImageFolder`` (PIL open + convert every time)
with timm's transforms, a standard ``DataLoader``, AdamW with a cosine
schedule, label smoothing and gradient clipping. The hyper-parameters are
fixed here on purpose (they equal the engine's defaults when this was
written) so the reference stays the same while the engine changes.
Only the model constructor (for the bundled EfficientNet-Lite0 weights) and
``lora.resolve_targets`` (to name the exact layers) come from lora_gui.
"""
from __future__ import annotations

import math
import resource
import statistics
import time

import torch
import torch.nn.functional as F

LR, WEIGHT_DECAY, WARMUP_FRACTION, LABEL_SMOOTHING, GRAD_CLIP = 1e-3, 0.01, 0.05, 0.1, 1.0
LORA_ALPHA, LORA_DROPOUT = 16.0, 0.0


# helpers shared with engine_run ------------------------------------------------
def rss_mb() -> float:
    """Resident memory now (Linux /proc), MB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def peak_memory_mb(device: str) -> dict:
    """Peak memory so far: max RSS of this process on CPU, max allocated on a CUDA device."""
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.startswith("cuda"):
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_after(values: list[float], skip: int) -> float | None:
    kept = values[skip:] if len(values) > skip else values[-1:]
    return statistics.median(kept) if kept else None


def time_calls(fn, items: list, n: int, warmup: int = 3) -> dict:
    """Median / p90 latency in ms of ``fn(item)`` over ``n`` calls after ``warmup`` calls."""
    times = []
    for i in range(warmup + n):
        t0 = time.perf_counter()
        fn(items[i % len(items)])
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"median_ms": statistics.median(times), "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))],
            "n": n}


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


# the model --------------------------------------------------------------------
def build(spec: dict):
    """(model, exact LoRA layer names or [], head names) for the spec's variant."""
    import warnings

    from lora_gui import lora
    from lora_gui.backbones.build import build_model
    from lora_gui.config import LoraConfig as EngineLoraConfig
    from lora_gui.config import ModelConfig
    torch.manual_seed(spec["seed"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random weights")
        model = build_model(ModelConfig(name=spec["model"], weights=spec["weights"],
                                              image_size=spec["image_size"]), spec["num_classes"])
    heads = lora.head_modules(model)
    # the engine's default target spec ("auto"), resolved by the engine's own function
    layers, _ = lora.resolve_targets(model, EngineLoraConfig().targets)
    variant = spec["variant"]
    if variant == "peft":
        import re

        from peft import LoraConfig, get_peft_model
        regex = "(" + "|".join(re.escape(n) for n in layers) + ")"  # peft fullmatches a str target
        model = get_peft_model(model, LoraConfig(r=spec["rank"], lora_alpha=LORA_ALPHA, lora_dropout=LORA_DROPOUT,
                                                 target_modules=regex, modules_to_save=heads))
        wrapped = sorted(n.removeprefix("base_model.model.") for n, m in model.named_modules()
                         if hasattr(m, "lora_A") and hasattr(m, "base_layer"))
        if wrapped != sorted(layers):
            raise RuntimeError(f"peft wrapped {len(wrapped)} layers, expected {len(layers)}")
        return model, layers, heads
    if variant == "probe":
        for p in model.parameters():
            p.requires_grad_(False)
        for h in heads:
            for p in model.get_submodule(h).parameters():
                p.requires_grad_(True)
    elif variant != "full":
        raise ValueError(f"unknown reference variant {variant!r}")
    return model, [], heads


def loaders(spec: dict, model, device: str):
    import timm
    from torchvision.datasets import ImageFolder
    cfg = timm.data.resolve_model_data_config(model)
    cfg["input_size"] = (3, spec["image_size"], spec["image_size"])
    common = {k: cfg[k] for k in ("input_size", "interpolation", "mean", "std")}
    # mild augmentation: random crop (60-100 % of the area) and horizontal flip
    train_tf = timm.data.create_transform(is_training=True, scale=(0.6, 1.0), hflip=0.5, color_jitter=None,
                                          auto_augment=None, re_prob=0.0, **common)
    eval_tf = timm.data.create_transform(is_training=False, crop_pct=cfg["crop_pct"], **common)
    root = spec["data_root"]
    train_ds = ImageFolder(f"{root}/train", transform=train_tf)
    val_ds = ImageFolder(f"{root}/val", transform=eval_tf)
    cuda = device.startswith("cuda")
    kw = dict(batch_size=spec["batch_size"], num_workers=spec["ref_workers"], pin_memory=cuda,
              persistent_workers=spec["ref_workers"] > 0)
    return (torch.utils.data.DataLoader(train_ds, shuffle=True, drop_last=False, **kw),
            torch.utils.data.DataLoader(val_ds, shuffle=False, **kw), eval_tf, val_ds)


@torch.no_grad()
def evaluate(model, loader, device: str) -> float:
    model.eval()
    correct = seen = 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        correct += int((model(x).argmax(1) == y).sum())
        seen += len(y)
    return correct / max(1, seen)


def run(spec: dict) -> dict:
    """Train one reference variant; returns speed, memory, accuracy and predict latency."""
    t_start = time.perf_counter()
    device = resolve_device(spec["device"])
    torch.manual_seed(spec["seed"])
    import timm  # noqa: F401  imports are not the loop's cost: load them before the clock starts
    import torchvision.datasets  # noqa: F401
    if spec["variant"] == "peft":
        import peft  # noqa: F401  (it pulls in transformers: about 80 MB more RSS than the engine's imports)
    baseline = rss_mb()  # after the imports, as in engine_run: peak - baseline = what training added
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t_train = time.perf_counter()  # end-to-end: model set-up, training and validation, as for the engine
    model, layers, heads = build(spec)
    model.to(device)
    train_loader, val_loader, eval_tf, val_ds = loaders(spec, model, device)
    params = [p for p in model.parameters() if p.requires_grad]
    trainable, total = sum(p.numel() for p in params), sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = len(train_loader)
    timed_only = spec["steps"] is not None
    limit = spec["warmup"] + spec["steps"] if timed_only else None
    epochs = math.ceil(limit / steps_per_epoch) if timed_only else spec["epochs"]
    total_steps = epochs * steps_per_epoch
    warm = int(WARMUP_FRACTION * total_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / (warm + 1) if s < warm else 0.5 * (
        1 + math.cos(math.pi * min(1.0, (s - warm) / max(1, total_steps - warm)))))
    # per-phase timers cost nothing on CPU; on a GPU they need a sync per phase, so only with --profile
    phases = not device.startswith("cuda") or spec.get("profile", False)
    rows, epoch_rows, first_step_at = [], [], None
    for epoch in range(epochs):
        model.train()
        batches = iter(train_loader)
        while limit is None or len(rows) < limit:
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                x, y = next(batches)
            except StopIteration:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if phases:
                sync(device)
            t1 = time.perf_counter()
            loss = F.cross_entropy(model(x), y, label_smoothing=LABEL_SMOOTHING)
            if phases:
                sync(device)
            t2 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if phases:
                sync(device)
            t3 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
            opt.step()
            sched.step()
            value = loss.item()  # waits for the device: the step is over
            t4 = time.perf_counter()
            if first_step_at is None:
                first_step_at = t4
            rows.append({"epoch": epoch + 1, "images": len(y), "s": t4 - t0, "cpu_s": time.process_time() - c0,
                         "loss": value,
                         "data_s": t1 - t0, "forward_s": t2 - t1, "backward_s": t3 - t2, "optimizer_s": t4 - t3})
        if not timed_only:
            epoch_rows.append({"epoch": epoch + 1, "val_acc": evaluate(model, val_loader, device)})
    train_wall = time.perf_counter() - t_train
    memory = peak_memory_mb(device)

    model.eval()
    paths = [p for p, _ in val_ds.samples]

    @torch.no_grad()
    def predict_one(path):
        from PIL import Image
        with Image.open(path) as im:
            x = eval_tf(im.convert("RGB")).unsqueeze(0).to(device)
        return int(model(x).softmax(-1).argmax())  # .item-like: waits for the device
    latency = time_calls(predict_one, paths, spec["predict_n"])

    skip = spec["warmup"]
    ips = [r["images"] / r["s"] for r in rows]
    result = {
        "images_per_s": median_after(ips, skip),
        "images_per_s_by_epoch": {e: median_after([r["images"] / r["s"] for r in rows if r["epoch"] == e],
                                                  skip if e == 1 else 0) for e in sorted({r["epoch"] for r in rows})},
        "images_per_cpu_s": median_after([r["images"] / r["cpu_s"] for r in rows if r["cpu_s"] > 0], skip),
        "steps": len(rows), "timed_steps": max(1, len(rows) - skip),
        "val_acc": epoch_rows[-1]["val_acc"] if epoch_rows else None,
        "val_acc_by_epoch": [r["val_acc"] for r in epoch_rows],
        "final_train_loss": rows[-1]["loss"] if rows else None,
        "time_to_first_step_s": (first_step_at or time.perf_counter()) - t_start,
        "train_wall_s": train_wall, "end_to_end_images_per_s": sum(r["images"] for r in rows) / train_wall, "baseline_rss_mb": baseline, **memory,
        "predict": latency, "trainable_params": trainable, "total_params": total,
        "layers": layers, "heads": heads, "threads": torch.get_num_threads(),
        "levers": {"mixed_precision": "off", "channels_last": False, "compile": False,
                   "dataloader_workers": spec["ref_workers"], "pin_memory": device.startswith("cuda")},
    }
    if phases:
        timed = rows[skip:] or rows[-1:]  # means, so that the phases add up to the step
        result["phases_ms"] = {k.removesuffix("_s") if k != "s" else "s": 1000 * statistics.fmean(r[k] for r in timed)
                               for k in ("data_s", "forward_s", "backward_s", "optimizer_s", "s")}
        result["phases_ms"]["other"] = result["phases_ms"]["s"] - sum(
            result["phases_ms"][k] for k in ("data", "forward", "backward", "optimizer"))
    return result
