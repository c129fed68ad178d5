"""The controller's recent events (replicas joining and dying, configs, commands), in memory.

Bounded: the newest MAX_EVENTS are kept. Each event gets a sequence number so a reader (the admin
API, the dashboard) can ask for what happened after the last one it saw.
"""

from __future__ import annotations

import enum
import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass

logger = logging.getLogger(__name__)

MAX_EVENTS = 1000


class EventKind(str, enum.Enum):
    REPLICA_CREATED = "replica_created"
    REPLICA_JOINED = "replica_joined"  # registered for the first time
    REPLICA_RESTARTED = "replica_restarted"  # registered again from a new process
    REPLICA_UNHEALTHY = "replica_unhealthy"  # stopped reporting
    REPLICA_RECOVERED = "replica_recovered"  # reports again
    REPLICA_START_FAILED = "replica_start_failed"
    REPLICA_DRAINING = "replica_draining"  # scale-in: cordoned, stopped when empty
    REPLICA_UNDRAINED = "replica_undrained"  # scale-out while draining: kept instead
    REPLICA_REMOVED = "replica_removed"  # stopped or forgotten
    CONFIG_APPLIED = "config_applied"
    CONFIG_REFUSED = "config_refused"
    COMMAND = "command"  # a command sent to a replica, with its result
    MIGRATION = "migration"  # a request moved (or not) between replicas: stages, bytes, downtime
    ADAPTER_LOADED = "adapter_loaded"  # a LoRA adapter joined the catalog (every replica)
    ADAPTER_UNLOADED = "adapter_unloaded"
    ADAPTER_PLACED = "adapter_placed"  # placement moved an adapter onto or off a device


@dataclass(frozen=True)
class Event:
    seq: int
    time: float  # Unix time
    kind: EventKind
    message: str
    replica: str | None = None
    command_id: str | None = None
    ok: bool | None = None  # commands: whether the replica applied it


class EventLog:
    def __init__(self, max_events: int = MAX_EVENTS) -> None:
        self._events: deque[Event] = deque(maxlen=max_events)
        self._seq = itertools.count(1)

    def add(
        self,
        kind: EventKind,
        message: str,
        replica: str | None = None,
        *,
        command_id: str | None = None,
        ok: bool | None = None,
    ) -> Event:
        event = Event(next(self._seq), time.time(), kind, message, replica, command_id, ok)
        self._events.append(event)
        logger.info("event %s %s: %s", kind.value, replica or "-", message)
        return event

    def since(self, after: int = 0, limit: int = MAX_EVENTS) -> list[Event]:
        """Events with seq > `after`, oldest first, at most the newest `limit` of them."""
        out = [e for e in self._events if e.seq > after]
        return out[-limit:] if limit > 0 else []
