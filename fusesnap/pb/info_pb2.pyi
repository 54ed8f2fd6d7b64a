import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PathRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class PathResponse(_message.Message):
    __slots__ = ("path", "kind")
    PATH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    path: str
    kind: str
    def __init__(self, path: _Optional[str] = ..., kind: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SnapshotCounts(_message.Message):
    __slots__ = ("active", "committed", "view")
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    active: int
    committed: int
    view: int
    def __init__(self, active: _Optional[int] = ..., committed: _Optional[int] = ..., view: _Optional[int] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("version", "role", "root", "mountpoint", "socket", "pid", "started_at", "uptime", "snapshots", "blobs", "blob_bytes", "ingests", "leases", "images", "fuse_requests", "fuse_requests_by_opcode")
    class FuseRequestsByOpcodeEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    MOUNTPOINT_FIELD_NUMBER: _ClassVar[int]
    SOCKET_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    UPTIME_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOTS_FIELD_NUMBER: _ClassVar[int]
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    BLOB_BYTES_FIELD_NUMBER: _ClassVar[int]
    INGESTS_FIELD_NUMBER: _ClassVar[int]
    LEASES_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    FUSE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    FUSE_REQUESTS_BY_OPCODE_FIELD_NUMBER: _ClassVar[int]
    version: str
    role: str
    root: str
    mountpoint: str
    socket: str
    pid: int
    started_at: _timestamp_pb2.Timestamp
    uptime: _duration_pb2.Duration
    snapshots: SnapshotCounts
    blobs: int
    blob_bytes: int
    ingests: int
    leases: int
    images: int
    fuse_requests: int
    fuse_requests_by_opcode: _containers.ScalarMap[str, int]
    def __init__(self, version: _Optional[str] = ..., role: _Optional[str] = ..., root: _Optional[str] = ..., mountpoint: _Optional[str] = ..., socket: _Optional[str] = ..., pid: _Optional[int] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., uptime: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., snapshots: _Optional[_Union[SnapshotCounts, _Mapping]] = ..., blobs: _Optional[int] = ..., blob_bytes: _Optional[int] = ..., ingests: _Optional[int] = ..., leases: _Optional[int] = ..., images: _Optional[int] = ..., fuse_requests: _Optional[int] = ..., fuse_requests_by_opcode: _Optional[_Mapping[str, int]] = ...) -> None: ...
