"""Compute the frozen front of a model once per image, then train only the rest.

When LoRA targets only later blocks, everything before the first trainable
block gives the same output every epoch (for a deterministic transform), so
recomputing it is wasted work. A ``PrefixPlan`` finds that boundary block by
tracing one forward pass; ``compute`` stores each image's input to the
boundary; during training ``feeding`` swaps every top-level module of the
frozen front for a stub that returns zeros of the right shape (broadcast, so
they cost nothing) and hands the boundary block the stored tensor instead. Works on any timm model whose boundary block takes
a single tensor; ``plan`` checks that the shortcut reproduces the full model's
logits and returns ``None`` (with a reason) when it doesn't.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..lora.layers import get_parent
from ..lora.targets import _block_prefixes


class _Captured(Exception):
    def __init__(self, value):
        self.value = value


def zeros(batch: int, shape: tuple[int, ...], dtype, device, dense: bool = False) -> torch.Tensor:
    """A batch of zeros. Not dense: one sample's zeros broadcast over the batch, which
    costs no memory or memset per step (the frozen front's outputs are thrown away
    anyway). Dense zeros for models whose glue code writes into them in place."""
    if dense:
        return torch.zeros((batch, *shape), dtype=dtype, device=device)
    return torch.zeros((1, *shape), dtype=dtype, device=device).expand(batch, *shape)


class _ZeroStub(nn.Module):
    """Stands in for a frozen prefix module: zeros of the shape it would have produced."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, dense: bool):
        super().__init__()
        self.shape, self.dtype, self.dense = shape, dtype, dense

    def forward(self, x, *args, **kwargs):
        return zeros(x.shape[0], self.shape, self.dtype, x.device, self.dense)


