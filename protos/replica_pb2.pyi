from protos import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SamplingParams(_message.Message):
    __slots__ = ("n", "max_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty", "seed", "stop", "stop_token_ids", "include_stop_str_in_output", "ignore_eos", "logprobs")
    N_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MIN_P_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_PENALTY_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_PENALTY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    STOP_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_STOP_STR_IN_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EOS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    n: int
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repetition_penalty: float
    presence_penalty: float
    frequency_penalty: float
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    stop_token_ids: _containers.RepeatedScalarFieldContainer[int]
    include_stop_str_in_output: bool
    ignore_eos: bool
    logprobs: int
    def __init__(self, n: _Optional[int] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., min_p: _Optional[float] = ..., repetition_penalty: _Optional[float] = ..., presence_penalty: _Optional[float] = ..., frequency_penalty: _Optional[float] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., stop_token_ids: _Optional[_Iterable[int]] = ..., include_stop_str_in_output: _Optional[bool] = ..., ignore_eos: _Optional[bool] = ..., logprobs: _Optional[int] = ...) -> None: ...

class GenerateSpec(_message.Message):
    __slots__ = ("request_id", "prompt_token_ids", "sampling", "priority", "adapter_id", "resume_token_ids")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: SamplingParams
    priority: int
    adapter_id: str
    resume_token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, request_id: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., priority: _Optional[int] = ..., adapter_id: _Optional[str] = ..., resume_token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class GenerateCall(_message.Message):
    __slots__ = ("spec", "abort_request_id", "attach_request_id")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    ABORT_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ATTACH_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    spec: GenerateSpec
    abort_request_id: str
    attach_request_id: str
    def __init__(self, spec: _Optional[_Union[GenerateSpec, _Mapping]] = ..., abort_request_id: _Optional[str] = ..., attach_request_id: _Optional[str] = ...) -> None: ...

class TokenLogprob(_message.Message):
    __slots__ = ("token_id", "logprob", "top_token_ids", "top_logprobs")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    TOP_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    token_id: int
    logprob: float
    top_token_ids: _containers.RepeatedScalarFieldContainer[int]
    top_logprobs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, token_id: _Optional[int] = ..., logprob: _Optional[float] = ..., top_token_ids: _Optional[_Iterable[int]] = ..., top_logprobs: _Optional[_Iterable[float]] = ...) -> None: ...

class GenerateDelta(_message.Message):
    __slots__ = ("request_id", "index", "token_ids", "text", "finished", "finish_reason", "has_logprobs", "logprobs", "error", "num_prompt_tokens", "num_output_tokens", "migrated_to", "position")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    HAS_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    NUM_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MIGRATED_TO_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    index: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    finished: bool
    finish_reason: str
    has_logprobs: bool
    logprobs: _containers.RepeatedCompositeFieldContainer[TokenLogprob]
    error: _common_pb2.Error
    num_prompt_tokens: int
    num_output_tokens: int
    migrated_to: str
    position: int
    def __init__(self, request_id: _Optional[str] = ..., index: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ..., finished: _Optional[bool] = ..., finish_reason: _Optional[str] = ..., has_logprobs: _Optional[bool] = ..., logprobs: _Optional[_Iterable[_Union[TokenLogprob, _Mapping]]] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ..., num_prompt_tokens: _Optional[int] = ..., num_output_tokens: _Optional[int] = ..., migrated_to: _Optional[str] = ..., position: _Optional[int] = ...) -> None: ...

