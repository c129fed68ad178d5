from protos import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterRequest(_message.Message):
    __slots__ = ("load",)
    LOAD_FIELD_NUMBER: _ClassVar[int]
    load: _common_pb2.LoadReport
    def __init__(self, load: _Optional[_Union[_common_pb2.LoadReport, _Mapping]] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("accepted", "reason", "report_interval_s")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REPORT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    report_interval_s: float
    def __init__(self, accepted: _Optional[bool] = ..., reason: _Optional[str] = ..., report_interval_s: _Optional[float] = ...) -> None: ...

class ReportReply(_message.Message):
    __slots__ = ("known",)
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    known: bool
    def __init__(self, known: _Optional[bool] = ...) -> None: ...

class RequestMetaMsg(_message.Message):
    __slots__ = ("request_id", "num_prompt_tokens", "max_tokens", "priority", "adapter_id", "prefix_hashes")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    PREFIX_HASHES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    num_prompt_tokens: int
    max_tokens: int
    priority: int
    adapter_id: str
    prefix_hashes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, request_id: _Optional[str] = ..., num_prompt_tokens: _Optional[int] = ..., max_tokens: _Optional[int] = ..., priority: _Optional[int] = ..., adapter_id: _Optional[str] = ..., prefix_hashes: _Optional[_Iterable[str]] = ...) -> None: ...

class RouteRequest(_message.Message):
    __slots__ = ("meta",)
    META_FIELD_NUMBER: _ClassVar[int]
    meta: RequestMetaMsg
    def __init__(self, meta: _Optional[_Union[RequestMetaMsg, _Mapping]] = ...) -> None: ...

class RouteReply(_message.Message):
    __slots__ = ("found", "replica_id", "address", "reason")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    found: bool
    replica_id: str
    address: str
    reason: str
    def __init__(self, found: _Optional[bool] = ..., replica_id: _Optional[str] = ..., address: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ReplicaViewMsg(_message.Message):
    __slots__ = ("replica_id", "address", "healthy", "running", "waiting", "kv_blocks_free", "kv_blocks_total", "block_size", "tokens_in_flight", "step_time_ms", "adapters_resident", "prefix_hashes", "max_running", "inflight_dispatches", "node_id", "version")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCKS_FREE_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    STEP_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_RESIDENT_FIELD_NUMBER: _ClassVar[int]
    PREFIX_HASHES_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNNING_FIELD_NUMBER: _ClassVar[int]
    INFLIGHT_DISPATCHES_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    address: str
    healthy: bool
    running: int
    waiting: int
    kv_blocks_free: int
    kv_blocks_total: int
    block_size: int
    tokens_in_flight: int
    step_time_ms: float
    adapters_resident: _containers.RepeatedScalarFieldContainer[str]
    prefix_hashes: _containers.RepeatedScalarFieldContainer[str]
    max_running: int
    inflight_dispatches: int
    node_id: str
    version: int
    def __init__(self, replica_id: _Optional[str] = ..., address: _Optional[str] = ..., healthy: _Optional[bool] = ..., running: _Optional[int] = ..., waiting: _Optional[int] = ..., kv_blocks_free: _Optional[int] = ..., kv_blocks_total: _Optional[int] = ..., block_size: _Optional[int] = ..., tokens_in_flight: _Optional[int] = ..., step_time_ms: _Optional[float] = ..., adapters_resident: _Optional[_Iterable[str]] = ..., prefix_hashes: _Optional[_Iterable[str]] = ..., max_running: _Optional[int] = ..., inflight_dispatches: _Optional[int] = ..., node_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class ClusterViewMsg(_message.Message):
    __slots__ = ("replicas", "timestamp", "generation", "policy_name", "policy_params_json")
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    POLICY_NAME_FIELD_NUMBER: _ClassVar[int]
    POLICY_PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaViewMsg]
    timestamp: float
    generation: int
    policy_name: str
    policy_params_json: str
    def __init__(self, replicas: _Optional[_Iterable[_Union[ReplicaViewMsg, _Mapping]]] = ..., timestamp: _Optional[float] = ..., generation: _Optional[int] = ..., policy_name: _Optional[str] = ..., policy_params_json: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("watcher_id",)
    WATCHER_ID_FIELD_NUMBER: _ClassVar[int]
    watcher_id: str
    def __init__(self, watcher_id: _Optional[str] = ...) -> None: ...

class ApplyConfigRequest(_message.Message):
    __slots__ = ("yaml_text",)
    YAML_TEXT_FIELD_NUMBER: _ClassVar[int]
    yaml_text: str
    def __init__(self, yaml_text: _Optional[str] = ...) -> None: ...

class ApplyConfigReply(_message.Message):
    __slots__ = ("ok", "message")
    OK_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    message: str
    def __init__(self, ok: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...
