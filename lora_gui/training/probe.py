"""A first model in seconds: the head trained alone on the cached features, before LoRA starts.

The pass that caches the frozen prefix of the training images (``batches.make_batches``) runs on
to the classifier and keeps its input, the pooled features (LoRA's B is zero at the start, so this
is the base model); a run resumed before its first step runs the rest of the model over the cache
for them instead. A linear head trained on them for 50 cheap epochs, fewer for big sets (the linear probe,
Teachable Machine's way) is saved as the run's first ``best/`` adapter, so the Test tab can use
it while LoRA trains, and LoRA then starts from this head instead of a random one (linear probe
then fine-tune: a random head's large early gradients would first push the adapted layers the
wrong way; Kumar et al. 2022, "Fine-tuning can distort pretrained features").

Only for a single ``nn.Linear`` classifier trained in full (the usual timm head); deterministic
for a seed, so a run restarted from its beginning gets the same head.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from ..lora.targets import classifier_names, head_modules

EPOCHS, LR, BATCH = 50, 1e-3, 16
# a bigger set needs fewer passes: about this many Adam steps, but never fewer than MIN_EPOCHS epochs.
# Up to 320 images that is the full 50 epochs; on Fashion-MNIST (Lite0 features, 1,000 held-out
# images) 5,000 images fitted in 5 epochs took 0.8 s instead of 8.2 s and scored 88.5 % against
# 87.6 % with 50 (1,000 images: 10-20 epochs 86.2-86.7 % against 86.0 %)
STEP_BUDGET, MIN_EPOCHS = 1_000, 5
STAGE = "linear probe"   # the adapter's metrics say which model it is (the Test tab shows it)


def decide(trainer) -> None:
    """Whether the run starts with the probe, in its speed record (config.json)."""
    note = why_not(trainer)
    trainer.speed["linear_probe"] = not note
    if note:
        trainer.speed["linear_probe_note"] = note


def why_not(trainer, cached: bool | None = None) -> str:
    """'' when the probe runs, else why it does not (``cached``: whether the frozen prefix is
    cached, when ``trainer.batches`` is not made yet)."""
    if trainer.cfg.train.linear_probe == "off":
        return "off in the config"
    if trainer.dist.enabled:
        # each rank holds only its shard of the cache: heads fitted apart would differ between ranks,
        # and a run under torchrun must equal one process with the whole batch (tests/test_distributed.py)
        return "not under torchrun (each process sees only its share of the images)"
    if not (cached if cached is not None else getattr(trainer.batches, "cached", False)):
        return "needs the frozen-prefix cache (the features are computed from it)"
    names = classifier_names(trainer.model)
    if len(names) != 1 or head_modules(trainer.model) != names:
        return "the head is not a single classifier layer"
    if not isinstance(trainer.model.get_submodule(names[0]), nn.Linear):
        return "the classifier is not a linear layer"
    return ""


def classifier_to_probe(trainer) -> str | None:
    """The classifier whose input the prefix cache's pass should also return (while the cache is
    being made), or None when the run has no probe."""
    return None if why_not(trainer, cached=True) else classifier_names(trainer.model)[0]


@torch.no_grad()
def features(trainer, cached: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The classifier's input (pooled features, fp32) for each cached boundary input."""
    model, head = trainer.model, trainer.model.get_submodule(classifier_names(trainer.model)[0])
    got: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda module, args: got.append(args[0].float().cpu()))
    model.eval()
    try:
        for start in range(0, len(cached), batch_size):
            trainer.reporter.check_controls()
            with trainer.autocast():
                trainer.batches.forward(model, cached[start:start + batch_size])
    finally:
        handle.remove()
    return torch.cat(got) if got else torch.empty(0)


def fit_head(feats: torch.Tensor, labels: torch.Tensor, classes: int, seed: int,
             weight_decay: float = 0.0, label_smoothing: float = 0.0) -> nn.Linear:
    """A linear head trained on fixed features: Adam, ``epochs_for(n)`` epochs of ``BATCH``-image steps."""
    threads = torch.get_num_threads()
    # one thread: steps this small only pay for a thread team's start-up and barriers (measured
    # 20x slower with two threads on a busy 2-core machine)
    torch.set_num_threads(1)
    try:
        return _fit(feats, labels, classes, seed, weight_decay, label_smoothing)
    finally:
        torch.set_num_threads(threads)


