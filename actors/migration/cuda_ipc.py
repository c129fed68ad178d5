"""The `cuda_ipc` transport: the destination maps the source's KV cache through a CUDA IPC handle
(once per migration, in PrepareMigrateIn) and copies blocks device to device itself; the stages
send only block ids (PullBlocks). Same node only: two replicas on one GPU (`num_gpus: 0.5` each)
or on peer GPUs that both see. A handle that does not open (another node, another GPU numbering)
makes the destination refuse, and the source falls back to the host transport.

The handle is torch's own (torch.multiprocessing.reductions.reduce_tensor, what Ray and vLLM pass
between processes), written as JSON rather than pickled: the wire never carries pickles.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import torch
from torch.multiprocessing.reductions import rebuild_cuda_tensor, reduce_tensor

from actors.common.commands import PullBlocks
from actors.migration.transport import SendCommand, Transport, TransportError

# The classes a handle may name (anything else is refused, never imported by name).
_CLASSES: dict[str, type] = {
    "torch.Tensor": torch.Tensor,
    "torch.storage.UntypedStorage": torch.storage.UntypedStorage,
    "torch.UntypedStorage": torch.UntypedStorage,
    "torch.storage.TypedStorage": torch.storage.TypedStorage,  # what torch 2.11 names
}


def export_handle(tensor: torch.Tensor) -> bytes:
    """A handle another process on this node opens to the same device memory."""
    rebuild, args = reduce_tensor(tensor)
    if rebuild is not rebuild_cuda_tensor:
        raise ValueError("cuda_ipc: only a CUDA tensor can be shared")
    return json.dumps([_encode(a) for a in args]).encode()


def open_handle(data: bytes) -> torch.Tensor:
    """The tensor `export_handle` described, mapped into this process."""
    try:
        args = [_decode(a) for a in json.loads(data)]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"source_handle: not a cuda_ipc handle: {exc}") from exc
    return rebuild_cuda_tensor(*args)


def _encode(value: Any) -> Any:
    if isinstance(value, type):
        name = next((k for k, v in _CLASSES.items() if v is value), None)
        if name is None:
            raise ValueError(f"cuda_ipc: cannot describe class {value!r}")
        return {"class": name}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if isinstance(value, bytes):
        return {"bytes": base64.b64encode(value).decode()}
    if isinstance(value, (tuple, torch.Size)):
        return {"tuple": [_encode(v) for v in value]}
    return value  # int, bool, None


def _decode(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    if "class" in value:
        return _CLASSES[value["class"]]
    if "dtype" in value:
        dtype = getattr(torch, value["dtype"])
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"not a dtype: {value['dtype']}")
        return dtype
    if "device" in value:
        return torch.device(value["device"])
    if "bytes" in value:
        return base64.b64decode(value["bytes"])
    return tuple(_decode(v) for v in value["tuple"])


class CudaIpcTransport(Transport):
    """Stages as block ids: the destination reads the blocks from the mapped source cache."""

    name = "cuda_ipc"

    def __init__(self, kv_cache: torch.Tensor, send: SendCommand) -> None:
        self._handle = export_handle(kv_cache)
        self._send = send
        self._block_bytes = kv_cache[:, :, :1].numel() * kv_cache.element_size()

    def source_handle(self) -> bytes:
        return self._handle

    async def send(self, migration_id: str, start: int, block_ids: list[int]) -> int:
        command = PullBlocks(migration_id, start, tuple(block_ids))
        result = await self._send(command, f"{migration_id}:pull:{start}")
        if result.error is not None:
            raise TransportError(f"destination could not pull blocks {start}..: {result.error}")
        return len(block_ids) * self._block_bytes
