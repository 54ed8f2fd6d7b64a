"""ReadContentResponse on the wire, without protobuf objects in between.

A Read moves the blob's bytes in messages of up to 1 MiB. Going through
protobuf costs three copies of every chunk on each side (into the message,
into its encoding, out of the encoding), and those copies were a quarter of
the daemon's CPU time for a 1 GiB Read (perf). The daemon instead reads each
chunk from the blob and joins it behind the message's few header bytes
(:func:`read_message`): one copy, into the bytes object gRPC sends, which
must be `bytes` (grpcio's SendMessageOperation takes no other buffer).
Reading straight into that object (through ctypes, into a new bytes object's
buffer) saved that copy, about 25 us per MiB in a loop here (211-220 against
235-242 us), and did not show in `bench/content.py`'s Read figures run
alternately (851-1072 MiB/s and 723-1190); that is not worth writing into
an immutable object. Clients decode a response into a view of the bytes
gRPC received (:func:`decode_read_response`).

The encoding is the message's (spec §3.3): field 1 ``offset`` (int64,
varint, omitted when 0 as proto3 does), field 2 ``data`` (bytes).
"""

from __future__ import annotations

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


def read_message(fd: int, offset: int, length: int, name: str) -> bytes:
    """The encoded ReadContentResponse for `length` bytes of `fd` at `offset`.
    DataLoss if the file ends first."""
    parts = [header(offset, length)]
    done = 0
    while done < length:
        chunk = os.pread(fd, length - done, offset + done)
        if not chunk:
            raise DataLoss(f"content {name} ends at {offset + done} bytes, "
                           f"expected {offset + length}")
        parts.append(chunk)
        done += len(chunk)
    return b"".join(parts)


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