def _fit(feats, labels, classes: int, seed: int, weight_decay: float, label_smoothing: float) -> nn.Linear:
    # its own random numbers: the run's stream (dropout, flip views) stays as without the probe,
    # and a resume that re-runs it (restarted from the beginning) continues the same stream
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        head = nn.Linear(feats.shape[1], classes)
        w, b = head.weight, head.bias
        # the gradient written out rather than taken by autograd: for softmax cross-entropy it is
        # (softmax - target) / n, and these steps are so small that autograd's bookkeeping was most
        # of their time (0.34 -> 0.12 s for 200 images; same numbers, tests/test_speed_features.py)
        opt = _adamw(head, weight_decay)
        target = F.one_hot(labels, classes).float() * (1 - label_smoothing) + label_smoothing / classes
        g = torch.Generator().manual_seed(seed)
        for _ in range(epochs_for(len(labels))):
            for idx in torch.randperm(len(labels), generator=g).split(BATCH):
                x = feats[idx]
                grad = torch.softmax(torch.addmm(b, x, w.t()), 1).sub_(target[idx]).div_(len(idx))
                w.grad, b.grad = grad.t() @ x, grad.sum(0)
                opt.step()
    head.zero_grad(set_to_none=True)
    return head


def _adamw(head: nn.Linear, weight_decay: float) -> torch.optim.AdamW:
    """AdamW in one fused kernel where torch has it for the CPU (2.4 and later), else the usual one."""
    try:
        return torch.optim.AdamW(head.parameters(), lr=LR, weight_decay=weight_decay, fused=True)
    except RuntimeError:
        return torch.optim.AdamW(head.parameters(), lr=LR, weight_decay=weight_decay)


def epochs_for(n: int) -> int:
    """The probe's epochs for ``n`` training images (see STEP_BUDGET)."""
    steps_per_epoch = max(1, -(-n // BATCH))
    return max(MIN_EPOCHS, min(EPOCHS, -(-STEP_BUDGET // steps_per_epoch)))


def run(trainer) -> nn.Linear | None:
    """Fit the head on the training images' features and copy it into the model (None if not run)."""
    if not trainer.speed.get("linear_probe"):
        return None
    b = trainer.batches
    # computed with the cache (batches.make_batches) for a new run; a run resumed before its
    # first step runs the rest of the model over the cache once more
    feats = b.train_features if b.train_features is not None else features(trainer, b.train_cache[0])
    b.train_features = None   # not kept for the rest of the run
    # the run's label smoothing: the probe's validation loss then compares fairly with LoRA's
    # epochs when best/ is chosen (a sharper head would win every tie in accuracy)
    t = trainer.cfg.train
    fitted = fit_head(feats, b.train_labels, len(trainer.classes), t.seed, label_smoothing=t.label_smoothing)
    head = trainer.model.get_submodule(classifier_names(trainer.model)[0])
    with torch.no_grad():
        head.weight.copy_(fitted.weight.to(head.weight))
        head.bias.copy_(fitted.bias.to(head.bias))
    return fitted


def score(trainer, fitted: nn.Linear) -> dict:
    """The probe's metrics on the validation images (their prefix is cached by now)."""
    b = trainer.batches
    metrics = _unscored()
    if len(b.val_labels):
        with torch.no_grad():
            logits = fitted(features(trainer, b.val_cache))
        metrics["val_loss"] = F.cross_entropy(logits, b.val_labels).item()
        metrics["val_acc"] = (logits.argmax(1) == b.val_labels).float().mean().item()
    return metrics


def first_model(trainer) -> None:
    """Run the probe (when the run starts with one) and make it the run's best model so far.

    It is saved as soon as it is fitted, so the Test tab has a model while the validation images
    are still on their way through the frozen front; its validation score follows and is saved
    with it (the only thing the validation images are needed for here)."""
    started = time.time()
    fitted = run(trainer)
    if fitted is None:
        return
    _keep(trainer, _unscored())
    ready = time.time() - started
    trainer.batches.complete_val(trainer)
    metrics = score(trainer, fitted)
    _keep(trainer, metrics)
    acc = f"{metrics['val_acc']:.1%}" if metrics["val_acc"] is not None else "n/a"
    trainer.folder.log(f"first model (linear probe on the cached features, {epochs_for(len(trainer.batches.train_labels))} "
                       f"epochs) ready in {ready:.1f} s, scored in {time.time() - started - ready:.1f} s more: "
                       f"val acc {acc}; saved as best/, LoRA starts from its head")


def _unscored() -> dict:
    """The first model's metrics before its validation images are through."""
    return {"epoch": 0, "stage": STAGE, "val_acc": None, "val_loss": None}


def _keep(trainer, metrics: dict) -> None:
    """The first model as best/ with ``metrics``; the status marks it apart from best_*, which
    later epochs overwrite (the charts show the first model's point)."""
    trainer.best = {k: metrics[k] for k in ("epoch", "val_acc", "val_loss")}
    trainer._save_adapter("best", metrics)
    trainer.folder.update_status(best_val_acc=metrics["val_acc"], best_epoch=0,
                                 first_model={"stage": metrics["stage"], "val_acc": metrics["val_acc"]})
