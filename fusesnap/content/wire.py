"""ReadContentResponse on the wire, without protobuf objects in between.

A Read moves the blob's bytes in messages of up to 1 MiB. Going through
protobuf costs three copies of every chunk on each side (into the message,
into its encoding, out of the encoding), and those copies were a quarter of
the daemon's CPU time for a 1 GiB Read (perf). The daemon instead reads each
chunk from the blob straight into the bytes object that gRPC sends
(:func:`read_message`), and clients decode a response into a view of the
bytes gRPC received (:func:`decode_read_response`).

The encoding is the message's (spec §3.3): field 1 ``offset`` (int64,
varint, omitted when 0 as proto3 does), field 2 ``data`` (bytes).
"""

from __future__ import annotations

import ctypes
import errno
import os

from fusesnap.errors import DataLoss

_OFFSET_TAG = b"\x08"  # field 1, varint
_DATA_TAG = b"\x12"  # field 2, length-delimited


def varint(value: int) -> bytes:
    """`value` (>= 0, or a negative int64 as its two's complement) as a base-128 varint."""
    value &= (1 << 64) - 1
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def header(offset: int, length: int) -> bytes:
    """The encoding of a ReadContentResponse up to its data's first byte."""
    head = _OFFSET_TAG + varint(offset) if offset else b""
    return head + _DATA_TAG + varint(length)


# A new bytes object is filled in place before anyone else sees it, as
# CPython's own constructors do: PyBytes_FromStringAndSize(NULL, n) and then
# its buffer, which starts where the type's basic size ends less the one byte
# kept for the terminating NUL.
_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.restype = ctypes.py_object
_new_bytes.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
_BYTES_DATA = bytes.__basicsize__ - 1
_libc = ctypes.CDLL(None, use_errno=True)
_pread = _libc.pread
_pread.restype = ctypes.c_ssize_t
_pread.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64)


def read_message(fd: int, offset: int, length: int, name: str) -> bytes:
    """The encoded ReadContentResponse for `length` bytes of `fd` at `offset`,
    read straight into the returned bytes. DataLoss if the file ends first."""
    head = header(offset, length)
    message: bytes = _new_bytes(None, len(head) + length)
    base = id(message) + _BYTES_DATA
    ctypes.memmove(base, head, len(head))
    done = 0
    while done < length:
        n = _pread(fd, base + len(head) + done, length - done, offset + done)
        if n < 0:
            err = ctypes.get_errno()
            if err == errno.EINTR:
                continue
            raise OSError(err, os.strerror(err), name)
        if n == 0:
            raise DataLoss(f"content {name} ends at {offset + done} bytes, "
                           f"expected {offset + length}")
        done += n
    return message


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def decode_read_response(raw: bytes) -> tuple[int, memoryview]:
    """(offset, data) of an encoded ReadContentResponse. The data is a view of
    `raw`, not a copy. Unknown fields are skipped as protobuf does; a field
    given twice keeps its last value."""
    buf = memoryview(raw)
    offset, data, pos = 0, buf[0:0], 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, kind = key >> 3, key & 7
        if kind == 0:
            value, pos = _read_varint(buf, pos)
            if field == 1:
                offset = value - (1 << 64) if value >= 1 << 63 else value
        elif kind == 2:
            size, pos = _read_varint(buf, pos)
            if pos + size > len(buf):
                raise ValueError("truncated length-delimited field")
            if field == 2:
                data = buf[pos:pos + size]
            pos += size
        elif kind == 1:
            pos += 8
        elif kind == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {kind}")
    if pos != len(buf):
        raise ValueError("truncated fixed-width field")
    return offset, data
