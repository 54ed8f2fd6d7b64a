"""Small protobuf conversions shared by the servicers."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

M = TypeVar("M", bound=Message)

LIST_BATCH = 100  # items per streamed List response, as containerd sends them
# Go clients that dial with grpc defaults receive at most 4 MiB per message
# (spec §1.1): a batch is also cut by size. An item bigger than this on its
# own still goes out, alone.
LIST_BATCH_BYTES = 4 * 1024 * 1024 - 64 * 1024


def timestamp(ns: int) -> Timestamp:
    return Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def batches(items: Iterable[M]) -> Iterator[list[M]]:
    """Group the items of a streamed List into responses of at most LIST_BATCH
    items and about LIST_BATCH_BYTES."""
    batch: list[M] = []
    size = 0
    for item in items:
        cost = item.ByteSize() + 6  # a repeated entry: its bytes, a tag, a length prefix
        if batch and (len(batch) == LIST_BATCH or size + cost > LIST_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += cost
    if batch:
        yield batch
