"""policies.prefix: the block-hash definition the ingress, the policies and the engine share."""

from __future__ import annotations

import hashlib
import struct

import pytest

from policies.prefix import block_hash, block_hashes, leading_matches


def test_only_full_blocks_are_hashed() -> None:
    assert block_hashes([], 4) == []
    assert block_hashes([1, 2, 3], 4) == []
    assert len(block_hashes(list(range(9)), 4)) == 2


def test_hashes_chain_so_equal_blocks_after_different_prefixes_differ() -> None:
    a = block_hashes([1, 2, 3, 4, 9, 9, 9, 9], 4)
    b = block_hashes([5, 6, 7, 8, 9, 9, 9, 9], 4)
    assert a[1] != b[1]
    # A shared prefix gives shared leading hashes, independent of what follows.
    c = block_hashes([1, 2, 3, 4, 0, 0, 0, 0, 7], 4)
    assert c[0] == a[0] and c[1] != a[1]


def test_incremental_block_hash_matches_whole_prompt_hashes() -> None:
    tokens = list(range(100, 140))
    parent = None
    for i, expected in enumerate(block_hashes(tokens, 8, "lora-a@v1")):
        parent = block_hash(parent, tokens[i * 8 : (i + 1) * 8], "lora-a@v1")
        assert parent == expected


def test_extra_key_separates_caches() -> None:
    tokens = list(range(32))
    assert block_hashes(tokens, 16) != block_hashes(tokens, 16, "adapter")
    assert block_hashes(tokens, 16, "a") != block_hashes(tokens, 16, "b")


def test_definition_is_blake2b_of_parent_tokens_extra() -> None:
    """Pin the byte layout: other processes (and languages) must be able to reproduce it."""
    h = hashlib.blake2b(digest_size=16)
    h.update(b"\x00" + struct.pack("<2q", 7, 300000) + b"\x00" + b"k")
    first = h.hexdigest()
    assert block_hash(None, [7, 300000], "k") == first
    h2 = hashlib.blake2b(digest_size=16)
    h2.update(first.encode() + b"\x00" + struct.pack("<2q", 1, 2))
    assert block_hash(first, [1, 2]) == h2.hexdigest()


def test_leading_matches_stops_at_first_miss() -> None:
    hs = block_hashes(list(range(64)), 16)
    assert leading_matches(hs, frozenset(hs)) == 4
    assert leading_matches(hs, frozenset(hs[:2] + hs[3:])) == 2
    assert leading_matches(hs, frozenset(hs[1:])) == 0
    assert leading_matches([], frozenset(hs)) == 0


def test_bad_block_size_names_the_field() -> None:
    with pytest.raises(ValueError, match="^block_size: "):
        block_hashes([1, 2], 0)
