"""The host transport's frame: BlockChunk's protobuf encoding built and read without copying the
KV bytes through protobuf. Any protobuf parser reads what chunk_frame writes; chunk_from_frame
reads what protobuf writes; malformed frames are a ValueError, never a crash or a short read."""

from __future__ import annotations

import pytest

from actors.common.commands import BlockChunk
from actors.common.wire import chunk_frame, chunk_from_frame
from protos import replica_pb2

HEADER = BlockChunk("mig-7", 3, 2, b"", "bfloat16")
PAYLOAD = bytes(range(256)) * 300  # 76,800 bytes: a multi-byte length varint


def test_protobuf_reads_a_frame_as_the_message() -> None:
    msg = replica_pb2.BlockChunk.FromString(chunk_frame(HEADER, memoryview(PAYLOAD)))
    assert (msg.migration_id, msg.start, msg.count, msg.dtype) == ("mig-7", 3, 2, "bfloat16")
    assert msg.data == PAYLOAD


def test_a_frame_reads_back_with_its_payload_in_place() -> None:
    frame = chunk_frame(HEADER, PAYLOAD)
    chunk, data = chunk_from_frame(frame)
    assert chunk == HEADER
    assert data.tobytes() == PAYLOAD
    assert data.obj is frame  # a view into the received bytes, not a copy


def test_a_message_protobuf_wrote_reads_as_a_frame() -> None:
    msg = replica_pb2.BlockChunk(migration_id="m", start=1, count=1, data=b"xyz", dtype="float32")
    chunk, data = chunk_from_frame(msg.SerializeToString())
    assert (chunk.migration_id, chunk.start, chunk.count, chunk.dtype) == ("m", 1, 1, "float32")
    assert data.tobytes() == b"xyz"


def test_an_empty_payload() -> None:
    chunk, data = chunk_from_frame(chunk_frame(HEADER, b""))
    assert chunk == HEADER and data.nbytes == 0


@pytest.mark.parametrize(
    ("frame", "says"),
    [
        (chunk_frame(HEADER, PAYLOAD)[:-1], "truncated"),
        (b"\x22\xff", "varint"),
        (b"\x22\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01", "varint"),
        (b"\x0b", "wire type 3"),
        (b"\x12\x05ab", "truncated"),
    ],
)
def test_malformed_frames_are_value_errors(frame: bytes, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        chunk_from_frame(frame)
