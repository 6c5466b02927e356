"""``python -m lora_gui train``: flags derived from the config, a progress bar, a summary table."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

from ..config import DataConfig, LoraConfig, ModelConfig, TrainConfig, options
from ..errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK


def _fmt_time(seconds) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def progress_line(snap, width: int = 24) -> str:
    if not snap.total_steps:  # still setting up (data, model, caches): say what it is doing
        return f"{snap.status}: {snap.message}"
    filled = int(width * snap.progress)
    loss = snap.step_rows[-1]["loss"] if snap.step_rows else None
    loss_txt = f"loss {loss:.4f}" if loss is not None else "loss -"
    return (f"epoch {max(1, snap.epoch)}/{snap.epochs} [{'#' * filled}{'.' * (width - filled)}] "
            f"step {snap.step}/{snap.total_steps} {loss_txt} ETA {_fmt_time(snap.eta_s)}")


def summary_table(epoch_rows: list[dict]) -> str:
    head = f"{'epoch':>5} {'train loss':>10} {'train acc':>9} {'val loss':>9} {'val acc':>8}"
    lines = [head, "-" * len(head)]
    for r in epoch_rows:
        def f(v, pct=False):
            return "-" if v is None else (f"{v:.1%}" if pct else f"{v:.4f}")
        lines.append(f"{r['epoch']:>5} {f(r['train_loss']):>10} {f(r['train_acc'], True):>9} "
                     f"{f(r['val_loss']):>9} {f(r['val_acc'], True):>8}")
    return "\n".join(lines)


SECTIONS = (("model", ModelConfig), ("lora", LoraConfig), ("data", DataConfig), ("train", TrainConfig))
_TYPES = {"int": int, "float": float, "str": str}


def config_flags() -> list[tuple[str, str, str, dataclasses.Field]]:
    """(argparse dest, config section, key, field) for every config field that declares a CLI flag;
    every one given on the command line overrides the preset."""
    out = []
    for section, cls in SECTIONS:
        for key, f in options(cls):
            if f.metadata.get("flag"):
                out.append((f.metadata["flag"].lstrip("-").replace("-", "_"), section, key, f))
    return out


CONFIG_FLAGS = [(dest, section, key) for dest, section, key, _ in config_flags()]


def field_help(cls, key: str) -> str:
    return next(f.metadata["help"] for name, f in options(cls) if name == key)


def add_config_arguments(parser) -> None:
    """One option per flagged config field: type, choices and help come from the dataclass."""
    for _, _, key, f in config_flags():
        kind = _TYPES[str(f.type).split("|")[0].strip()]
        default = "the model's own" if f.default is None else f.default
        if key == "alpha":
            default = "2 x rank"
        parser.add_argument(f.metadata["flag"], type=kind, choices=f.metadata.get("choices"),
                            help=f"{f.metadata['help']} (default {default})")


def build_config(args):
    """Preset (if any) first, then each flag given on the command line overrides it."""
    from ..backbones.weights import BUNDLED_MODEL
    from ..config import RunConfig, load_preset
    from ..data.bundled import builtin_preset, builtin_presets_dir, source_path
    from ..errors import ConfigError
    preset = args.preset
    if preset and not Path(preset).exists():
        # a built-in preset by name (`--preset quick-cpu-demo`): after `pip install` the presets/
        # folder is inside the package, not beside the user
        preset = builtin_preset(preset)
        if preset is None:
            names = ", ".join(sorted(p.stem for p in builtin_presets_dir().glob("*.json")))
            raise ConfigError(f"preset {args.preset} does not exist: give a preset .json file or a built-in "
                              f"preset's name ({names})")
    cfg = (RunConfig.from_dict(_read_config_json(args.config_json), where="--config-json") if args.config_json
           else load_preset(preset)[0] if preset else RunConfig())
    d = cfg.to_dict()
    if args.data:
        d["data"]["source"] = str(source_path(args.data).resolve())   # `--data example`: the built-in one
    if args.model:
        if not args.weights and args.model != d["model"]["name"]:
            # another model than the preset's: its weights come from where that model's are
            d["model"]["weights"] = "bundled" if args.model == BUNDLED_MODEL else "hub"
            d["model"]["weights_file"] = None
        d["model"]["name"] = args.model
    if args.weights:
        if args.weights in ("bundled", "hub", "random"):
            d["model"]["weights"], d["model"]["weights_file"] = args.weights, None
        else:
            d["model"]["weights"], d["model"]["weights_file"] = "file", str(Path(args.weights).resolve())
    for flag, section, key in CONFIG_FLAGS:
        value = getattr(args, flag)
        if value is not None:
            d[section][key] = value
    if args.rank is not None and args.alpha is None and not args.preset:
        d["lora"]["alpha"] = float(2 * args.rank)  # the usual alpha = 2 x rank
    return RunConfig.from_dict(d)


def _read_config_json(value: str) -> dict:
    """--config-json: a RunConfig as JSON text, or the path of a file holding it."""
    from ..errors import ConfigError
    try:
        text = value if value.lstrip().startswith("{") else Path(value).read_text()
        return json.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"--config-json: no such file {value}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--config-json is not valid JSON: {exc}") from None


def _requested_device(args) -> str:
    """The device the run will ask for, to pick the process group's backend before anything else."""
    try:
        if args.resume:
            from ..store.run_folder import RunFolder
            return RunFolder(args.resume).record().config.train.device
        return build_config(args).train.device
    except Exception:
        return args.device or "auto"  # the error is reported properly further on


