"""Reading the files config depends on (the config itself, ``file:`` and ``credential:`` secrets): regular files
only, opened without blocking and read up to a bound. A FIFO, a device or a directory at the path is refused at
once instead of wedging the reader (and every reload after it)."""

from __future__ import annotations

import os
import stat

CONFIG_MAX_BYTES = 16 * 1024 * 1024
SECRET_MAX_BYTES = 64 * 1024


class UnreadableFile(Exception):
    """The path is not a regular file, is too big, or cannot be opened; the message says which."""


def read_regular(path: str, limit: int) -> bytes:
    if "\x00" in path:  # os.open raises ValueError for it
        raise UnreadableFile("the path holds a NUL character (\\x00)")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise UnreadableFile(exc.strerror or str(exc)) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnreadableFile(f"not a regular file (a {_kind(mode)})")
        chunks, size = [], 0
        while chunk := os.read(fd, 65536):
            size += len(chunk)
            if size > limit:
                raise UnreadableFile(f"larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise UnreadableFile(exc.strerror or str(exc)) from None
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISDIR, "directory"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"
