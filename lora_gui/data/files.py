"""Reading a user's file safely: only regular files, bounded in size, never blocking.

Everything that reads a file the user pointed at (an image to validate or decode, a CSV
list of images) goes through ``read_regular``, so a FIFO, a device or a huge file is
refused with a sentence instead of hanging or filling memory.
"""
from __future__ import annotations

import os
import stat

from ..errors import DataError

# Validation reads each file whole (to hash it); bigger files aren't photos.
MAX_FILE_BYTES = 256 * 1024**2

_FILE_TYPES = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
               (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "folder"))


def file_type(mode: int) -> str:
    """What a non-regular file is, in words ('FIFO', 'character device', ...)."""
    return next((name for test, name in _FILE_TYPES if test(mode)), "special file")


def read_regular(path: str | os.PathLike, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, else DataError saying why.

    Opened non-blocking and checked on the open descriptor, so a FIFO (which would block
    the read forever) or a device such as /dev/zero (which never ends) is refused at once,
    even if a regular file was swapped for one after a scan looked at it.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (was it moved or deleted?)") from None
    except OSError as exc:
        raise DataError(f"{path}: unreadable ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"{path}: not a regular file ({file_type(st.st_mode)})")
        if st.st_size > limit:
            raise DataError(f"{path}: file too large ({st.st_size // 1024**2} MB; the limit is "
                            f"{limit // 1024**2} MB)")
        chunks, total = [], 0
        while chunk := os.read(fd, min(1 << 20, limit + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:  # grew while being read
                raise DataError(f"{path}: file too large (more than {limit // 1024**2} MB)")
        return b"".join(chunks)
    except OSError as exc:
        raise DataError(f"{path}: unreadable ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
