"""File bytes spread over layers: partial copy-up.

A regular file written in a layer that did not create it gets its own backing
file, but not a copy of the lower bytes: the backing file is sparse, as long
as the file, and holds only the blocks written in this layer. A hole in it
shows the bytes of the layer below (``base``), up to ``base_size`` (what the
file held of them when last truncated); beyond that, zeros. The layer below may
be partial in turn, which makes a *data chain*: the top backing file first, the
complete one last. Every write fills the file-system blocks it touches only in
part with the merged bytes first, so a block is either wholly this layer's
(data) or wholly the base's (a hole) — which ``SEEK_DATA``/``SEEK_HOLE`` tell,
with no map of our own.

That needs a backing file system whose ``SEEK_DATA`` reports holes, and its
allocation unit: :func:`probe` finds both once per store (where holes are not
reported, every copy-up is a whole copy). This module is pure: descriptors in,
bytes out, any thread.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

MAX_CHAIN = 8
"""Longest data chain a copy-up may make; a longer one copies the file whole
(reads cost one step per level of the chain)."""


def probe(directory: str) -> int:
    """The allocation unit (bytes) in which the file system under `directory`
    reports data and holes, or 0 if it does not report holes."""
    path = os.path.join(directory, ".probe-holes")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.unlink(path)
        mark = 1 << 20
        os.pwrite(fd, b"x", mark + 1)
        os.ftruncate(fd, 4 << 20)
        os.fsync(fd)
        try:
            start = os.lseek(fd, 0, os.SEEK_DATA)
            end = os.lseek(fd, start, os.SEEK_HOLE)
        except OSError:
            return 0
        if start == 0 or not start <= mark + 1 < end or end == 4 << 20:
            return 0
        unit = end - start
        if unit & (unit - 1) or unit < 512:
            return 0
        return max(unit, 4096)
    finally:
        os.close(fd)


def limits(size: int, base_sizes: Sequence[int]) -> list[int]:
    """How many bytes of each file of a data chain show: the file's size for
    the top one, then for each lower one the least of its ``base_size`` and
    what shows of the one above."""
    out = [size]
    for b in base_sizes:
        out.append(min(out[-1], b))
    return out


def read(fds: Sequence[int], shown: Sequence[int], offset: int, size: int) -> bytes:
    """Bytes [offset, offset + size) of a file whose data chain is `fds` (top
    first) with :func:`limits` `shown`; short at the end of the file."""
    end = min(offset + size, shown[0])
    if offset >= end:
        return b""
    return _read(fds, shown, 0, offset, end)


def _pread(fd: int, offset: int, end: int) -> bytes:
    parts = []
    while offset < end:
        data = os.pread(fd, end - offset, offset)
        if not data:
            parts.append(bytes(end - offset))  # a shorter file: zeros, as past a truncate
            break
        parts.append(data)
        offset += len(data)
    return b"".join(parts)


def _read(fds: Sequence[int], shown: Sequence[int], level: int, offset: int, end: int) -> bytes:
    fd = fds[level]
    if level == len(fds) - 1:
        return _pread(fd, offset, end)
    below = shown[level + 1]
    parts = []
    pos = offset
    while pos < end:
        try:
            data_at = min(os.lseek(fd, pos, os.SEEK_DATA), end)
        except OSError as e:
            if e.errno != errno.ENXIO:
                raise
            data_at = end  # nothing but hole to the end of the file
        if data_at > pos:  # a hole: the layer below, then zeros past what shows of it
            split = max(pos, min(data_at, below))
            if split > pos:
                parts.append(_read(fds, shown, level + 1, pos, split))
            if data_at > split:
                parts.append(bytes(data_at - split))
            pos = data_at
            continue
        hole_at = min(os.lseek(fd, pos, os.SEEK_HOLE), end)
        parts.append(_pread(fd, pos, hole_at))
        pos = hole_at
    return b"".join(parts)


def is_hole(fd: int, offset: int) -> bool:
    """Whether the block at `offset` holds no data of this file."""
    try:
        return os.lseek(fd, offset, os.SEEK_DATA) != offset
    except OSError as e:
        if e.errno != errno.ENXIO:
            raise
        return True


def fill_edges(fds: Sequence[int], shown: Sequence[int], unit: int, offset: int,
               end: int) -> None:
    """Before a write of [offset, end) to the top file `fds[0]`: give it the
    merged bytes of the blocks that write covers only in part and that are
    holes (from the base), so that every block is wholly data or wholly hole."""
    size = shown[0]
    for block in {offset - offset % unit, end - 1 - (end - 1) % unit}:
        covered = block >= offset and min(block + unit, size) <= end
        if block >= size or covered or not is_hole(fds[0], block):
            continue
        # Zeros too are written: they make the block data (a hole shows the base).
        os.pwrite(fds[0], read(fds, shown, block, unit), block)
