"""Which speed levers a run uses: each a switch in ``TrainConfig`` ('auto' by default).

``choose`` turns the switches and the device into the run's ``speed`` record
(written to config.json); the frozen-prefix cache (``batches``), BatchNorm
calibration (``norm_calibration``) and torch.compile (``compile_lever``) add
their own entries once they have been tried. ``describe`` is the log's summary.
"""
from __future__ import annotations

import os

import torch

from ..lora.targets import _inside_class
from . import attention_path, compile_lever, depthwise_fp32


def cpu_has_fast_bf16() -> bool:
    """bf16 matrix units (AVX512-BF16 or AMX) on this CPU, so autocast to bf16 is a speed-up."""
    if os.environ.get("LORA_GUI_NO_CPU_BF16"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def describe(speed: dict) -> str:
    """The speed levers in use, in a few words for the log."""
    used = [speed["mixed_precision"] if speed["mixed_precision"] != "off" else "fp32"]
    used += [name.replace("_", " ") for name in ("channels_last", "compile") if speed.get(name)]
    if speed.get("fp32_strided_depthwise"):
        used.append(f"{speed['fp32_strided_depthwise']} strided depthwise conv(s) train in fp32")
    if speed.get("explicit_attention"):
        used.append(f"{speed['explicit_attention']} attention layer(s) on the explicit path")
    used.append("frozen prefix cached" if speed.get("cache_frozen_prefix")
                else f"no prefix cache ({speed.get('cache_frozen_prefix_note', 'off')})")
    if speed.get("dataloader_workers"):
        used.append(f"{speed['dataloader_workers']} data workers" + (", pinned memory" if speed.get("pin_memory") else ""))
    return ", ".join(used)


def choose(trainer) -> dict:
    """What the run uses, decided from the config's switches and the device (before the model moves)."""
    t = trainer.cfg.train
    cuda = trainer.device.startswith("cuda")
    cpu_bf16 = trainer.device == "cpu" and cpu_has_fast_bf16()
    if t.mixed_precision == "off" or (t.mixed_precision == "auto" and not (cuda or cpu_bf16)):
        amp = "off"
    elif cuda:
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    else:
        amp = "bf16"  # CPUs with bf16 units run it ~1.6x faster; forced on for other CPUs / MPS
    is_cnn = not _inside_class(trainer.model, "Attention")
    # channels_last pays off for convolutions on GPUs and in bf16 on CPUs (oneDNN's fast path)
    fast_layout = cuda or amp == "bf16"
    workers = t.dataloader_workers
    if workers < 0:
        workers = min(4, max(0, (os.cpu_count() or 1) - 1)) if cuda else 0
    return {"mixed_precision": amp,
            "channels_last": t.channels_last == "on" or (t.channels_last == "auto" and fast_layout and is_cnn),
            "compile": False, "cache_frozen_prefix": False, "decoded_cache": trainer.cfg.data.cache_mb > 0,
            "dataloader_workers": workers, "pin_memory": cuda, "threads": torch.get_num_threads()}


def cpu_bf16_fixes(trainer) -> None:
    """bf16 on a CPU: the two operations whose bf16 backward is slow there take another way:
    strided depthwise convolutions go back in fp32 (depthwise_fp32), attention takes its explicit
    path (attention_path)."""
    if trainer.speed["mixed_precision"] == "bf16" and trainer.device == "cpu":
        trainer.speed["fp32_strided_depthwise"] = len(depthwise_fp32.apply(trainer.model))
        trainer.speed["explicit_attention"] = len(attention_path.apply(trainer.model))


def compile_if_asked(trainer) -> None:
    """compile='on': the trainable blocks, tried once at set-up (see compile_lever)."""
    switch = trainer.cfg.train.compile
    if switch != "on":
        trainer.speed["compile_note"] = "off in the config" if switch == "off" else \
            "auto: off (measured slower on CPU, with its compile time on top; not measured on a GPU)"
        return
    if trainer.dist.enabled:
        trainer.speed["compile_note"] = "not used under torchrun"
        return
    blocks = compile_lever.trainable_blocks(trainer.model)
    if not blocks:
        trainer.speed["compile_note"] = "no residual blocks with trainable tensors to compile"
        return
    compile_lever.apply(trainer.model, blocks)
    failure = compile_lever.warm_up(trainer, blocks)
    trainer.speed["compile"] = not failure
    if failure:
        trainer.speed["compile_note"] = failure
        trainer.folder.log(f"{failure}; training without it")
