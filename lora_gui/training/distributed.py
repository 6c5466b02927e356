"""Several processes, one run: ``torchrun --nproc_per_node=N -m lora_gui train ...``.

PyTorch's own engine does the work: torchrun starts the processes and tears them
all down when one fails, ``DistributedDataParallel`` averages the gradients of the
trainable tensors (LoRA + head; the frozen backbone has ``requires_grad=False`` and
DDP leaves it alone), and a process group with a timeout bounds every collective.
This module holds what lora_gui adds around it:

* ``init_from_env`` reads torchrun's ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` and
  joins the group (nccl for CUDA, gloo otherwise). Without them, or with one
  process, nothing changes: ``context()`` is a world of one.
* ``shard``: every rank draws the same seeded permutation of the epoch; global
  batch k is its k-th run of ``world x batch_size`` samples and each rank takes its
  slice, so a global batch is exactly the batch a single process with
  ``world x batch_size`` would see. Each rank's loss is its *sum* scaled by
  ``world / samples in the global batch``, so DDP's average is the mean over the
  global batch even when the last one is short; a rank with nothing left in it
  runs one padding sample of weight 0, so every rank takes the same steps.
* Metrics: one all-reduce per optimizer step (loss, correct, images, plus rank 0's
  'checkpoint now' and anyone's 'stop' flag, so all ranks act at the same step);
  validation is split over the ranks and its sums reduced.
* Only rank 0 writes the run folder; the others get a ``MutedRunFolder``.
* Checkpoints count the position in samples (``samples_in_epoch``) and store every
  rank's RNG state, so a resume with the same world size is exact and one with
  another world size continues with the same samples (see ``resume_position``).
"""
from __future__ import annotations

import math
import os
import signal
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch

from ..errors import TrainingFailed
from ..store.run_folder import FINAL_STATUSES, RunFolder
from .schedule import cosine_with_warmup, scheduled, virtual_step

DEFAULT_TIMEOUT_S = 60.0
TIMEOUT_ENV = "LORA_GUI_DIST_TIMEOUT"
IGNORE = -100  # label of a padding sample: cross_entropy skips it, it is never 'correct'

TORN_DOWN = ("torchrun ended the job: a process of this multi-process run failed (torchrun's summary says "
             "which rank and why) or the job was cancelled. The last checkpoint is kept: continue with "
             "`python -m lora_gui train --resume {run}` (with torchrun or without, any number of processes)")
PEER_LOST = ("another process of this multi-process run stopped or stopped answering (its own error, "
             "or torchrun's summary, says which rank and why); the whole job has stopped. The last "
             "checkpoint is kept: continue with `python -m lora_gui train --resume {run}` "
             "(with torchrun or without, any number of processes)")


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_CTX = DistContext()
_RUN_DIR = ""  # for messages: the run folder of this process's job


def context() -> DistContext:
    """The process's place in the job; a world of one outside torchrun."""
    return _CTX


def env_world() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_from_env(device: str = "auto", timeout_s: float | None = None) -> DistContext:
    """Join the process group torchrun describes in the environment (no-op for one process).

    ``device`` is the configured one: CUDA (when present and not 'cpu') uses nccl, else gloo.
    ``timeout_s`` bounds every collective (default ``$LORA_GUI_DIST_TIMEOUT`` or 60 s): a rank
    that stops answering fails the others after that long instead of hanging them."""
    global _CTX
    world = env_world()
    if world <= 1:
        return _CTX
    import torch.distributed as dist
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if timeout_s is None:
        timeout_s = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    cuda = torch.cuda.is_available() and not (device == "cpu" or device == "mps")
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    _CTX = DistContext(rank=rank, world=world, local_rank=local_rank, backend=backend)
    return _CTX


def shutdown() -> None:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: str, ctx: DistContext | None = None) -> str:
    """Under torchrun each process drives its own GPU: 'cuda' / 'cuda:N' -> 'cuda:<local rank>'."""
    ctx = ctx or _CTX
    if ctx.enabled and device.startswith("cuda"):
        return f"cuda:{ctx.local_rank}"
    return device


