"""Who is calling and what they may read: owner ids, the single-/multi-user mode, server paths.

Single-user mode (the default: loopback host, no --auth, no --share) is one person at
their own machine: every run in the workspace is theirs. Multi-user mode (another
host, --auth, --share or --multi-user) shows each person only the runs they started.
Reading a folder by its path on the server is allowed for a loopback client of an
app that is not shared, and for anyone under a folder the operator named with
--data-root. See README.md, "Security model".
"""
from __future__ import annotations

import hashlib
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..jobs.registry import run_owner

REMOTE_PATHS_OFF = ("Reading folders on the server is turned off for remote users; upload a folder or archive "
                    "instead, or ask the operator to start the app with --data-root")


@dataclass(frozen=True)
class AccessPolicy:
    multi_user: bool = False
    shared: bool = False                       # --share: every client may be anyone on the internet
    data_roots: tuple[Path, ...] = field(default_factory=tuple)

    def sees_run(self, run_dir, owner_id: str | None) -> bool:
        """May the person ``owner_id`` see (list, test, export, resume) this run?"""
        if not self.multi_user:
            return True
        owner = run_owner(run_dir)
        return owner is not None and owner == owner_id

    def may_read_path(self, path: str, client_host: str | None) -> bool:
        """May a client at ``client_host`` have the server read ``path``?"""
        if is_loopback(client_host) and not self.shared:
            return True
        return under_any(path, self.data_roots)

    def check_path(self, path: str, client_host: str | None) -> None:
        """PermissionError with the message people see, unless ``may_read_path``."""
        if not self.may_read_path(path, client_host):
            roots = ", ".join(str(r) for r in self.data_roots)
            extra = f" (allowed here: folders under {roots})" if roots else ""
            raise PermissionError(REMOTE_PATHS_OFF + extra)


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"


def under_any(path: str, roots) -> bool:
    """Is ``path`` (after resolving links and '..') inside one of ``roots``?"""
    try:
        real = Path(os.path.realpath(os.path.expanduser(path)))
    except (OSError, ValueError):
        return False
    return any(real == root or root in real.parents for root in roots)


def owner_id(session, request) -> str:
    """The caller's owner id: the one its page reported at load (login name or browser id),
    else (an API client) the login name or its own session."""
    if session is not None and session.owner_id:
        return session.owner_id
    user = getattr(request, "username", None) if request is not None else None
    if user:
        return f"user:{user}"
    session_hash = getattr(request, "session_hash", None) if request is not None else None
    return f"session:{session_hash or 'anonymous'}"


def person_key(policy: AccessPolicy, session) -> str:
    """A file-name-safe key for the person behind a page: "" for the one user; in multi-user mode a
    hash of their owner id (the id itself stays out of files). It names whose health-check record
    (data/fixes.py) a page's datasets use, so one person's "remove from training" never changes what
    another trains on, and who saved a preset, so nobody replaces another's."""
    if not policy.multi_user:
        return ""
    who = (session.owner_id if session is not None else "") or f"page:{getattr(session, 'id', '')}"
    return "p-" + hashlib.sha256(who.encode()).hexdigest()[:20]
