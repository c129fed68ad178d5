"""The one definition of prefix block hashes, shared by the ingress, the policies and the engine.

A block's hash chains its parent's: hash_i = blake2b(hash_{i-1} hex, tokens of block i, extra
key). Equal hashes therefore mean equal whole prefixes, not only equal blocks, and a request's
leading cached blocks can be counted by walking its hashes in order. `extra_key` separates caches
that must not be shared for the same tokens (an adapter id and version, for instance).
Only full blocks are hashed: a partial last block is never shared.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

HASH_DIGEST_BYTES = 16  # 128 bits: collisions are negligible for any realistic cache size
_SEP = b"\x00"


def block_hash(parent: str | None, tokens: Sequence[int], extra_key: str | None = None) -> str:
    """The hex hash of one full block given its parent's hash (None for the first block)."""
    h = hashlib.blake2b(digest_size=HASH_DIGEST_BYTES)
    if parent is not None:
        h.update(parent.encode("ascii"))
    h.update(_SEP)
    # Fixed-width little-endian int64 so the byte string is unambiguous for any token id.
    h.update(struct.pack(f"<{len(tokens)}q", *tokens))
    if extra_key is not None:
        h.update(_SEP)
        h.update(extra_key.encode("utf-8"))
    return h.hexdigest()


def block_hashes(
    token_ids: Sequence[int], block_size: int, extra_key: str | None = None
) -> list[str]:
    """Chained hashes of every full block of `token_ids`, in order."""
    if block_size < 1:
        raise ValueError(f"block_size: must be >= 1, got {block_size}")
    hashes: list[str] = []
    parent: str | None = None
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = block_hash(parent, token_ids[start : start + block_size], extra_key)
        hashes.append(parent)
    return hashes


def leading_matches(request_hashes: Sequence[str], cached: frozenset[str] | set[str]) -> int:
    """How many of the request's leading blocks a replica reports as cached."""
    matched = 0
    for block in request_hashes:
        if block not in cached:
            break
        matched += 1
    return matched