def is_peer_failure(exc: BaseException) -> bool:
    import torch.distributed as dist
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(w in text for w in (
        "gloo", "nccl", "connection closed", "connection reset", "timed out", "broken pipe", "peer"))


def _collective(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        if is_peer_failure(exc):
            raise TrainingFailed(PEER_LOST.format(run=_RUN_DIR or "RUN_FOLDER") + f" [{type(exc).__name__}: "
                                 f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}]") from exc
        raise


def all_reduce_sum(values: list[float], device: str = "cpu") -> list[float]:
    """Element-wise sum over all ranks (float64); identity for one process. nccl reduces on the
    process's GPU, gloo on the CPU."""
    if not _CTX.enabled:
        return list(values)
    import torch.distributed as dist
    t = torch.tensor(values, dtype=torch.float64, device=device if _CTX.backend == "nccl" else "cpu")
    _collective(dist.all_reduce, t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_gather_object(obj) -> list:
    if not _CTX.enabled:
        return [obj]
    import torch.distributed as dist
    out = [None] * _CTX.world
    _collective(dist.all_gather_object, out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s value on every rank (e.g. the run folder name rank 0 picked)."""
    if not _CTX.enabled:
        return obj
    import torch.distributed as dist
    box = [obj]
    _collective(dist.broadcast_object_list, box, src=src)
    return box[0]


def barrier() -> None:
    if _CTX.enabled:
        import torch.distributed as dist
        _collective(dist.barrier)


def shard(order: list[int], rank: int, world: int, batch_size: int) -> list[tuple[list[int], int, int]]:
    """Rank ``rank``'s micro-batches of one epoch, as (indices, real samples, samples in the global batch).

    Global batch k is ``order[k*G:(k+1)*G]`` with ``G = world * batch_size``; rank r takes the r-th of
    ``world`` near-equal slices of it (exactly ``batch_size`` for a full batch). All ranks get the same
    number of micro-batches: a rank whose slice of a short last batch is empty gets one padding sample
    (the batch's first) that counts 0 ('real samples' 0)."""
    g = world * batch_size
    out = []
    for start in range(0, len(order), g):
        glob = order[start:start + g]
        lo, hi = rank * len(glob) // world, (rank + 1) * len(glob) // world
        mine = glob[lo:hi]
        out.append((mine or glob[:1], len(mine), len(glob)))
    return out


def epoch_batches(n_samples: int, start: int, world: int, batch_size: int) -> int:
    """Micro-batches per rank left in an epoch of ``n_samples`` from sample ``start`` on."""
    return math.ceil(max(0, n_samples - start) / (world * batch_size))


def remaining_steps(n_samples: int, epoch: int, samples_done: int, epochs: int, world: int,
                    batch_size: int, accum: int) -> int:
    """Optimizer steps left from a position (epoch, samples done in it) at this world size."""
    if epoch >= epochs:
        return 0
    this = math.ceil(epoch_batches(n_samples, samples_done, world, batch_size) / accum)
    per_epoch = math.ceil(max(1, epoch_batches(n_samples, 0, world, batch_size)) / accum)
    return this + (epochs - epoch - 1) * per_epoch


def resume_position(trainer, state: dict) -> None:
    """Set the trainer's position, step total and schedule from a checkpoint.

    Same world size: everything as saved (exact). Another one: the epoch, the optimizer/scheduler
    state and the samples already seen this epoch carry over; the rest of the epoch's permutation
    is taken in the new global batches (so every sample is still seen once per epoch), the total
    step count is recomputed, and the remaining learning-rate schedule is mapped onto the new
    number of steps so the rate stays continuous and still ends where it would have."""
    cfg, ctx = trainer.cfg, trainer.dist
    saved_world = int(state.get("world_size", 1))
    bs, accum = cfg.train.batch_size, cfg.train.grad_accum
    n = len(trainer.train_samples)
    sched = state.get("schedule") or {"total": trainer.total_steps, "warmup": trainer.warmup_steps, "knots": []}
    trainer.schedule = {"total": sched["total"], "warmup": sched["warmup"], "knots": [list(k) for k in sched["knots"]]}
    trainer.epoch_start = int(state.get("epoch_start", 0))
    if saved_world == ctx.world:
        trainer.total_steps = int(state.get("total_steps", trainer.total_steps))
    else:
        done = state.get("samples_in_epoch")
        if done is None:
            done = state["batch_in_epoch"] * bs * saved_world
        done = min(int(done), n)
        trainer.epoch_start, trainer.batch_in_epoch = done, 0
        left = remaining_steps(n, trainer.epoch, done, cfg.train.epochs, ctx.world, bs, accum)
        step = trainer.step
        v = virtual_step(step, trainer.schedule["knots"])
        slope = (trainer.schedule["total"] - v) / left if left else 1.0
        trainer.schedule["knots"].append([step, v, slope])
        trainer.total_steps = step + left
        trainer.folder.log(f"resumed with {ctx.world} process(es) instead of {saved_world}: epoch {trainer.epoch + 1} "
                           f"goes on from sample {done} of {n} of its order, in global batches of {ctx.world * bs} "
                           f"(were {saved_world * bs}); {left} steps left (were "
                           f"{int(state.get('total_steps', step)) - step}), the learning-rate schedule fitted to them")
    trainer.scheduler.lr_lambdas[0] = scheduled(
        cosine_with_warmup(trainer.schedule["total"], trainer.schedule["warmup"]), trainer.schedule["knots"])
    # each rank's own random numbers when it had them; a rank new to the run gets a fresh stream
    ranks = state.get("rng_ranks") or []
    if saved_world == ctx.world and len(ranks) == ctx.world:
        return ranks[ctx.rank]
    if ctx.rank == 0:
        return state["rng"]
    return None


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """Rank r > 0's seed: its own augmentation / dropout stream (rank 0 keeps the run's seed)."""
    return (seed * 1_000_003 + rank * 7919 + step * 104_729) % 2**63


class MutedRunFolder(RunFolder):
    """What ranks other than 0 see of the run folder: they read it (on a resume), never write it."""

    def create(self):
        return self

    def lock(self):  # rank 0 holds the run for the whole job
        return None

    def update_status(self, **fields) -> dict:
        return dict(self.read_status(), **fields)

    def log(self, line: str) -> None:
        pass

    def append_metrics(self, rows, sync: bool = True) -> None:
        pass

    def sync_metrics(self) -> None:
        pass

    def truncate_metrics(self, keep_step: int, keep_epoch: int) -> None:
        pass

    def save_checkpoint(self, state: dict) -> None:
        pass


def run_folder(path) -> RunFolder:
    global _RUN_DIR
    _RUN_DIR = str(path)
    return RunFolder(path) if _CTX.is_main else MutedRunFolder(path)


def on_torchrun_teardown(job) -> None:
    """torchrun stops the surviving workers with SIGTERM when one fails; rank 0 says so in
    status.json and the log before it goes (training state is in the last checkpoint)."""
    def handler(signum, frame):
        try:
            if _CTX.is_main and job.status not in FINAL_STATUSES:
                message = TORN_DOWN.format(run=job.run.path)
                job.run.log(f"[failed] torchrun ended this worker (signal {signum}): {message}")
                # final: the training thread goes on until os._exit, and its next progress update
                # would otherwise put 'running' back (seen once in a full test run)
                job.run.final_status(status="failed", message=message)
            print(f"error (rank {_CTX.rank}): stopped by torchrun (signal {signum}); another process of the "
                  "run failed or the job was cancelled", file=sys.stderr, flush=True)
        finally:
            os._exit(1)
    signal.signal(signal.SIGTERM, handler)
