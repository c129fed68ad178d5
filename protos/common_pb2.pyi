from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_KIND_NONE: _ClassVar[ErrorKind]
    ERROR_KIND_INVALID_ARGUMENT: _ClassVar[ErrorKind]
    ERROR_KIND_NOT_FOUND: _ClassVar[ErrorKind]
    ERROR_KIND_CONFLICT: _ClassVar[ErrorKind]
    ERROR_KIND_OVERLOADED: _ClassVar[ErrorKind]
    ERROR_KIND_UNAVAILABLE: _ClassVar[ErrorKind]
    ERROR_KIND_INTERNAL: _ClassVar[ErrorKind]
    ERROR_KIND_UNKNOWN_COMMAND: _ClassVar[ErrorKind]
    ERROR_KIND_TIMEOUT: _ClassVar[ErrorKind]
ERROR_KIND_NONE: ErrorKind
ERROR_KIND_INVALID_ARGUMENT: ErrorKind
ERROR_KIND_NOT_FOUND: ErrorKind
ERROR_KIND_CONFLICT: ErrorKind
ERROR_KIND_OVERLOADED: ErrorKind
ERROR_KIND_UNAVAILABLE: ErrorKind
ERROR_KIND_INTERNAL: ErrorKind
ERROR_KIND_UNKNOWN_COMMAND: ErrorKind
ERROR_KIND_TIMEOUT: ErrorKind

class Error(_message.Message):
    __slots__ = ("kind", "field", "message", "whole_request")
    KIND_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    WHOLE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    kind: ErrorKind
    field: str
    message: str
    whole_request: bool
    def __init__(self, kind: _Optional[_Union[ErrorKind, str]] = ..., field: _Optional[str] = ..., message: _Optional[str] = ..., whole_request: _Optional[bool] = ...) -> None: ...

class ReplicaLoad(_message.Message):
    __slots__ = ("running", "waiting", "kv_blocks_free", "kv_blocks_total", "block_size", "tokens_in_flight", "step_time_ms", "max_running", "num_steps", "num_preemptions", "cordoned", "adapters_resident", "prefix_hashes", "migrating_out", "migrating_in", "migrated_bytes", "high_priority_running", "adapters_loaded", "adapter_loads", "adapter_evictions", "adapter_requests", "adapter_slots", "prompt_tokens_total", "prefix_hit_tokens_total")
    class AdapterRequestsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCKS_FREE_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    STEP_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNNING_FIELD_NUMBER: _ClassVar[int]
    NUM_STEPS_FIELD_NUMBER: _ClassVar[int]
    NUM_PREEMPTIONS_FIELD_NUMBER: _ClassVar[int]
    CORDONED_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_RESIDENT_FIELD_NUMBER: _ClassVar[int]
    PREFIX_HASHES_FIELD_NUMBER: _ClassVar[int]
    MIGRATING_OUT_FIELD_NUMBER: _ClassVar[int]
    MIGRATING_IN_FIELD_NUMBER: _ClassVar[int]
    MIGRATED_BYTES_FIELD_NUMBER: _ClassVar[int]
    HIGH_PRIORITY_RUNNING_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_LOADED_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_LOADS_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_SLOTS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PREFIX_HIT_TOKENS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    running: int
    waiting: int
    kv_blocks_free: int
    kv_blocks_total: int
    block_size: int
    tokens_in_flight: int
    step_time_ms: float
    max_running: int
    num_steps: int
    num_preemptions: int
    cordoned: bool
    adapters_resident: _containers.RepeatedScalarFieldContainer[str]
    prefix_hashes: _containers.RepeatedScalarFieldContainer[str]
    migrating_out: int
    migrating_in: int
    migrated_bytes: int
    high_priority_running: int
    adapters_loaded: _containers.RepeatedScalarFieldContainer[str]
    adapter_loads: int
    adapter_evictions: int
    adapter_requests: _containers.ScalarMap[str, int]
    adapter_slots: int
    prompt_tokens_total: int
    prefix_hit_tokens_total: int
    def __init__(self, running: _Optional[int] = ..., waiting: _Optional[int] = ..., kv_blocks_free: _Optional[int] = ..., kv_blocks_total: _Optional[int] = ..., block_size: _Optional[int] = ..., tokens_in_flight: _Optional[int] = ..., step_time_ms: _Optional[float] = ..., max_running: _Optional[int] = ..., num_steps: _Optional[int] = ..., num_preemptions: _Optional[int] = ..., cordoned: _Optional[bool] = ..., adapters_resident: _Optional[_Iterable[str]] = ..., prefix_hashes: _Optional[_Iterable[str]] = ..., migrating_out: _Optional[int] = ..., migrating_in: _Optional[int] = ..., migrated_bytes: _Optional[int] = ..., high_priority_running: _Optional[int] = ..., adapters_loaded: _Optional[_Iterable[str]] = ..., adapter_loads: _Optional[int] = ..., adapter_evictions: _Optional[int] = ..., adapter_requests: _Optional[_Mapping[str, int]] = ..., adapter_slots: _Optional[int] = ..., prompt_tokens_total: _Optional[int] = ..., prefix_hit_tokens_total: _Optional[int] = ...) -> None: ...

class ReplicaIdentity(_message.Message):
    __slots__ = ("replica_id", "address", "node_id", "incarnation", "pid", "started_at")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    address: str
    node_id: str
    incarnation: str
    pid: int
    started_at: float
    def __init__(self, replica_id: _Optional[str] = ..., address: _Optional[str] = ..., node_id: _Optional[str] = ..., incarnation: _Optional[str] = ..., pid: _Optional[int] = ..., started_at: _Optional[float] = ...) -> None: ...

class LoadReport(_message.Message):
    __slots__ = ("identity", "seq", "load")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    identity: ReplicaIdentity
    seq: int
    load: ReplicaLoad
    def __init__(self, identity: _Optional[_Union[ReplicaIdentity, _Mapping]] = ..., seq: _Optional[int] = ..., load: _Optional[_Union[ReplicaLoad, _Mapping]] = ...) -> None: ...
