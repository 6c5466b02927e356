"""Starting a local multi-process run: ``torchrun --standalone --nproc_per_node=N -m lora_gui train``."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..store.run_folder import RunFolder


def torchrun_command(run_dir, nproc: int, config_json: str, extra: list[str] | None = None) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={int(nproc)}",
            "-m", "lora_gui", "train", "--config-json", config_json, "--out", str(run_dir), *(extra or [])]


def launch_torchrun(config, run_dir, nproc: int, *, extra: list[str] | None = None,
                    env: dict | None = None) -> subprocess.Popen:
    """Start ``torchrun --standalone --nproc_per_node=N -m lora_gui train --config-json ... --out RUN``.

    Returns the process; its output goes to ``<run_dir>/torchrun.log``. Rank 0 writes the run
    folder as usual (status.json, metrics.csv, ...), so a viewer follows it from there."""
    run_dir = Path(run_dir)
    if RunFolder(run_dir).exists():
        raise FileExistsError(f"{run_dir} already holds a run; resume it, or train into a new folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = torchrun_command(run_dir, nproc, config.to_json(), extra)
    root = str(Path(__file__).resolve().parents[2])
    e = dict(os.environ if env is None else env)
    e["PYTHONPATH"] = root + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e.setdefault("PYTHONFAULTHANDLER", "1")  # a process that crashes natively leaves its Python stacks here
    log = open(run_dir / "torchrun.log", "ab")
    try:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=e, cwd=root,
                                start_new_session=True)
    finally:
        log.close()
