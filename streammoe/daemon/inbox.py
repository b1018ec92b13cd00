"""The loop's one buffer: messages fetched but not yet handled, with their early decode when read ahead.

Records arrive outside the loop's own fetch: the batch read ahead while another is judged, and whatever the
consumer returns while it is polled only to keep the group membership (a backpressure pause, a warm-up fit, a
wait for the broker). They wait here and are handled next, in the order they came.

A rebalance callback runs inside those polls. Its only operation here is `drop_partitions`: records of revoked
or lost partitions are read by their new owner. Nothing else may change the inbox from a callback, so the
buffer is one object edited in one place, not a list several writers replace.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Protocol

from confluent_kafka import Message

from streammoe.wire.records import DecodedBatch

PartitionKey = tuple[str, int]


class InboxError(RuntimeError):
    """The inbox was used against its rules (a bug in the loop, not a condition of the broker)."""


class PartitionDropper(Protocol):
    """What a rebalance may do to the loop's buffer: nothing but drop partitions."""

    def drop_partitions(self, keys: Iterable[PartitionKey]) -> int: ...


class Inbox:
    """Fetched messages waiting for the loop; only the loop's thread touches it (`claim` names that thread)."""

    def __init__(self) -> None:
        self._msgs: list[Message] = []
        self._decoded: DecodedBatch | None = None  # the decode of exactly `_msgs`, when read ahead
        self._owner: int | None = None
        self._closed = False

    def claim(self) -> None:
        """The calling thread runs the loop from now on (a daemon may be built in one thread and run in another)."""
        self._owner = threading.get_ident()
        self._closed = False

    def close(self) -> None:
        """The loop is over: what still waits is dropped, and from now on the consumer's last rebalance (leaving the
        group, on the thread that closes the consumer) finds nothing to drop."""
        self._check_thread("close")
        self._msgs, self._decoded, self._closed = [], None, True

    def __len__(self) -> int:
        return len(self._msgs)

    def _check_thread(self, what: str) -> None:
        if self._owner is None:
            self.claim()
        elif threading.get_ident() != self._owner:
            raise InboxError(
                f"inbox {what} from thread {threading.current_thread().name}: only the loop's thread "
                "may touch the inbox (rebalance callbacks run inside its polls)"
            )

    def _check_open(self, what: str) -> None:
        self._check_thread(what)
        if self._closed:
            raise InboxError(f"inbox {what} after the loop ended")

    def add(self, msgs: list[Message]) -> None:
        """Messages fetched while the loop was busy: handled after those already waiting."""
        self._check_open("add")
        if msgs:
            self._msgs.extend(msgs)
            self._decoded = None

    def read_ahead(self, msgs: list[Message], decoded: DecodedBatch) -> None:
        """The next batch, fetched and decoded while the current one is judged (at most one batch ahead)."""
        self._check_open("read_ahead")
        if self._msgs:
            raise InboxError("read ahead while messages still wait: at most one batch is read ahead")
        if msgs:
            self._msgs, self._decoded = list(msgs), decoded

    def take(self) -> tuple[list[Message], DecodedBatch | None]:
        """Everything waiting, with its decode if it is exactly the batch read ahead; the inbox is empty after."""
        self._check_open("take")
        msgs, decoded = self._msgs, self._decoded
        self._msgs, self._decoded = [], None
        return msgs, decoded

    def drop_partitions(self, keys: Iterable[PartitionKey]) -> int:
        """Forget the messages of these partitions (revoked or lost: their new owner reads them); how many."""
        if self._closed:
            return 0
        self._check_thread("drop_partitions")
        gone = set(keys)
        kept = [m for m in self._msgs if (m.topic(), m.partition()) not in gone]
        dropped = len(self._msgs) - len(kept)
        if dropped:
            self._msgs, self._decoded = kept, None
        return dropped
