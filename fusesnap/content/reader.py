"""Reading a committed blob: the offset and size rules of Read (spec §3.3).

Pure file I/O, run in the caller's thread; the blob's record (its size) comes
from the store first.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from fusesnap.content import wire
from fusesnap.errors import NotFound, OutOfRange

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


def messages(path: Path, offset: int, length: int) -> Iterator[bytes]:
    """The encoded ReadContentResponses (see :mod:`fusesnap.content.wire`) of a
    Read of (`offset`, `length`) (see :func:`span`) of the committed blob at
    `path`, in order, at most :data:`CHUNK` bytes of data each.

    The blob's size is that of its file: a blob file exists exactly while the
    blob is committed (the commit hard-links it into place and a Delete unlinks
    it), so a Read needs no metadata lookup. NotFound if the file is gone
    before it is opened (a Delete won the race); once open, it is read to the
    end. OutOfRange (before the first chunk) for an offset past the end."""
    name = f"{path.parent.name}:{path.name}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"content {name}") from None
    try:
        start, end = span(os.fstat(fd).st_size, offset, length)
        os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_SEQUENTIAL)
        for pos in range(start, end, CHUNK):
            yield wire.read_message(fd, pos, min(CHUNK, end - pos), name)
    finally:
        os.close(fd)
