"""Launch the app: ``python app.py``, ``lora-gui`` or ``lora-gui app``, with the same flags.

Flags: --host, --port, --share, --auth, --workspace, --data, --inbrowser, --keep-uploads-days.
"""
from __future__ import annotations

import argparse
import getpass
import os
import socket
import sys

from ..store.cleanup import clean
from .app import build_app, launch_kwargs

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def free_port(host: str, preferred: int) -> int:
    """The preferred port if free, else one the OS picks (Gradio refuses server_port=0)."""
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            try:
                s.bind((host, port))
                return s.getsockname()[1]
            except OSError:
                continue
    raise SystemExit(f"error: no free port on {host}")


def parse_args(argv=None, prog: str | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description="lora_gui: fine-tune vision models with LoRA in your browser.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; the next free one if taken)")
    p.add_argument("--share", action="store_true", help="make a public gradio.live link (off by default)")
    p.add_argument("--auth", metavar="USER:PASSWORD", help="require this login (asked for when --host is not loopback)")
    p.add_argument("--workspace", default="runs", help="folder for runs, uploads and exports (default ./runs)")
    p.add_argument("--data", help="open with this dataset folder/archive already loaded")
    p.add_argument("--inbrowser", action="store_true", help="open the page in the desktop's browser")
    p.add_argument("--keep-uploads-days", type=float, default=7.0, metavar="DAYS",
                   help="at start, remove uploads, unpacked archives and class-builder folders unchanged for "
                        "this many days that no run uses (default 7; 0 keeps everything)")
    return p.parse_args(argv)


def resolve_auth(args) -> tuple[str, str] | None:
    if args.auth:
        user, sep, password = args.auth.partition(":")
        if not sep or not user or not password:
            raise SystemExit("error: --auth must look like user:password")
        return user, password
    exposed = args.share or args.host not in LOOPBACK
    if not exposed:
        return None
    if sys.stdin.isatty():
        print(f"The app will be reachable from other machines ({'share link' if args.share else args.host}). "
              "Choose a login (leave the user empty to run without one).")
        user = input("user: ").strip()
        if user:
            return user, getpass.getpass("password: ")
    print("!" * 72 + "\nWARNING: the app is reachable from other machines WITHOUT a login. Anyone who can\n"
          "reach it can train on this machine and read its runs. Use --auth user:password.\n" + "!" * 72,
          file=sys.stderr)
    return None


def main(argv=None, prog: str | None = None) -> int:
    args = parse_args(argv, prog)
    auth = resolve_auth(args)
    port = free_port(args.host, args.port)
    if port != args.port:
        print(f"port {args.port} is taken; using {port}")
    removed, freed = clean(args.workspace, args.keep_uploads_days)
    if removed:
        print(f"removed {len(removed)} old upload/staging folder(s) from {args.workspace} "
              f"({freed / 2**20:.0f} MB) that no run uses; --keep-uploads-days 0 keeps them")
    demo = build_app(args.workspace, args.data)
    demo.queue(default_concurrency_limit=8)
    demo.launch(server_name=args.host, server_port=port, share=args.share, auth=auth,
                inbrowser=args.inbrowser, **launch_kwargs(args.workspace))
    return 0