class DeltaBatch(_message.Message):
    __slots__ = ("deltas", "request_ids", "indexes", "token_counts", "token_ids", "texts", "num_prompt_tokens", "num_output_tokens")
    DELTAS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    INDEXES_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNTS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    NUM_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    deltas: _containers.RepeatedCompositeFieldContainer[GenerateDelta]
    request_ids: _containers.RepeatedScalarFieldContainer[str]
    indexes: _containers.RepeatedScalarFieldContainer[int]
    token_counts: _containers.RepeatedScalarFieldContainer[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    num_prompt_tokens: _containers.RepeatedScalarFieldContainer[int]
    num_output_tokens: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, deltas: _Optional[_Iterable[_Union[GenerateDelta, _Mapping]]] = ..., request_ids: _Optional[_Iterable[str]] = ..., indexes: _Optional[_Iterable[int]] = ..., token_counts: _Optional[_Iterable[int]] = ..., token_ids: _Optional[_Iterable[int]] = ..., texts: _Optional[_Iterable[str]] = ..., num_prompt_tokens: _Optional[_Iterable[int]] = ..., num_output_tokens: _Optional[_Iterable[int]] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthReply(_message.Message):
    __slots__ = ("ok", "replica_id", "incarnation")
    OK_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    replica_id: str
    incarnation: str
    def __init__(self, ok: _Optional[bool] = ..., replica_id: _Optional[str] = ..., incarnation: _Optional[str] = ...) -> None: ...

class DescribeModelRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model", "max_model_len", "vocab_size", "block_size", "tokenizer_files")
    class TokenizerFilesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FILES_FIELD_NUMBER: _ClassVar[int]
    model: str
    max_model_len: int
    vocab_size: int
    block_size: int
    tokenizer_files: _containers.ScalarMap[str, bytes]
    def __init__(self, model: _Optional[str] = ..., max_model_len: _Optional[int] = ..., vocab_size: _Optional[int] = ..., block_size: _Optional[int] = ..., tokenizer_files: _Optional[_Mapping[str, bytes]] = ...) -> None: ...

class Cordon(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Uncordon(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Abort(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class ListRequests(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DetokenizerState(_message.Message):
    __slots__ = ("ids", "prefix_offset", "read_offset", "output_text", "num_emitted", "stop_reason")
    IDS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_OFFSET_FIELD_NUMBER: _ClassVar[int]
    READ_OFFSET_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TEXT_FIELD_NUMBER: _ClassVar[int]
    NUM_EMITTED_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    prefix_offset: int
    read_offset: int
    output_text: str
    num_emitted: int
    stop_reason: str
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., prefix_offset: _Optional[int] = ..., read_offset: _Optional[int] = ..., output_text: _Optional[str] = ..., num_emitted: _Optional[int] = ..., stop_reason: _Optional[str] = ...) -> None: ...

class RequestState(_message.Message):
    __slots__ = ("request_id", "prompt_token_ids", "output_token_ids", "num_computed_tokens", "sampling", "extra_eos_token_ids", "priority", "age_s", "num_preemptions", "num_cached_tokens", "generator_state", "detokenizer", "eos_token_id", "adapter_id", "client_prompt_tokens", "num_resumed")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    NUM_COMPUTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    EXTRA_EOS_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    AGE_S_FIELD_NUMBER: _ClassVar[int]
    NUM_PREEMPTIONS_FIELD_NUMBER: _ClassVar[int]
    NUM_CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_STATE_FIELD_NUMBER: _ClassVar[int]
    DETOKENIZER_FIELD_NUMBER: _ClassVar[int]
    EOS_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_RESUMED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    output_token_ids: _containers.RepeatedScalarFieldContainer[int]
    num_computed_tokens: int
    sampling: SamplingParams
    extra_eos_token_ids: _containers.RepeatedScalarFieldContainer[int]
    priority: int
    age_s: float
    num_preemptions: int
    num_cached_tokens: int
    generator_state: bytes
    detokenizer: DetokenizerState
    eos_token_id: int
    adapter_id: str
    client_prompt_tokens: int
    num_resumed: int
    def __init__(self, request_id: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., output_token_ids: _Optional[_Iterable[int]] = ..., num_computed_tokens: _Optional[int] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., extra_eos_token_ids: _Optional[_Iterable[int]] = ..., priority: _Optional[int] = ..., age_s: _Optional[float] = ..., num_preemptions: _Optional[int] = ..., num_cached_tokens: _Optional[int] = ..., generator_state: _Optional[bytes] = ..., detokenizer: _Optional[_Union[DetokenizerState, _Mapping]] = ..., eos_token_id: _Optional[int] = ..., adapter_id: _Optional[str] = ..., client_prompt_tokens: _Optional[int] = ..., num_resumed: _Optional[int] = ...) -> None: ...

class MigrateOut(_message.Message):
    __slots__ = ("request_id", "target_address", "transport", "max_stages")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    MAX_STAGES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    target_address: str
    transport: str
    max_stages: int
    def __init__(self, request_id: _Optional[str] = ..., target_address: _Optional[str] = ..., transport: _Optional[str] = ..., max_stages: _Optional[int] = ...) -> None: ...

class PrepareMigrateIn(_message.Message):
    __slots__ = ("migration_id", "request_id", "num_blocks", "transport", "source_handle", "adapter_id")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_HANDLE_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    request_id: str
    num_blocks: int
    transport: str
    source_handle: bytes
    adapter_id: str
    def __init__(self, migration_id: _Optional[str] = ..., request_id: _Optional[str] = ..., num_blocks: _Optional[int] = ..., transport: _Optional[str] = ..., source_handle: _Optional[bytes] = ..., adapter_id: _Optional[str] = ...) -> None: ...

class PullBlocks(_message.Message):
    __slots__ = ("migration_id", "start", "source_block_ids")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    SOURCE_BLOCK_IDS_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    start: int
    source_block_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, migration_id: _Optional[str] = ..., start: _Optional[int] = ..., source_block_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class CommitMigrateIn(_message.Message):
    __slots__ = ("migration_id", "state", "num_blocks")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    state: RequestState
    num_blocks: int
    def __init__(self, migration_id: _Optional[str] = ..., state: _Optional[_Union[RequestState, _Mapping]] = ..., num_blocks: _Optional[int] = ...) -> None: ...

class AbortMigrateIn(_message.Message):
    __slots__ = ("migration_id",)
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    def __init__(self, migration_id: _Optional[str] = ...) -> None: ...

class BlockChunk(_message.Message):
    __slots__ = ("migration_id", "start", "count", "data", "dtype")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    start: int
    count: int
    data: bytes
    dtype: str
    def __init__(self, migration_id: _Optional[str] = ..., start: _Optional[int] = ..., count: _Optional[int] = ..., data: _Optional[bytes] = ..., dtype: _Optional[str] = ...) -> None: ...

class Reservation(_message.Message):
    __slots__ = ("num_blocks",)
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    num_blocks: int
    def __init__(self, num_blocks: _Optional[int] = ...) -> None: ...

class MigrationReport(_message.Message):
    __slots__ = ("migration_id", "request_id", "outcome", "reason", "stages", "blocks", "bytes", "downtime_ms", "duration_ms", "target")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    DOWNTIME_MS_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    request_id: str
    outcome: str
    reason: str
    stages: int
    blocks: int
    bytes: int
    downtime_ms: float
    duration_ms: float
    target: str
    def __init__(self, migration_id: _Optional[str] = ..., request_id: _Optional[str] = ..., outcome: _Optional[str] = ..., reason: _Optional[str] = ..., stages: _Optional[int] = ..., blocks: _Optional[int] = ..., bytes: _Optional[int] = ..., downtime_ms: _Optional[float] = ..., duration_ms: _Optional[float] = ..., target: _Optional[str] = ...) -> None: ...

class Command(_message.Message):
    __slots__ = ("command_id", "cordon", "uncordon", "abort", "list_requests", "migrate_out", "prepare_migrate_in", "pull_blocks", "commit_migrate_in", "abort_migrate_in", "load_adapter", "unload_adapter", "list_adapters", "place_adapter")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    CORDON_FIELD_NUMBER: _ClassVar[int]
    UNCORDON_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    LIST_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MIGRATE_OUT_FIELD_NUMBER: _ClassVar[int]
    PREPARE_MIGRATE_IN_FIELD_NUMBER: _ClassVar[int]
    PULL_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    COMMIT_MIGRATE_IN_FIELD_NUMBER: _ClassVar[int]
    ABORT_MIGRATE_IN_FIELD_NUMBER: _ClassVar[int]
    LOAD_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    UNLOAD_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    LIST_ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    PLACE_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    cordon: Cordon
    uncordon: Uncordon
    abort: Abort
    list_requests: ListRequests
    migrate_out: MigrateOut
    prepare_migrate_in: PrepareMigrateIn
    pull_blocks: PullBlocks
    commit_migrate_in: CommitMigrateIn
    abort_migrate_in: AbortMigrateIn
    load_adapter: LoadAdapter
    unload_adapter: UnloadAdapter
    list_adapters: ListAdapters
    place_adapter: PlaceAdapter
    def __init__(self, command_id: _Optional[str] = ..., cordon: _Optional[_Union[Cordon, _Mapping]] = ..., uncordon: _Optional[_Union[Uncordon, _Mapping]] = ..., abort: _Optional[_Union[Abort, _Mapping]] = ..., list_requests: _Optional[_Union[ListRequests, _Mapping]] = ..., migrate_out: _Optional[_Union[MigrateOut, _Mapping]] = ..., prepare_migrate_in: _Optional[_Union[PrepareMigrateIn, _Mapping]] = ..., pull_blocks: _Optional[_Union[PullBlocks, _Mapping]] = ..., commit_migrate_in: _Optional[_Union[CommitMigrateIn, _Mapping]] = ..., abort_migrate_in: _Optional[_Union[AbortMigrateIn, _Mapping]] = ..., load_adapter: _Optional[_Union[LoadAdapter, _Mapping]] = ..., unload_adapter: _Optional[_Union[UnloadAdapter, _Mapping]] = ..., list_adapters: _Optional[_Union[ListAdapters, _Mapping]] = ..., place_adapter: _Optional[_Union[PlaceAdapter, _Mapping]] = ...) -> None: ...

class PlaceAdapter(_message.Message):
    __slots__ = ("name", "resident")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    resident: bool
    def __init__(self, name: _Optional[str] = ..., resident: _Optional[bool] = ...) -> None: ...

class ListAdapters(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AdapterList(_message.Message):
    __slots__ = ("adapters",)
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    adapters: _containers.RepeatedCompositeFieldContainer[AdapterInfo]
    def __init__(self, adapters: _Optional[_Iterable[_Union[AdapterInfo, _Mapping]]] = ...) -> None: ...

class LoadAdapter(_message.Message):
    __slots__ = ("name", "path")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class UnloadAdapter(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class AdapterInfo(_message.Message):
    __slots__ = ("name", "version", "rank", "modules", "path")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    MODULES_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    rank: int
    modules: _containers.RepeatedScalarFieldContainer[str]
    path: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., rank: _Optional[int] = ..., modules: _Optional[_Iterable[str]] = ..., path: _Optional[str] = ...) -> None: ...

class Done(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AbortResult(_message.Message):
    __slots__ = ("found",)
    FOUND_FIELD_NUMBER: _ClassVar[int]
    found: bool
    def __init__(self, found: _Optional[bool] = ...) -> None: ...

class RequestInfo(_message.Message):
    __slots__ = ("request_id", "state", "n", "prompt_tokens", "output_tokens", "kv_blocks", "priority", "adapter", "arrival_time")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    ARRIVAL_TIME_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    state: str
    n: int
    prompt_tokens: int
    output_tokens: int
    kv_blocks: int
    priority: int
    adapter: str
    arrival_time: float
    def __init__(self, request_id: _Optional[str] = ..., state: _Optional[str] = ..., n: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., kv_blocks: _Optional[int] = ..., priority: _Optional[int] = ..., adapter: _Optional[str] = ..., arrival_time: _Optional[float] = ...) -> None: ...

class RequestList(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[RequestInfo]
    def __init__(self, requests: _Optional[_Iterable[_Union[RequestInfo, _Mapping]]] = ...) -> None: ...

class CommandResult(_message.Message):
    __slots__ = ("command_id", "error", "repeated", "done", "abort_result", "request_list", "reservation", "migration_report", "adapter_info", "adapter_list")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REPEATED_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    ABORT_RESULT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_LIST_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_REPORT_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_INFO_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_LIST_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    error: _common_pb2.Error
    repeated: bool
    done: Done
    abort_result: AbortResult
    request_list: RequestList
    reservation: Reservation
    migration_report: MigrationReport
    adapter_info: AdapterInfo
    adapter_list: AdapterList
    def __init__(self, command_id: _Optional[str] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ..., repeated: _Optional[bool] = ..., done: _Optional[_Union[Done, _Mapping]] = ..., abort_result: _Optional[_Union[AbortResult, _Mapping]] = ..., request_list: _Optional[_Union[RequestList, _Mapping]] = ..., reservation: _Optional[_Union[Reservation, _Mapping]] = ..., migration_report: _Optional[_Union[MigrationReport, _Mapping]] = ..., adapter_info: _Optional[_Union[AdapterInfo, _Mapping]] = ..., adapter_list: _Optional[_Union[AdapterList, _Mapping]] = ...) -> None: ...
