from slashing_protection.v1 import signing_pb2 as _signing_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DecisionKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_KIND_UNSPECIFIED: _ClassVar[DecisionKind]
    DECISION_KIND_BLOCK: _ClassVar[DecisionKind]
    DECISION_KIND_ATTESTATION: _ClassVar[DecisionKind]
DECISION_KIND_UNSPECIFIED: DecisionKind
DECISION_KIND_BLOCK: DecisionKind
DECISION_KIND_ATTESTATION: DecisionKind

class RegisterValidatorsRequest(_message.Message):
    __slots__ = ("pubkeys",)
    PUBKEYS_FIELD_NUMBER: _ClassVar[int]
    pubkeys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, pubkeys: _Optional[_Iterable[bytes]] = ...) -> None: ...

class RegisterValidatorsResponse(_message.Message):
    __slots__ = ("registered", "already_registered", "sequence")
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    ALREADY_REGISTERED_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    registered: int
    already_registered: int
    sequence: int
    def __init__(self, registered: _Optional[int] = ..., already_registered: _Optional[int] = ..., sequence: _Optional[int] = ...) -> None: ...

class SaveCheckpointRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SaveCheckpointResponse(_message.Message):
    __slots__ = ("sequence", "validators", "file_name")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    VALIDATORS_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    validators: int
    file_name: str
    def __init__(self, sequence: _Optional[int] = ..., validators: _Optional[int] = ..., file_name: _Optional[str] = ...) -> None: ...

class GetValidatorSummaryRequest(_message.Message):
    __slots__ = ("pubkey",)
    PUBKEY_FIELD_NUMBER: _ClassVar[int]
    pubkey: bytes
    def __init__(self, pubkey: _Optional[bytes] = ...) -> None: ...

class DecisionRecord(_message.Message):
    __slots__ = ("sequence", "pubkey", "kind", "slot", "source_epoch", "target_epoch", "signing_root", "verdict", "reason", "recorded_at_unix_nanos")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PUBKEY_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    TARGET_EPOCH_FIELD_NUMBER: _ClassVar[int]
    SIGNING_ROOT_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RECORDED_AT_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    pubkey: bytes
    kind: DecisionKind
    slot: int
    source_epoch: int
    target_epoch: int
    signing_root: bytes
    verdict: _signing_pb2.Verdict
    reason: _signing_pb2.Reason
    recorded_at_unix_nanos: int
    def __init__(self, sequence: _Optional[int] = ..., pubkey: _Optional[bytes] = ..., kind: _Optional[_Union[DecisionKind, str]] = ..., slot: _Optional[int] = ..., source_epoch: _Optional[int] = ..., target_epoch: _Optional[int] = ..., signing_root: _Optional[bytes] = ..., verdict: _Optional[_Union[_signing_pb2.Verdict, str]] = ..., reason: _Optional[_Union[_signing_pb2.Reason, str]] = ..., recorded_at_unix_nanos: _Optional[int] = ...) -> None: ...

class GetValidatorSummaryResponse(_message.Message):
    __slots__ = ("pubkey", "registered", "block_count", "attestation_count", "lowest_slot", "highest_slot", "lowest_source_epoch", "highest_source_epoch", "lowest_target_epoch", "highest_target_epoch", "slot_floor", "source_epoch_floor", "target_epoch_floor", "allowed_decisions", "refused_decisions", "last_decision")
    PUBKEY_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    BLOCK_COUNT_FIELD_NUMBER: _ClassVar[int]
    ATTESTATION_COUNT_FIELD_NUMBER: _ClassVar[int]
    LOWEST_SLOT_FIELD_NUMBER: _ClassVar[int]
    HIGHEST_SLOT_FIELD_NUMBER: _ClassVar[int]
    LOWEST_SOURCE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    HIGHEST_SOURCE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    LOWEST_TARGET_EPOCH_FIELD_NUMBER: _ClassVar[int]
    HIGHEST_TARGET_EPOCH_FIELD_NUMBER: _ClassVar[int]
    SLOT_FLOOR_FIELD_NUMBER: _ClassVar[int]
    SOURCE_EPOCH_FLOOR_FIELD_NUMBER: _ClassVar[int]
    TARGET_EPOCH_FLOOR_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_DECISIONS_FIELD_NUMBER: _ClassVar[int]
    REFUSED_DECISIONS_FIELD_NUMBER: _ClassVar[int]
    LAST_DECISION_FIELD_NUMBER: _ClassVar[int]
    pubkey: bytes
    registered: bool
    block_count: int
    attestation_count: int
    lowest_slot: int
    highest_slot: int
    lowest_source_epoch: int
    highest_source_epoch: int
    lowest_target_epoch: int
    highest_target_epoch: int
    slot_floor: int
    source_epoch_floor: int
    target_epoch_floor: int
    allowed_decisions: int
    refused_decisions: int
    last_decision: DecisionRecord
    def __init__(self, pubkey: _Optional[bytes] = ..., registered: _Optional[bool] = ..., block_count: _Optional[int] = ..., attestation_count: _Optional[int] = ..., lowest_slot: _Optional[int] = ..., highest_slot: _Optional[int] = ..., lowest_source_epoch: _Optional[int] = ..., highest_source_epoch: _Optional[int] = ..., lowest_target_epoch: _Optional[int] = ..., highest_target_epoch: _Optional[int] = ..., slot_floor: _Optional[int] = ..., source_epoch_floor: _Optional[int] = ..., target_epoch_floor: _Optional[int] = ..., allowed_decisions: _Optional[int] = ..., refused_decisions: _Optional[int] = ..., last_decision: _Optional[_Union[DecisionRecord, _Mapping]] = ...) -> None: ...

class ListDecisionsRequest(_message.Message):
    __slots__ = ("pubkey", "since_sequence")
    PUBKEY_FIELD_NUMBER: _ClassVar[int]
    SINCE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    pubkey: bytes
    since_sequence: int
    def __init__(self, pubkey: _Optional[bytes] = ..., since_sequence: _Optional[int] = ...) -> None: ...

class SetHighWatermarkRequest(_message.Message):
    __slots__ = ("slot", "epoch")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    slot: int
    epoch: int
    def __init__(self, slot: _Optional[int] = ..., epoch: _Optional[int] = ...) -> None: ...

class GetHighWatermarkRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RemoveHighWatermarkRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HighWatermarkResponse(_message.Message):
    __slots__ = ("set", "slot", "epoch")
    SET_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    set: bool
    slot: int
    epoch: int
    def __init__(self, set: _Optional[bool] = ..., slot: _Optional[int] = ..., epoch: _Optional[int] = ...) -> None: ...
