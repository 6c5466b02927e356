"""The demo's "Retrain": a short new run that continues from a run's adapter, on the run's own
split plus the images fixed on the spot (``data.corrections``), with the same configuration."""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import RunConfig
from ..data.corrections import fixed_samples
from ..data.scan import Dataset, Sample, ValidationReport
from ..errors import DamagedRun, DataError
from ..store.records import RunRecord, SplitRecord
from ..store.run_folder import RunFolder, new_run_id
from .device_queue import DEVICE_QUEUE, DeviceQueue

if TYPE_CHECKING:
    from .training_job import TrainingJob

RETRAIN_EPOCHS = 2


def _run_parts(run: RunFolder) -> tuple[RunConfig, list[str], list[Sample], list[Sample]]:
    try:
        record, split = RunRecord.read(run.path), SplitRecord.read(run.path)
    except DamagedRun as exc:
        raise DataError(f"{run.path.name} cannot be retrained: {exc}") from None
    train = [Sample(str(p), int(label)) for p, label in split.train]
    val = [Sample(str(p), int(label)) for p, label in split.val]
    return record.config, list(record.classes), train, val


def retrain_with_fixes(run_dir: str | os.PathLike, workspace: str | os.PathLike, epochs: int = RETRAIN_EPOCHS,
                       queue: DeviceQueue = DEVICE_QUEUE, interactive: bool = True) -> TrainingJob:
    """Start (and return) a job training a new run ``fix-...`` from ``run_dir``'s best adapter."""
    # the training stack (torch, timm) loads here, not when the app's Demo tab is laid out
    from ..store.adapter_file import ADAPTER_FILE
    from ..training.continue_from import ContinueTrainer
    from .training_job import TrainingJob
    run = RunFolder(run_dir)
    adapter = run.best_dir / ADAPTER_FILE
    if not adapter.is_file():
        raise DataError(f"{run.path.name} has no saved adapter yet; wait for its first model (seconds after "
                        "set-up, or the end of its first epoch)")
    config, classes, train, val = _run_parts(run)
    fixes = fixed_samples(workspace, run.path.name, classes)
    if not fixes:
        raise DataError("no fixes yet: use \"That's wrong, it is …\" on a wrong answer first")
    known = {s.path for s in train} | {s.path for s in val}
    train += [s for s in fixes if s.path not in known]
    raw = config.to_dict()
    raw["train"]["epochs"] = int(epochs)
    config = RunConfig.from_dict(raw, where="retrain")
    dataset = Dataset(classes, train + val, ValidationReport(), str(Path(workspace) / "fixes"),
                      given_split={"train": train, "val": val})
    job = TrainingJob(config, workspace=str(workspace), run_dir=str(Path(workspace) / new_run_id("fix")),
                      dataset=dataset, interactive=interactive, queue=queue)
    job.trainer_factory = functools.partial(ContinueTrainer, init_adapter=adapter)
    job.continued_from = run.path.name
    return job.start()
