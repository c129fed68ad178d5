"""Live migration: a request moves, KV cache and all, from one replica to another while it keeps
generating (source.py drives it, target.py receives it, transport.py moves the blocks)."""
