"""Putting untrusted files into the workspace without harming the machine.

Archives and browser uploads come from people we don't know. Every member
path is checked before anything is written (no ``..``, no absolute paths,
no links or device files), sizes are capped both from the headers and
while bytes are actually written (headers can lie), and everything lands
in a fresh folder under the workspace or nowhere at all.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
# Below this many uncompressed bytes the compression ratio says nothing
# (a small CSV or a blank PNG compresses very well and is harmless).
RATIO_GRACE_BYTES = 1024 * 1024
_CHUNK = 1024 * 1024


@dataclass
class ArchiveLimits:
    """Caps that stop archive bombs; raise them for genuinely huge datasets."""

    max_total_bytes: int = 2 * 1024**3
    max_members: int = 50_000
    max_ratio: float = 200.0
    max_member_bytes: int = 200 * 1024**2


def is_archive_name(path: str | os.PathLike) -> bool:
    name = Path(path).name.lower()
    return name.endswith(ARCHIVE_SUFFIXES)


def archive_stem(path: str | os.PathLike) -> str:
    name = Path(path).name
    for suffix in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "dataset"


def safe_parts(name: str) -> tuple[str, ...] | None:
    """The path components of an untrusted relative path, or None if unsafe.

    Backslashes count as separators because Windows tools write them into
    zips. Empty and ``.`` parts are dropped; ``..``, absolute paths, drive
    letters and control characters make the whole path unsafe.
    """
    name = name.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return None
    if any(ord(c) < 32 for c in name):
        return None
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts or any(len(p.encode()) > 255 for p in parts):
        return None
    return parts


def _why_unsafe(name: str) -> str:
    clean = name.replace("\\", "/")
    if clean.startswith("/") or re.match(r"^[A-Za-z]:", clean):
        return "has an absolute path"
    if ".." in clean.split("/"):
        return "points outside the archive (..)"
    return "has an unsafe name"


class _Budget:
    """Running totals checked while bytes are written, not just from headers."""

    def __init__(self, archive: str, limits: ArchiveLimits, compressed):
        self.archive, self.limits, self.compressed = archive, limits, compressed
        self.total = 0
        self.members = 0

    def refuse(self, why: str, size_limit: bool = False):
        # only a size limit can be helped by a bigger limit; a link, an unsafe name or a
        # special file is refused whatever the limits are
        advice = ("If it is a genuine dataset, split it into smaller archives or raise the archive limits."
                  if size_limit else "Re-create the archive with only the image files and folders.")
        raise DataError(f"archive {self.archive} refused: {why}. {advice}")

    def member(self, declared_size: int):
        self.members += 1
        if self.members > self.limits.max_members:
            self.refuse(f"more than {self.limits.max_members} members", size_limit=True)
        if declared_size > self.limits.max_member_bytes:
            self.refuse(f"a member would unpack to {declared_size} bytes "
                        f"(limit {self.limits.max_member_bytes})", size_limit=True)
        if self.total + declared_size > self.limits.max_total_bytes:
            self.refuse(f"it would unpack to more than {self.limits.max_total_bytes} bytes", size_limit=True)

    def wrote(self, n: int, member_so_far: int):
        self.total += n
        if member_so_far > self.limits.max_member_bytes:
            self.refuse(f"a member unpacks to more than {self.limits.max_member_bytes} bytes", size_limit=True)
        if self.total > self.limits.max_total_bytes:
            self.refuse(f"it unpacks to more than {self.limits.max_total_bytes} bytes", size_limit=True)
        packed = max(1, self.compressed())
        if self.total > RATIO_GRACE_BYTES and self.total / packed > self.limits.max_ratio:
            self.refuse(f"compression ratio above {self.limits.max_ratio:g} (an archive bomb?)", size_limit=True)


def _write_member(src, target: Path, budget: _Budget, declared: int | None):
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        out = open(target, "xb")  # exclusive: a name listed twice can't overwrite
    except FileExistsError:
        budget.refuse(f"'{target.name}' is listed twice")
    except (IsADirectoryError, NotADirectoryError):
        budget.refuse(f"'{target.name}' is both a file and a folder")
    with out:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if declared is not None and written > declared:
                budget.refuse("a member is larger than its header says")
            budget.wrote(len(chunk), written)
            out.write(chunk)


def _extract_zip(path: Path, dest: Path, budget: _Budget) -> None:
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        for info in infos:
            info.filename = _member_name(info)
        # Check every header before writing anything, so a hostile archive
        # leaves no trace at all.
        if len(infos) > budget.limits.max_members:
            budget.refuse(f"more than {budget.limits.max_members} members", size_limit=True)
        declared = 0
        for info in infos:
            if safe_parts(info.filename) is None:
                budget.refuse(f"member '{info.filename}' {_why_unsafe(info.filename)}")
            # Unix zippers store the file type in the high bits; others leave
            # them 0, which means a plain file.
            ftype = stat.S_IFMT(info.external_attr >> 16)
            if ftype and ftype not in (stat.S_IFREG, stat.S_IFDIR):
                budget.refuse(f"member '{info.filename}' is a link or special file")
            if info.flag_bits & 0x1:
                budget.refuse(f"member '{info.filename}' is password-protected")
            if info.file_size > budget.limits.max_member_bytes:
                budget.refuse(f"member '{info.filename}' would unpack to {info.file_size} bytes "
                              f"(limit {budget.limits.max_member_bytes})", size_limit=True)
            if (info.file_size > RATIO_GRACE_BYTES
                    and info.file_size / max(1, info.compress_size) > budget.limits.max_ratio):
                budget.refuse(f"member '{info.filename}' has a compression ratio above "
                              f"{budget.limits.max_ratio:g} (an archive bomb?)", size_limit=True)
            declared += info.file_size
        if declared > budget.limits.max_total_bytes:
            budget.refuse(f"it would unpack to {declared} bytes (limit {budget.limits.max_total_bytes})", size_limit=True)
        for info in infos:
            parts = safe_parts(info.filename)
            if not parts:
                continue
            target = dest.joinpath(*parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            with zf.open(info) as src:
                _write_member(src, target, budget, info.file_size)


def _member_name(info: zipfile.ZipInfo) -> str:
    """The member's name as its maker meant it. Without the UTF-8 flag Python reads names as cp437
    (the zip standard's old default), but Info-ZIP's `zip` on Linux and macOS's Archive Utility
    write UTF-8 without setting the flag: "chats é" would come out as "chats ├⌐". Like `unzip`
    and 7-Zip, take the bytes as UTF-8 when they are valid UTF-8, else keep cp437."""
    if info.flag_bits & 0x800:
        return info.filename
    try:
        return info.filename.encode("cp437").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return info.filename


class _CountingReader:
    """File wrapper that counts compressed bytes consumed, for the ratio check."""

    def __init__(self, f):
        self.f, self.count = f, 0

    def read(self, n=-1):
        data = self.f.read(n)
        self.count += len(data)
        return data


def _extract_tar(dest: Path, budget: _Budget, reader: _CountingReader) -> None:
    # Stream mode ("r|*") reads the archive once, front to back: members are
    # checked and written as they come, so a bomb stops at the first limit
    # instead of after decompressing everything just to list it.
    with tarfile.open(fileobj=reader, mode="r|*") as tf:
        for member in tf:
            if safe_parts(member.name) is None:
                budget.refuse(f"member '{member.name}' {_why_unsafe(member.name)}")
            if member.issym() or member.islnk():
                budget.refuse(f"member '{member.name}' is a link (links could point outside the workspace)")
            if not (member.isfile() or member.isdir()):
                budget.refuse(f"member '{member.name}' is a device or special file")
            budget.member(member.size if member.isfile() else 0)  # folders count as members too
            parts = safe_parts(member.name)
            if not parts:
                continue
            target = dest.joinpath(*parts)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            src = tf.extractfile(member)
            _write_member(src, target, budget, member.size)


def _sha1_file(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def extract_archive(path: str | os.PathLike, workspace: str | os.PathLike,
                    limits: ArchiveLimits | None = None) -> Path:
    """Safely unpack a zip/tar(.gz/.bz2/.xz) under ``<workspace>/datasets/``.

    Returns the folder. The same archive (by content) is unpacked once and
    reused, because the UI previews a dataset and then trains on it. On any
    refusal the partial folder is removed and DataError says why.
    """
    path = Path(path)
    limits = limits or ArchiveLimits()
    if not path.is_file():  # never a FIFO or a device: hashing one would block or never end
        raise DataError(f"{path.name} is not a regular file; give a .zip or .tar archive")
    base = Path(workspace) / "datasets"
    base.mkdir(parents=True, exist_ok=True)
    final = base / f"{archive_stem(path)}-{_sha1_file(path)[:12]}"
    if final.is_dir():
        return final
    # unpack into a hidden staging folder and rename at the end, so a
    # half-written folder is never mistaken for a finished one
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=base))
    try:
        with open(path, "rb") as raw:
            if zipfile.is_zipfile(raw):
                budget = _Budget(path.name, limits, lambda: path.stat().st_size)
                _extract_zip(path, staging, budget)
            else:
                raw.seek(0)
                reader = _CountingReader(raw)
                budget = _Budget(path.name, limits, lambda: reader.count)
                _extract_tar(staging, budget, reader)
        try:
            staging.rename(final)
        except OSError:  # another load of the same archive finished first
            shutil.rmtree(staging, ignore_errors=True)
        return final
    except DataError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(f"could not unpack {path.name}: the archive is damaged, truncated or not a "
                        f"zip/tar file ({exc}). Re-create it and try again.") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def place_uploads(files: list[str], relative_paths: list[str], dest: Path,
                  limits: ArchiveLimits | None = None) -> list[tuple[str, str]]:
    """Copy browser-dropped ``files`` to ``dest/<relative path>``; returns (path, reason) not placed.

    Gradio keeps only base names, and stores byte-identical files once, so
    when the lists don't pair up one to one, each relative path takes a file
    with the same base name (several paths may share one stored file: they
    had identical bytes, and the duplicate check reports them as such).
    The relative paths come from the client, so what they would copy is held to an archive's
    limits before anything is written: one stored file named by 100,000 paths would otherwise
    be copied 100,000 times.
    """
    limits = limits or ArchiveLimits()
    files = [str(f) for f in files]
    rels = [str(r) for r in (relative_paths or [])]
    base = lambda p: p.replace("\\", "/").rsplit("/", 1)[-1]  # noqa: E731
    not_placed: list[tuple[str, str]] = []
    if not rels:  # no folder info at all: keep them flat (a CSV among them still labels them)
        pairs = [(base(f), f) for f in files]
    elif len(rels) == len(files) and all(base(f) == base(r) for f, r in zip(files, rels)):
        pairs = list(zip(rels, files))
    else:
        by_name: dict[str, str] = {}
        for f in files:
            by_name.setdefault(base(f), f)
        pairs = [(r, by_name[base(r)]) for r in rels if base(r) in by_name]
        not_placed += [(r, "not received from the browser") for r in rels if base(r) not in by_name]
        used = {f for _, f in pairs}
        not_placed += [(base(f), "could not be placed: its folder is unknown")
                       for f in files if f not in used]
    if len(pairs) > limits.max_members:
        raise DataError(f"the dropped folder lists {len(pairs):,} files, more than the {limits.max_members:,} "
                        "this app takes in one go; drop a smaller folder, or split it")
    total = sum(_size(src) for _, src in pairs)
    if total > limits.max_total_bytes:
        raise DataError(f"the dropped folder holds {_amount(total)}, more than the "
                        f"{_amount(limits.max_total_bytes)} this app takes in one go; drop a smaller "
                        "folder, or split it")
    taken = set()
    for rel, src in pairs:
        parts = safe_parts(rel)
        if not parts:
            not_placed.append((rel, "unsafe path"))
            continue
        if parts in taken:
            not_placed.append((rel, "listed twice"))
            continue
        taken.add(parts)
        target = dest.joinpath(*parts)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
        except OSError as exc:
            not_placed.append((rel, f"unreadable ({exc.strerror or exc})"))
    return not_placed


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:   # reported as unreadable when it is copied
        return 0


def _amount(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"
