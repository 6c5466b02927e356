"""Launch the app: ``python app.py``, ``lora-gui`` or ``lora-gui app``, with the same flags.

Flags: --host, --port, --share, --auth, --multi-user, --workspace, --data, --data-root, --inbrowser,
--keep-uploads-days. Bad flags get one line saying what is wrong and exit code 2. Once the port is
bound it prints one line, "Open http://HOST:PORT in your browser", with the port it really got.
Gradio is imported only after GRADIO_TEMP_DIR points into the workspace, so
uploads and the files the app hands out never pile up outside it.
"""
from __future__ import annotations

import argparse
import getpass
import os
import socket
import sys
import tempfile
from pathlib import Path

from .. import malloc_tuning
from ..errors import EXIT_BAD_INPUT
from ..store.cleanup import clean, clear_gradio_cache, gradio_cache_dir
from .access import AccessPolicy, is_loopback

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

LOOPBACK = ("127.0.0.1", "localhost", "::1")
CONCURRENCY = 8   # events of one kind handled at once (see main)


class BadFlag(SystemExit):
    def __init__(self, message: str):
        print(f"error: {message}", file=sys.stderr)
        super().__init__(EXIT_BAD_INPUT)


class _Parser(argparse.ArgumentParser):
    def error(self, message):   # one line, not the usage block
        raise BadFlag(f"{message} (see --help)")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--port must be a whole number from 1 to 65535, not '{text}'") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"--port must be from 1 to 65535, not {port}")
    return port


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--keep-uploads-days must be a number of days, not '{text}'") from None
    if not days >= 0 or days == float("inf"):
        raise argparse.ArgumentTypeError(f"--keep-uploads-days must be 0 or more (0 keeps everything), not {text}")
    return days


def free_port(host: str, preferred: int) -> int:
    """The preferred port if free, else the next of the ten after it (an address a person can guess
    and type again), else one the OS picks (Gradio refuses server_port=0)."""
    for port in (*range(preferred, min(preferred + 11, 65536)), 0):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            if os.name == "posix":
                # as the web server binds (uvicorn sets it too): the connections of an app that just
                # stopped linger in TIME_WAIT for a minute, and without it a restarted app moved to
                # the next port. A port someone listens on still refuses. (Not on Windows, where
                # SO_REUSEADDR would let it share a port in use.)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
                return s.getsockname()[1]
            except OSError:
                continue
    raise BadFlag(f"no free port on {host}")


