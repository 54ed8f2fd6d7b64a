from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FuseStatsRequest(_message.Message):
    __slots__ = ("reset",)
    RESET_FIELD_NUMBER: _ClassVar[int]
    reset: bool
    def __init__(self, reset: _Optional[bool] = ...) -> None: ...

class OpcodeStats(_message.Message):
    __slots__ = ("opcode", "count", "total_ns", "median_ns", "p90_ns")
    OPCODE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_NS_FIELD_NUMBER: _ClassVar[int]
    MEDIAN_NS_FIELD_NUMBER: _ClassVar[int]
    P90_NS_FIELD_NUMBER: _ClassVar[int]
    opcode: str
    count: int
    total_ns: int
    median_ns: int
    p90_ns: int
    def __init__(self, opcode: _Optional[str] = ..., count: _Optional[int] = ..., total_ns: _Optional[int] = ..., median_ns: _Optional[int] = ..., p90_ns: _Optional[int] = ...) -> None: ...

class FuseStatsResponse(_message.Message):
    __slots__ = ("opcodes", "elapsed_ns")
    OPCODES_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_NS_FIELD_NUMBER: _ClassVar[int]
    opcodes: _containers.RepeatedCompositeFieldContainer[OpcodeStats]
    elapsed_ns: int
    def __init__(self, opcodes: _Optional[_Iterable[_Union[OpcodeStats, _Mapping]]] = ..., elapsed_ns: _Optional[int] = ...) -> None: ...