def bad_input(message) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _json_safe(value):
    """JSON without NaN/Infinity (not valid JSON): non-finite numbers become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def cmd_train(args) -> int:
    from ..training import distributed
    # [ddp] under torchrun (WORLD_SIZE > 1) join the process group first; otherwise nothing happens
    ctx = distributed.init_from_env(_requested_device(args), args.dist_timeout)
    try:
        code = _train(args, ctx)
    finally:
        distributed.shutdown()
    if ctx.enabled:
        # [ddp] Everything is written (the job's thread has ended, files are closed and synced)
        # and the process group is gone. Leave without the interpreter's shutdown: in about one
        # run in ten a rank aborted there ("terminate called without an active exception",
        # SIGABRT in C++ destructors of torch.distributed/gloo state), which made torchrun
        # report a finished run as failed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _make_job(args, ctx, quiet: bool):
    """The job the flags ask for (a new run or a resumed one), or an exit code when they are wrong."""
    from ..errors import TrainingFailed, user_errors
    from ..jobs.training_job import TrainingJob, preflight
    from ..store.run_folder import RunFolder, new_run_id
    from ..training import distributed
    try:
        if args.resume:
            run = RunFolder(args.resume)
            if not run.exists():
                return bad_input(f"{args.resume} is not a run folder (no config.json): nothing to resume")
            given = [f"--{flag.replace('_', '-')}" for flag, _, _ in CONFIG_FLAGS if getattr(args, flag) is not None]
            given += [f"--{f.replace('_', '-')}" for f in ("data", "model", "weights", "preset", "config_json", "out")
                      if getattr(args, f)]
            if given and not quiet:
                print(f"note: --resume continues with the run's saved config; ignoring {', '.join(given)}",
                      file=sys.stderr)
            return TrainingJob.resume_run(args.resume)
        cfg = build_config(args)
        if not cfg.data.source:
            return bad_input("--data is required: a folder of class folders, an archive or a CSV")
        if args.out and ctx.is_main and RunFolder(args.out).exists():
            return bad_input(f"{args.out} already holds a run; continue it with --resume {args.out}, "
                             "or give --out a new folder")
        workspace = Path(args.out).parent if args.out else Path(args.workspace)
        run_dir = args.out
        if ctx.enabled:  # [ddp] one folder for all ranks: rank 0's choice
            run_dir = distributed.broadcast_object(args.out or str(workspace / new_run_id()))
        dataset = preflight(cfg, str(workspace))
        if not args.json and not quiet:
            print(dataset.report.summary(), file=sys.stderr)
        return TrainingJob(cfg, workspace=str(workspace), run_dir=run_dir, dataset=dataset)
    except (*user_errors(), ValueError, FileNotFoundError, FileExistsError) as exc:
        return bad_input(exc)
    except TrainingFailed as exc:  # [ddp] another rank failed before training began
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _follow(job, args, ctx, quiet: bool, tty: bool) -> None:
    """Show progress until the job ends; Ctrl-C stops it cleanly (the adapter so far is kept)."""
    last_line, last_print, last_status = "", 0.0, ""
    try:
        while not job.wait(0.25 if tty else 0.5):
            if args.json or quiet:
                continue
            snap = job.snapshot(last_steps=1)
            line = progress_line(snap) if snap.status == "running" else f"{snap.status}: {snap.message}"
            now = time.time()
            # a terminal gets a live bar; a log file a line per status change and every few seconds
            due = line != last_line if tty else (snap.status != last_status or now - last_print >= 5.0)
            if due:
                print(("\r\033[K" if tty else "") + line, end="" if tty else "\n", file=sys.stderr, flush=True)
                last_line, last_print, last_status = line, now, snap.status
    except KeyboardInterrupt:
        if ctx.enabled:  # [ddp] torchrun passes Ctrl-C on again; one stop (at the same step on all ranks) is enough
            import signal
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        if not quiet:
            print("\nstopping (the adapter so far is kept) ...", file=sys.stderr)
        job.stop()
        job.wait()


def _exit_code(job, snap) -> int:
    if snap.status != "failed":
        return EXIT_OK
    return EXIT_BAD_INPUT if job.failure_kind == "input" else EXIT_FAILED


def _report(job, args, tty: bool) -> int:
    """The run's summary (a table, or JSON with --json) and the exit code."""
    snap = job.snapshot()
    if not args.json and snap.total_steps:
        # the bar as training left it (a log may not have had a line since the last few steps)
        print(("\r\033[K" if tty else "") + progress_line(snap), file=sys.stderr, flush=True)
    if args.json:
        final = snap.epoch_rows[-1] if snap.epoch_rows else {}
        status = job.run.read_status()
        print(json.dumps(_json_safe({
            "status": snap.status, "message": snap.message, "run_dir": snap.run_dir,
            "steps": snap.step, "total_steps": snap.total_steps, "epochs": snap.epoch_rows, "final": final,
            "best_val_acc": status.get("best_val_acc"), "best_epoch": status.get("best_epoch")}),
            indent=2, allow_nan=False))
    else:
        if snap.epoch_rows:
            print(summary_table(snap.epoch_rows))
        print(f"{snap.status}: {snap.message}\nrun folder: {snap.run_dir}")
        if snap.status == "failed":
            print(f"error: {snap.message}", file=sys.stderr)
    return _exit_code(job, snap)


def _train(args, ctx) -> int:
    from ..training import distributed
    quiet = not ctx.is_main  # [ddp] ranks other than 0 print only their own errors
    job = _make_job(args, ctx, quiet)
    if isinstance(job, int):
        return job
    if ctx.enabled:  # [ddp] when torchrun tears the job down, rank 0 says so in status.json
        distributed.on_torchrun_teardown(job)
    job.start()
    tty = sys.stderr.isatty()
    _follow(job, args, ctx, quiet, tty)
    if quiet:
        snap = job.snapshot()
        if snap.status == "failed":
            print(f"error (rank {ctx.rank}): {snap.message}", file=sys.stderr)
        return _exit_code(job, snap)
    return _report(job, args, tty)