def parse_args(argv=None, prog: str | None = None) -> argparse.Namespace:
    p = _Parser(prog=prog, description="lora_gui: fine-tune vision models with LoRA in your browser.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=7860, help="port (default 7860; the next free one if taken)")
    p.add_argument("--share", action="store_true", help="make a public gradio.live link (off by default)")
    p.add_argument("--auth", metavar="USER:PASSWORD", help="require this login (asked for when --host is not loopback)")
    p.add_argument("--multi-user", action="store_true",
                   help="each person sees only their own runs (on by itself with --auth, --share or a non-loopback host)")
    p.add_argument("--workspace", default="runs", help="folder for runs, uploads and exports (default ./runs)")
    p.add_argument("--data", help="open with this dataset folder/archive already loaded")
    p.add_argument("--data-root", action="append", default=[], metavar="DIR",
                   help="let every user load datasets by path from under DIR (repeatable); without it only "
                        "someone at this machine may type paths")
    p.add_argument("--inbrowser", action="store_true", help="open the page in the desktop's browser")
    p.add_argument("--keep-uploads-days", type=_days, default=7.0, metavar="DAYS",
                   help="at start, remove uploads, unpacked archives and class-builder folders unchanged for "
                        "this many days that no run uses (default 7; 0 keeps everything)")
    return p.parse_args(argv)


def check_workspace(path: str) -> Path:
    """The workspace folder, created if needed and proven writable; BadFlag otherwise."""
    ws = Path(path).expanduser()
    if ws.exists() and not ws.is_dir():
        raise BadFlag(f"--workspace {path} is a file, not a folder; give a folder for runs and uploads")
    try:
        ws.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=ws, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise BadFlag(f"--workspace {path} cannot be written ({exc.strerror or exc}); "
                      "choose a folder you can write to") from None
    return ws.resolve()


def check_data_roots(paths: list[str]) -> tuple[Path, ...]:
    roots = []
    for path in paths:
        root = Path(os.path.realpath(os.path.expanduser(path)))
        if not root.is_dir():
            raise BadFlag(f"--data-root {path} is not a folder")
        roots.append(root)
    return tuple(roots)


def resolve_auth(args) -> tuple[str, str] | None:
    if args.auth:
        user, sep, password = args.auth.partition(":")
        if not sep or not user or not password:
            raise BadFlag("--auth must look like user:password")
        return user, password
    exposed = args.share or not is_loopback(args.host) and args.host not in LOOPBACK
    if not exposed:
        return None
    if sys.stdin.isatty():
        print(f"The app will be reachable from other machines ({'share link' if args.share else args.host}). "
              "Choose a login (leave the user empty to run without one).")
        user = input("user: ").strip()
        if user:
            return user, getpass.getpass("password: ")
    print("!" * 72 + "\nWARNING: the app is reachable from other machines WITHOUT a login. Anyone who can\n"
          "reach it can train on this machine. Each browser sees only its own runs (multi-user mode).\n"
          "Use --auth user:password.\n" + "!" * 72, file=sys.stderr)
    return None


def policy_for(args, auth) -> AccessPolicy:
    multi = bool(args.multi_user or args.share or auth or not (is_loopback(args.host) or args.host in LOOPBACK))
    return AccessPolicy(multi_user=multi, shared=bool(args.share), data_roots=check_data_roots(args.data_root))


def served_app(workspace: Path, data: str | None, policy: AccessPolicy):
    """The app's Blocks as ``main`` serves them (GRADIO_TEMP_DIR must already point into the workspace)."""
    # Up to CONCURRENCY events of one kind at once (Gradio's default is 1: one person's slow prediction
    # would make everyone wait). Gradio reads this when the Blocks are made; calling demo.queue(...)
    # afterwards instead rebuilds its web app, ~0.2 s of the page's start. A value the person set is kept.
    if not os.environ.get("GRADIO_DEFAULT_CONCURRENCY_LIMIT"):
        os.environ["GRADIO_DEFAULT_CONCURRENCY_LIMIT"] = str(CONCURRENCY)
    from .app import build_app
    return build_app(workspace, data, policy)


def main(argv=None, prog: str | None = None) -> int:
    malloc_tuning.tune()  # first, before gradio starts its threads (see malloc_tuning)
    args = parse_args(argv, prog)
    workspace = check_workspace(args.workspace)
    auth = resolve_auth(args)
    policy = policy_for(args, auth)
    os.environ["GRADIO_TEMP_DIR"] = str(gradio_cache_dir(workspace))
    clear_gradio_cache(workspace)
    port = free_port(args.host, args.port)
    if port != args.port:
        print(f"port {args.port} is taken; using {port}")
    removed, freed = clean(workspace, args.keep_uploads_days)
    if removed:
        print(f"removed {len(removed)} old upload/staging folder(s) from {workspace} "
              f"({freed / 2**20:.0f} MB) that no run uses; --keep-uploads-days 0 keeps them")
    print(f"{'multi-user' if policy.multi_user else 'single-user'} mode; workspace {workspace}")
    from . import warmup
    from .app import launch_kwargs   # gradio reads GRADIO_TEMP_DIR when imported
    from .login_guard import LoginGuard
    demo = served_app(workspace, args.data, policy)   # laid out without torch or timm: the page is up in seconds
    demo.launch(server_name=args.host, server_port=port, share=args.share, auth=LoginGuard(*auth) if auth else None,
                inbrowser=args.inbrowser, prevent_thread_lock=True, quiet=True, **launch_kwargs(workspace))
    # the one line that says where the app is: the port actually bound (the next free one if --port was taken)
    print(f"Open {demo.local_url.rstrip('/')} in your browser", flush=True)
    if demo.share_url:
        print(f"Public link (anyone with it can use the app): {demo.share_url}", flush=True)
    warmup.start(workspace)   # torch, timm and the training stack load while the person looks at the page
    demo.block_thread()
    return 0