@dataclass
class PrefixPlan:
    boundary: str                                       # module whose input is cached
    stubs: dict[str, tuple] = field(default_factory=dict)  # prefix module -> (shape, dtype) of its output
    sample_shape: tuple[int, ...] = ()                  # shape of one cached input
    reason: str = ""
    dense: bool = False                                 # stubs (and the dummy input) need real zeros
    sample_dtype: torch.dtype = torch.float32           # dtype of the cached input (under autocast)

    def bytes_per_sample(self, dtype: torch.dtype) -> int:
        n = 1
        for s in self.sample_shape:
            n *= s
        return n * torch.tensor([], dtype=dtype).element_size()

    # -- running ------------------------------------------------------------
    @torch.no_grad()
    def dummy_input(self, batch: int, example_shape: tuple[int, ...], device) -> torch.Tensor:
        """What the model is called with while ``feeding``: it only carries the batch size."""
        return zeros(batch, example_shape, torch.float32, device, self.dense)

    def capture(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The boundary block's input for a batch (the rest of the model is not run)."""
        def hook(_, args):
            raise _Captured(args[0])
        handle = model.get_submodule(self.boundary).register_forward_pre_hook(hook)
        try:
            model(x)
        except _Captured as got:
            return got.value.detach().clone()
        finally:
            handle.remove()
        raise RuntimeError(f"boundary {self.boundary} was never called")

    def capture_with_features(self, model: nn.Module, x: torch.Tensor, head: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The boundary block's input and the input of the classifier ``head`` (the pooled
        features, fp32): the model runs on past the boundary up to the classifier, so a linear
        probe's features cost no second pass over the cached inputs (``training.probe``)."""
        seen = {}

        def at_boundary(_, args):
            seen.setdefault("x", args[0].detach().clone())

        def at_head(_, args):
            raise _Captured(args[0])
        handles = [model.get_submodule(self.boundary).register_forward_pre_hook(at_boundary),
                   model.get_submodule(head).register_forward_pre_hook(at_head)]
        try:
            model(x)
        except _Captured as got:
            if "x" not in seen:
                raise RuntimeError(f"boundary {self.boundary} was never called") from None
            return seen["x"], got.value.detach().float()
        finally:
            for handle in handles:
                handle.remove()
        raise RuntimeError(f"the classifier {head} was never called")

    @contextmanager
    def feeding(self, model: nn.Module):
        """Inside: ``feed(cached)`` sets the next boundary input; frozen modules are stubs."""
        originals, slot = {}, {}
        for name, (shape, dtype) in self.stubs.items():
            parent, child = get_parent(model, name)
            originals[name] = (parent, child, getattr(parent, child))
            setattr(parent, child, _ZeroStub(shape, dtype, self.dense))

        def hook(_, args):
            return (slot["x"], *args[1:])
        handle = model.get_submodule(self.boundary).register_forward_pre_hook(hook)
        try:
            yield lambda cached: slot.__setitem__("x", cached)
        finally:
            handle.remove()
            for parent, child, module in originals.values():
                setattr(parent, child, module)


def _first_trainable(model: nn.Module, x: torch.Tensor) -> tuple[str | None, list[str], dict]:
    """Trace one forward: (first module with trainable params, call order, outputs of each module);
    the model's own output is ``outputs[""]``."""
    names = {id(m): n for n, m in model.named_modules()}
    order, outputs, handles = [], {}, []
    first = []

    def pre(m, args):
        n = names[id(m)]
        order.append(n)
        if not first and any(p.requires_grad for p in m.parameters(recurse=False)):
            first.append(n)

    def post(m, args, out):
        outputs.setdefault(names[id(m)], out)

    for m in model.modules():
        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return (first[0] if first else None), order, outputs


def plan(model: nn.Module, example: torch.Tensor, autocast=None) -> PrefixPlan:
    """Where to cut, and whether cutting there is exact. ``example``: a small real batch."""
    was_training = model.training
    model.eval()
    try:
        return _plan(model, example, autocast)
    finally:
        model.train(was_training)


def _plan(model, example, autocast) -> PrefixPlan:
    ctx = autocast or torch.no_grad
    with ctx():
        first, order, outputs = _first_trainable(model, example)
    if first is None:
        return PrefixPlan("", reason="nothing is trainable")
    blocks = [b for b in _block_prefixes(model) if first == b or first.startswith(b + ".")]
    # the cut goes before a module whose forward is called: a container that the model only
    # iterates (timm's FastViT loops over its `stages` list) never runs, so it cannot be cut at;
    # then the next level down that does run is used
    parts = first.split(".")
    called = set(order)
    candidates = ([blocks[0]] if blocks else []) + [".".join(parts[:k]) for k in range(1, len(parts) + 1)]
    boundary = next((c for c in candidates if c in called), None)
    if boundary is None:
        return PrefixPlan("", reason=f"no called module contains {first}")
    start = order.index(boundary)
    if start <= 1:  # order[0] is the model itself
        return PrefixPlan(boundary, reason="the first layer is trainable: no frozen prefix to cache")
    after = set(order[start:])
    ancestors = {boundary.rsplit(".", k)[0] for k in range(1, boundary.count(".") + 1)} | {""}
    # every top-most module of the frozen front is stubbed, parameterless ones too
    # (a ResNet's max-pool over the stem's output is ~20% of a cached step)
    stubs = {}
    for n in order[:start]:
        if n in ancestors or n in after or any(n.startswith(s + ".") for s in stubs):
            continue
        out = outputs.get(n)
        if isinstance(out, torch.Tensor):
            stubs[n] = (tuple(out.shape[1:]), out.dtype)
        elif any(True for _ in model.get_submodule(n).parameters(recurse=False)):
            return PrefixPlan(boundary, reason=f"{n} returns {type(out).__name__}, not a tensor")
    # the traced pass's logits stand in for a full pass (a plan is made at the start of every run:
    # each forward saved is time to the first model); the boundary's input is captured afresh, as
    # the cache will capture it: the traced one may have been changed in place after it was seen
    full = outputs.get("")
    if not isinstance(full, torch.Tensor):
        return PrefixPlan(boundary, reason=f"the model returns {type(full).__name__}, not a tensor")
    try:
        with ctx():
            cached = PrefixPlan(boundary).capture(model, example)
    except Exception as exc:
        return PrefixPlan(boundary, reason=f"cached path failed ({type(exc).__name__}: {exc})")
    failure = ""
    for dense in (False, True):  # broadcast zeros first; real zeros if the model writes into them
        p = PrefixPlan(boundary, stubs, dense=dense)
        failure = _check(p, model, example, ctx, cached, full.float())
        if not failure:
            return p
    return PrefixPlan(boundary, reason=failure)


def _check(p: PrefixPlan, model, example, ctx, cached: torch.Tensor, full: torch.Tensor) -> str:
    """'' if the cached path (fed ``cached``) reproduces the full model's logits ``full`` (and sets
    the cached shape)."""
    try:
        with ctx():
            with torch.no_grad():
                with p.feeding(model) as feed:
                    feed(cached)
                    short = model(p.dummy_input(len(example), tuple(example.shape[1:]), example.device)).float()
    except Exception as exc:  # any model the trick does not fit: train the ordinary way
        return f"cached path failed ({type(exc).__name__}: {exc})"
    err = ((full - short).abs().max() / full.abs().max().clamp_min(1e-12)).item()
    if not err <= 1e-5:
        return f"cached path differs from the full model (rel. error {err:.1e})"
    p.sample_shape, p.sample_dtype = tuple(cached.shape[1:]), cached.dtype
    return ""
