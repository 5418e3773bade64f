from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    VERDICT_ALLOWED: _ClassVar[Verdict]
    VERDICT_REFUSED: _ClassVar[Verdict]

class Reason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REASON_UNSPECIFIED: _ClassVar[Reason]
    REASON_ALLOWED_NEW: _ClassVar[Reason]
    REASON_ALLOWED_REPEAT: _ClassVar[Reason]
    REASON_DOUBLE_PROPOSAL: _ClassVar[Reason]
    REASON_DOUBLE_VOTE: _ClassVar[Reason]
    REASON_SURROUNDS_RECORDED_VOTE: _ClassVar[Reason]
    REASON_SURROUNDED_BY_RECORDED_VOTE: _ClassVar[Reason]
    REASON_SLOT_AT_OR_BELOW_LOWER_BOUND: _ClassVar[Reason]
    REASON_SOURCE_EPOCH_BELOW_LOWER_BOUND: _ClassVar[Reason]
    REASON_TARGET_EPOCH_AT_OR_BELOW_LOWER_BOUND: _ClassVar[Reason]
    REASON_SOURCE_EPOCH_GREATER_THAN_TARGET_EPOCH: _ClassVar[Reason]
    REASON_VALIDATOR_NOT_REGISTERED: _ClassVar[Reason]
    REASON_AT_OR_BEYOND_HIGH_WATERMARK: _ClassVar[Reason]
VERDICT_UNSPECIFIED: Verdict
VERDICT_ALLOWED: Verdict
VERDICT_REFUSED: Verdict
REASON_UNSPECIFIED: Reason
REASON_ALLOWED_NEW: Reason
REASON_ALLOWED_REPEAT: Reason
REASON_DOUBLE_PROPOSAL: Reason
REASON_DOUBLE_VOTE: Reason
REASON_SURROUNDS_RECORDED_VOTE: Reason
REASON_SURROUNDED_BY_RECORDED_VOTE: Reason
REASON_SLOT_AT_OR_BELOW_LOWER_BOUND: Reason
REASON_SOURCE_EPOCH_BELOW_LOWER_BOUND: Reason
REASON_TARGET_EPOCH_AT_OR_BELOW_LOWER_BOUND: Reason
REASON_SOURCE_EPOCH_GREATER_THAN_TARGET_EPOCH: Reason
REASON_VALIDATOR_NOT_REGISTERED: Reason
REASON_AT_OR_BEYOND_HIGH_WATERMARK: Reason

class SigningDecision(_message.Message):
    __slots__ = ("verdict", "reason", "message", "sequence")
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    verdict: Verdict
    reason: Reason
    message: str
    sequence: int
    def __init__(self, verdict: _Optional[_Union[Verdict, str]] = ..., reason: _Optional[_Union[Reason, str]] = ..., message: _Optional[str] = ..., sequence: _Optional[int] = ...) -> None: ...

class CheckAndRecordBlockRequest(_message.Message):
    __slots__ = ("pubkey", "slot", "signing_root", "genesis_validators_root")
    PUBKEY_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    SIGNING_ROOT_FIELD_NUMBER: _ClassVar[int]
    GENESIS_VALIDATORS_ROOT_FIELD_NUMBER: _ClassVar[int]
    pubkey: bytes
    slot: int
    signing_root: bytes
    genesis_validators_root: bytes
    def __init__(self, pubkey: _Optional[bytes] = ..., slot: _Optional[int] = ..., signing_root: _Optional[bytes] = ..., genesis_validators_root: _Optional[bytes] = ...) -> None: ...

class CheckAndRecordBlockResponse(_message.Message):
    __slots__ = ("decision",)
    DECISION_FIELD_NUMBER: _ClassVar[int]
    decision: SigningDecision
    def __init__(self, decision: _Optional[_Union[SigningDecision, _Mapping]] = ...) -> None: ...

class CheckAndRecordAttestationRequest(_message.Message):
    __slots__ = ("pubkey", "source_epoch", "target_epoch", "signing_root", "genesis_validators_root")
    PUBKEY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    TARGET_EPOCH_FIELD_NUMBER: _ClassVar[int]
    SIGNING_ROOT_FIELD_NUMBER: _ClassVar[int]
    GENESIS_VALIDATORS_ROOT_FIELD_NUMBER: _ClassVar[int]
    pubkey: bytes
    source_epoch: int
    target_epoch: int
    signing_root: bytes
    genesis_validators_root: bytes
    def __init__(self, pubkey: _Optional[bytes] = ..., source_epoch: _Optional[int] = ..., target_epoch: _Optional[int] = ..., signing_root: _Optional[bytes] = ..., genesis_validators_root: _Optional[bytes] = ...) -> None: ...

class CheckAndRecordAttestationResponse(_message.Message):
    __slots__ = ("decision",)
    DECISION_FIELD_NUMBER: _ClassVar[int]
    decision: SigningDecision
    def __init__(self, decision: _Optional[_Union[SigningDecision, _Mapping]] = ...) -> None: ...

class CheckAndRecordAttestationsRequest(_message.Message):
    __slots__ = ("attestations",)
    ATTESTATIONS_FIELD_NUMBER: _ClassVar[int]
    attestations: _containers.RepeatedCompositeFieldContainer[CheckAndRecordAttestationRequest]
    def __init__(self, attestations: _Optional[_Iterable[_Union[CheckAndRecordAttestationRequest, _Mapping]]] = ...) -> None: ...

class CheckAndRecordAttestationsResponse(_message.Message):
    __slots__ = ("decisions",)
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[SigningDecision]
    def __init__(self, decisions: _Optional[_Iterable[_Union[SigningDecision, _Mapping]]] = ...) -> None: ...
