from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImportStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMPORT_STATUS_UNSPECIFIED: _ClassVar[ImportStatus]
    IMPORT_STATUS_IMPORTED: _ClassVar[ImportStatus]
    IMPORT_STATUS_MERGED: _ClassVar[ImportStatus]
    IMPORT_STATUS_MINIFIED: _ClassVar[ImportStatus]
    IMPORT_STATUS_UNCHANGED: _ClassVar[ImportStatus]
    IMPORT_STATUS_IMPORTED_SLASHABLE_DATA: _ClassVar[ImportStatus]
IMPORT_STATUS_UNSPECIFIED: ImportStatus
IMPORT_STATUS_IMPORTED: ImportStatus
IMPORT_STATUS_MERGED: ImportStatus
IMPORT_STATUS_MINIFIED: ImportStatus
IMPORT_STATUS_UNCHANGED: ImportStatus
IMPORT_STATUS_IMPORTED_SLASHABLE_DATA: ImportStatus

class ImportInterchangeRequest(_message.Message):
    __slots__ = ("chunk",)
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    chunk: bytes
    def __init__(self, chunk: _Optional[bytes] = ...) -> None: ...

class ValidatorImportResult(_message.Message):
    __slots__ = ("pubkey", "status", "message")
    PUBKEY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    pubkey: bytes
    status: ImportStatus
    message: str
    def __init__(self, pubkey: _Optional[bytes] = ..., status: _Optional[_Union[ImportStatus, str]] = ..., message: _Optional[str] = ...) -> None: ...

class ImportInterchangeResponse(_message.Message):
    __slots__ = ("validators", "imported", "results", "results_omitted", "sequence")
    VALIDATORS_FIELD_NUMBER: _ClassVar[int]
    IMPORTED_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    RESULTS_OMITTED_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    validators: int
    imported: int
    results: _containers.RepeatedCompositeFieldContainer[ValidatorImportResult]
    results_omitted: int
    sequence: int
    def __init__(self, validators: _Optional[int] = ..., imported: _Optional[int] = ..., results: _Optional[_Iterable[_Union[ValidatorImportResult, _Mapping]]] = ..., results_omitted: _Optional[int] = ..., sequence: _Optional[int] = ...) -> None: ...

class ExportInterchangeRequest(_message.Message):
    __slots__ = ("pubkeys",)
    PUBKEYS_FIELD_NUMBER: _ClassVar[int]
    pubkeys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, pubkeys: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ExportInterchangeResponse(_message.Message):
    __slots__ = ("chunk",)
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    chunk: bytes
    def __init__(self, chunk: _Optional[bytes] = ...) -> None: ...
