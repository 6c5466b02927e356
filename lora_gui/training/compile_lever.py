"""``torch.compile`` on the blocks that train: opt-in (``compile='on'``), with a fallback.

Only the blocks holding trainable tensors are compiled (``nn.Module.compile``, in
place): they are what every step runs forwards and backwards, while the frozen
front is cached or runs without gradients, and compiling a whole model would
also capture the prefix cache's module swapping. The first compiled step is
taken at set-up on a real batch, so a compiler that fails (no C++ compiler,
an operator the backend lacks) turns the lever off with the reason instead of
failing the run, and the compile time shows in the log. The trial step leaves
no trace: gradients, the adapter's tensors (incl. trained BatchNorm buffers)
and every random number generator are put back.

Why not 'auto': on the 2-core CPU this was measured on (bf16, prefix cache on),
the compiled blocks trained slower (resnet18 375 vs 403 images/s, ViT-tiny 115
vs 133, 224 px) and compiling the graphs (training, validation, a short last
batch) added 15-18 s to a run. A GPU may differ; it has not been measured.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from .. import lora
from ..lora.targets import _block_prefixes
from .seeding import rng_state, set_rng_state


def trainable_blocks(model: nn.Module) -> list[str]:
    """The innermost residual blocks with something to train; the head trains too but is one matmul."""
    return [b for b in _block_prefixes(model)
            if any(p.requires_grad for p in model.get_submodule(b).parameters())]


def apply(model: nn.Module, names: list[str], backend="inductor") -> None:
    for name in names:
        model.get_submodule(name).compile(backend=backend)


def revert(model: nn.Module, names: list[str]) -> None:
    for name in names:
        model.get_submodule(name)._compiled_call_impl = None  # what nn.Module.compile set
    torch._dynamo.reset()


def warm_up(trainer, names: list[str]) -> str:
    """One forward + backward through the compiled blocks on the first training batch.
    Returns '' when it worked, else why not (the blocks are then back to eager)."""
    model = trainer.model
    saved, rng = lora.adapter_state_dict(model), rng_state()
    started = time.time()
    try:
        x, y = next(iter(trainer.batches.train_epoch(0, 0)))
        lora.train_mode(model)
        with trainer.autocast():
            logits = trainer.batches.forward(model, x)
            loss = F.cross_entropy(logits.float(), y.to(trainer.device))
        loss.backward()
        failure = ""
    except Exception as exc:  # the compiler's own error, in one line
        revert(model, names)
        said = " ".join([line.strip() for line in str(exc).splitlines() if line.strip()][:2])  # what + why
        failure = f"torch.compile failed ({type(exc).__name__}: {said[:240]})"
    finally:
        model.zero_grad(set_to_none=True)
        lora.load_adapter_state_dict(model, saved)
        set_rng_state(rng)
    if not failure:
        trainer.folder.log(f"torch.compile: {len(names)} trainable blocks compiled; the first step took "
                           f"{time.time() - started:.1f} s (validation and a short last batch compile once more)")
    return failure
