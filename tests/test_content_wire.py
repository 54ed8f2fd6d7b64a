"""The Read response encoding the daemon sends and the CLI decodes without
protobuf objects (fusesnap/content/wire.py), checked against protobuf itself."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from fusesnap.content import wire
from fusesnap.errors import DataLoss
from fusesnap.pb import content_pb2 as cpb

INT64 = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)


@given(offset=INT64, data=st.binary(max_size=4096))
def test_a_header_and_the_data_are_the_message_protobuf_parses(offset, data):
    parsed = cpb.ReadContentResponse.FromString(wire.header(offset, len(data)) + data)
    assert (parsed.offset, parsed.data) == (offset, data)


@given(offset=INT64, data=st.binary(max_size=4096))
def test_protobufs_encoding_decodes_to_the_same_offset_and_data(offset, data):
    raw = cpb.ReadContentResponse(offset=offset, data=data).SerializeToString()
    got_offset, got_data = wire.decode_read_response(raw)
    assert (got_offset, bytes(got_data)) == (offset, data)


@given(offset=st.integers(min_value=0, max_value=1 << 40), data=st.binary(max_size=64),
       unknown=st.lists(st.sampled_from([
           b"\x18\x96\x01",                # field 3, varint
           b"\x21" + bytes(8),             # field 4, fixed64
           b"\x2d" + bytes(4),             # field 5, fixed32
           b"\x32\x03abc",                 # field 6, bytes
       ]), max_size=4))
def test_unknown_fields_are_skipped_as_protobuf_skips_them(offset, data, unknown):
    raw = b"".join(unknown) + wire.header(offset, len(data)) + data + b"".join(unknown)
    parsed = cpb.ReadContentResponse.FromString(raw)
    got_offset, got_data = wire.decode_read_response(raw)
    assert (got_offset, bytes(got_data)) == (parsed.offset, parsed.data) == (offset, data)


def test_decoded_data_is_a_view_of_the_received_bytes_not_a_copy():
    raw = wire.header(5, 3) + b"abc"
    _, data = wire.decode_read_response(raw)
    assert isinstance(data, memoryview) and data.obj is raw


@pytest.mark.parametrize("raw", [
    b"\x12\x05abc",           # data shorter than its length
    b"\x08\x80",              # varint cut short
    b"\x21\x00\x00",          # fixed64 cut short
    b"\x0b",                  # wire type 3 (groups): not in this message
], ids=["short-data", "short-varint", "short-fixed64", "group"])
def test_a_malformed_response_is_an_error_as_in_protobuf(raw):
    with pytest.raises(DecodeError):
        cpb.ReadContentResponse.FromString(raw)
    with pytest.raises(ValueError):
        wire.decode_read_response(raw)


@pytest.fixture
def blob_fd(tmp_path: Path):
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(3000))
    fd = os.open(path, os.O_RDONLY)
    yield fd, path.read_bytes()
    os.close(fd)


@pytest.mark.parametrize("offset,length", [(0, 3000), (0, 0), (1, 2999), (2999, 1), (700, 100)])
def test_read_message_is_the_encoding_of_that_range(blob_fd, offset, length):
    fd, content = blob_fd
    message = wire.read_message(fd, offset, length, "blob")
    assert message == wire.header(offset, length) + content[offset:offset + length]
    parsed = cpb.ReadContentResponse.FromString(message)
    assert (parsed.offset, parsed.data) == (offset, content[offset:offset + length])


def test_read_message_of_a_file_that_ends_early_is_data_loss(blob_fd):
    fd, _ = blob_fd
    with pytest.raises(DataLoss, match="ends at 3000 bytes, expected 3010"):
        wire.read_message(fd, 2990, 20, "blob")


def test_read_message_of_a_closed_descriptor_is_an_os_error():
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    with pytest.raises(OSError):
        wire.read_message(fd, 0, 10, "blob")
