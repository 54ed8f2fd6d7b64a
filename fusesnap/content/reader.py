"""Reading a committed blob: the offset and size rules of Read (spec §3.3).

Pure file I/O, run in the caller's thread; the blob's record (its size) comes
from the store first.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from fusesnap.errors import DataLoss, NotFound, OutOfRange

CHUNK = 1 << 20
"""Bytes per chunk, as containerd's reference sends them."""


def span(size: int, offset: int, length: int) -> tuple[int, int]:
    """The byte range [start, end) a Read of (`offset`, `length`) covers in a blob
    of `size` bytes: ``offset < 0`` reads from 0, ``length <= 0`` or a length
    beyond the end reads to the end; OutOfRange when `offset` is past the end
    (``offset == size`` is an empty read)."""
    start = max(offset, 0)
    if start > size:
        raise OutOfRange(f"read past object length {size} bytes")
    end = size if length <= 0 or length > size - start else start + length
    return start, end


def chunks(path: Path, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(absolute offset, data) of [start, end) of the file at `path`, in order, at
    most :data:`CHUNK` bytes each. NotFound if the file is gone before it is
    opened (a Delete won the race); once open, it is read to the end. DataLoss
    if the file is shorter than `end`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"content {path.parent.name}:{path.name}") from None
    try:
        os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_SEQUENTIAL)
        pos = start
        while pos < end:
            data = os.pread(fd, min(CHUNK, end - pos), pos)
            if not data:
                raise DataLoss(f"content {path.parent.name}:{path.name} ends at {pos} bytes, "
                               f"expected {end}")
            yield pos, data
            pos += len(data)
    finally:
        os.close(fd)
