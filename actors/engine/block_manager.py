"""Paged KV block accounting: ref-counted blocks, automatic prefix caching, LRU eviction, swap.

A block is a page of `block_size` token slots in every layer's K and V tensors. The manager only
does the bookkeeping; the model runner reads `request.block_ids` to find where each token's KV
lives and executes the (device_block, host_block) copies that swapping returns.

Prefix caching: once a block is FULL and its KV computed, it gets the chained hash of
`policies.prefix.block_hash` (parent hash, its tokens, the request's adapter and version), the same
definition the ingress and the dispatch policy use, so hashes agree across processes. A freed
block that carries a hash keeps its KV and stays findable until it is evicted, least recently
freed first. Blocks without a hash are always handed out before a cached one is evicted.

Only full blocks are ever shared, and a cache hit always leaves at least one token to compute,
so a shared block is never written again: no copy-on-write is needed.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass

from actors.engine.request import Request
from policies.prefix import block_hash


@dataclass
class Block:
    block_id: int
    ref_cnt: int = 0
    hash: str | None = None  # set while the block is registered in the prefix cache
    depth: int = 0  # index of the block within its prefix; 0 is a prompt's first block


class BlockManager:
    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_prefix_caching: bool = True,
        num_host_blocks: int = 0,
    ) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks: must be >= 1, got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size: must be >= 1, got {block_size}")
        if num_host_blocks < 0:
            raise ValueError(f"num_host_blocks: must be >= 0, got {num_host_blocks}")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: deque[int] = deque(range(num_blocks))  # ref 0, no hash: taken first
        # ref 0 but holding reusable KV; insertion order is the eviction order (oldest first).
        self._cached_free: OrderedDict[int, None] = OrderedDict()
        self._hash_to_block: dict[str, int] = {}
        # Registered hashes bucketed by depth, so the routing summary costs O(limit), not O(cache).
        self._by_depth: list[dict[str, None]] = []
        # Per request: its chained full-block hashes (a cache of pure token arithmetic) and how
        # many of its leading blocks cache_full_blocks has already dealt with.
        self._req_hashes: dict[str, list[str]] = {}
        self._num_registered: dict[str, int] = {}
        self.num_host_blocks = num_host_blocks
        self._free_host: deque[int] = deque(range(num_host_blocks))
        self._swapped: set[str] = set()  # requests whose block_ids are host blocks

    # ---- sizes ---------------------------------------------------------------------------------

    @property
    def num_total_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation can take now: never used, or cached and evictable."""
        return len(self._free) + len(self._cached_free)

    @property
    def num_cached_free_blocks(self) -> int:
        return len(self._cached_free)

    @property
    def num_free_host_blocks(self) -> int:
        return len(self._free_host)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_total_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def can_allocate(self, num_blocks: int) -> bool:
        return num_blocks <= self.num_free_blocks

    def ref_count(self, block_id: int) -> int:
        return self.blocks[block_id].ref_cnt

    def block_hash_of(self, block_id: int) -> str | None:
        return self.blocks[block_id].hash

    # ---- prefix cache --------------------------------------------------------------------------

    def get_computed_blocks(self, request: Request) -> tuple[list[int], int]:
        """The longest cached prefix of the request's full blocks, and the tokens it covers.

        Capped below `num_tokens` so the step still computes the last token and yields logits.
        """
        if not self.enable_prefix_caching:
            return [], 0
        max_blocks = (request.num_tokens - 1) // self.block_size
        hit: list[int] = []
        for h in self._hashes(request, max_blocks):
            block_id = self._hash_to_block.get(h)
            if block_id is None:
                break
            hit.append(block_id)
        return hit, len(hit) * self.block_size

    def cache_full_blocks(self, request: Request, num_computed_tokens: int) -> None:
        """Register the hashes of the request's blocks that are now full and computed."""
        if not self.enable_prefix_caching or request.request_id in self._swapped:
            return
        num_computed = min(num_computed_tokens, request.num_tokens)
        num_full = min(num_computed // self.block_size, len(request.block_ids))
        start = self._num_registered.get(request.request_id, 0)
        if num_full <= start:
            return
        hashes = self._hashes(request, num_full)
        for i in range(start, num_full):
            block = self.blocks[request.block_ids[i]]
            # A block from a cache hit is registered already; a duplicate of a block another
            # request computed concurrently stays private and is freed as a plain block.
            if block.hash is None and hashes[i] not in self._hash_to_block:
                self._register(block, hashes[i], i)
        self._num_registered[request.request_id] = num_full

    def cached_prefix_hashes(self, limit: int) -> list[str]:
        """A summary of the cache for prefix-affinity routing: shallowest blocks first.

        Routers count a request's LEADING cached blocks, so the first blocks of many prefixes are
        worth more than the deep blocks of a few.
        """
        summary: list[str] = []
        for bucket in self._by_depth:
            if len(summary) >= limit:
                break
            # Newest first within a depth: recently computed prefixes are the likeliest to recur.
            summary.extend(itertools.islice(reversed(bucket), limit - len(summary)))
        return summary

    def _register(self, block: Block, block_hash: str, depth: int) -> None:
        block.hash, block.depth = block_hash, depth
        self._hash_to_block[block_hash] = block.block_id
        while len(self._by_depth) <= depth:
            self._by_depth.append({})
        self._by_depth[depth][block_hash] = None

    def _evict(self, block: Block) -> None:
        assert block.hash is not None
        del self._hash_to_block[block.hash]
        del self._by_depth[block.depth][block.hash]
        block.hash, block.depth = None, 0

    def _hashes(self, request: Request, num_blocks: int) -> list[str]:
        chain = self._req_hashes.setdefault(request.request_id, [])
        bs = self.block_size
        while len(chain) < num_blocks:
            i = len(chain)
            parent = chain[-1] if chain else None
            chain.append(
                block_hash(parent, request.tokens_slice(i * bs, (i + 1) * bs), request.cache_salt)
            )
        return chain

    # ---- allocation ----------------------------------------------------------------------------

    def allocate_slots(
        self, request: Request, num_new_tokens: int, new_computed_blocks: Sequence[int] = ()
    ) -> bool:
        """Grow `request.block_ids` to hold its computed tokens, the cache hits and the new tokens.

        `new_computed_blocks` (from get_computed_blocks) are appended first and count as computed.
        Returns False, changing nothing, when free plus evictable blocks do not suffice.
        """
        if request.request_id in self._swapped:
            raise ValueError(f"request {request.request_id!r} is swapped out; swap it in first")
        num_computed = request.num_computed_tokens + len(new_computed_blocks) * self.block_size
        total = self.blocks_needed(num_computed + num_new_tokens)
        num_new_blocks = total - len(request.block_ids) - len(new_computed_blocks)
        # Hits that sit in the evictable pool are about to be taken off it.
        reclaimed = sum(1 for b in new_computed_blocks if self.blocks[b].ref_cnt == 0)
        if num_new_blocks > self.num_free_blocks - reclaimed:
            return False
        for block_id in new_computed_blocks:
            self._touch(block_id)
        request.block_ids.extend(new_computed_blocks)
        if new_computed_blocks:
            self._num_registered[request.request_id] = len(request.block_ids)
        for _ in range(max(num_new_blocks, 0)):
            request.block_ids.append(self._take_free())
        return True

    def reserve(self, num_blocks: int) -> list[int] | None:
        """Take `num_blocks` blocks for KV that arrives from elsewhere (a migration's
        destination); None, taking nothing, when they are not free. They belong to no request
        until one adopts them (its block_ids) or `release_reserved` gives them back."""
        if num_blocks < 0:
            raise ValueError(f"num_blocks: must be >= 0, got {num_blocks}")
        if num_blocks > self.num_free_blocks:
            return None
        return [self._take_free() for _ in range(num_blocks)]

    def release_reserved(self, block_ids: list[int]) -> None:
        self._release(block_ids)

    def free(self, request: Request) -> None:
        """Release the request's blocks (device or host); cached KV stays for reuse."""
        if request.request_id in self._swapped:
            self._swapped.discard(request.request_id)
            self._free_host.extend(request.block_ids)
        else:
            self._release(request.block_ids)
        request.block_ids = []
        self._req_hashes.pop(request.request_id, None)
        self._num_registered.pop(request.request_id, None)

    def _touch(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_cnt == 0:
            del self._cached_free[block_id]
        block.ref_cnt += 1

    def _take_free(self) -> int:
        if self._free:
            block_id = self._free.popleft()
        else:
            block_id, _ = self._cached_free.popitem(last=False)  # evict the least recently freed
            self._evict(self.blocks[block_id])
        self.blocks[block_id].ref_cnt = 1
        return block_id

    def _release(self, block_ids: list[int]) -> None:
        # Tail first: within one request the deepest blocks become the oldest free ones, so a
        # prefix shared with later requests outlives the suffix only this one used.
        for block_id in reversed(block_ids):
            block = self.blocks[block_id]
            if block.ref_cnt <= 0:
                raise RuntimeError(f"block {block_id} freed more often than allocated")
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                if block.hash is not None:
                    self._cached_free[block_id] = None
                else:
                    self._free.append(block_id)

    # ---- swap ----------------------------------------------------------------------------------

    def is_swapped(self, request: Request) -> bool:
        return request.request_id in self._swapped

    def can_swap_out(self, request: Request) -> bool:
        return len(request.block_ids) <= len(self._free_host)

    def swap_out(self, request: Request) -> list[tuple[int, int]]:
        """Move the request to host blocks; returns (device_block, host_block) copies to run.

        The runner must copy before this step's forward pass, which may reuse the device blocks.
        """
        if request.request_id in self._swapped:
            raise ValueError(f"request {request.request_id!r} is already swapped out")
        if not self.can_swap_out(request):
            raise ValueError(
                f"swap space: {len(request.block_ids)} host blocks needed, "
                f"{len(self._free_host)} free"
            )
        pairs = [(dev, self._free_host.popleft()) for dev in request.block_ids]
        self._release(request.block_ids)
        request.block_ids = [host for _, host in pairs]
        self._swapped.add(request.request_id)
        # Its device copies may be evicted now; the blocks it gets back must be registered anew.
        self._num_registered[request.request_id] = 0
        return pairs

    def swap_in(self, request: Request) -> list[tuple[int, int]]:
        """Move the request back to fresh device blocks; returns (device_block, host_block)."""
        if request.request_id not in self._swapped:
            raise ValueError(f"request {request.request_id!r} is not swapped out")
        if not self.can_allocate(len(request.block_ids)):
            raise ValueError(
                f"kv cache: {len(request.block_ids)} blocks needed to swap in, "
                f"{self.num_free_blocks} free"
            )
        pairs = [(self._take_free(), host) for host in request.block_ids]
        self._free_host.extend(request.block_ids)
        self._swapped.discard(request.request_id)
        request.block_ids = [dev for dev, _ in pairs]
        return pairs
