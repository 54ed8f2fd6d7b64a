from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ApplyRequest(_message.Message):
    __slots__ = ("key", "digest", "media_type", "diff_id", "create_only", "layer")
    KEY_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    DIFF_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    key: str
    digest: str
    media_type: str
    diff_id: str
    create_only: bool
    layer: bytes
    def __init__(self, key: _Optional[str] = ..., digest: _Optional[str] = ..., media_type: _Optional[str] = ..., diff_id: _Optional[str] = ..., create_only: _Optional[bool] = ..., layer: _Optional[bytes] = ...) -> None: ...

class ApplyResponse(_message.Message):
    __slots__ = ("diff_id", "size", "skipped")
    DIFF_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    diff_id: str
    size: int
    skipped: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, diff_id: _Optional[str] = ..., size: _Optional[int] = ..., skipped: _Optional[_Iterable[str]] = ...) -> None: ...
