"""The Kafka consumer side: micro-batches, rebalance callbacks, and offsets that only move after success.

The daemon calls `mark_done(messages)` once a batch's outputs are acknowledged by the broker; only then are
the offsets stored, and `commit()` sends the stored positions (on an interval, when partitions are revoked,
and at shutdown). Lost partitions are dropped without a commit: another member owns them already.

Commits on the interval and at shutdown are asynchronous: librdkafka's synchronous commit waits for the group
coordinator with no time limit, so a broker that dies or freezes at that moment would hold the loop (and a
SIGTERM) until it came back. Their results arrive with later polls; a failed commit puts its offsets back for
the next one. Only a revoke commits synchronously, while the rebalance that revokes proves the broker answers.

Rebalances are cooperative-sticky: only partitions that move are revoked and assigned. `on_assigned` runs inside
the assignment, before any record of the new partitions is returned (the daemon restores their model scopes
there) and may ask for a partition to start before its committed position; `on_released` runs on revoke before
the commit (the daemon snapshots and drops the scopes) and on loss, where nothing is committed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from streammoe.config import BatchingSettings, KafkaSettings, consumer_config
from streammoe.logs import get_logger

log = get_logger("streammoe.kafka.source")

PartitionKey = tuple[str, int]
StatsHook = Callable[[str, int, int], None]  # topic, partition, consumer lag
AssignHook = Callable[[list[PartitionKey]], dict[PartitionKey, int]]  # -> where to start, if before the commit
ReleaseHook = Callable[[list[PartitionKey], bool], None]  # partitions, lost (True) or revoked (False)


class Positions(NamedTuple):
    """Where a batch's messages come from, as arrays: computed once per batch, used by every stage."""

    topic: str
    partitions: np.ndarray  # int64, one per message
    offsets: np.ndarray  # int64, one per message


def positions(msgs: list[Message]) -> Positions:
    """The input topic and the partition and offset of each message (one subscribed topic)."""
    partitions = np.fromiter((m.partition() for m in msgs), np.int64, len(msgs))
    offsets = np.fromiter((m.offset() for m in msgs), np.int64, len(msgs))
    return Positions((msgs[0].topic() or "") if msgs else "", partitions, offsets)


def usable(msgs: list[Message], event: str) -> list[Message]:
    """The messages that carry data; errors other than end-of-partition are logged as `event` and skipped."""
    good = []
    for m in msgs:
        err = m.error()
        if err is None:
            good.append(m)
        elif err.code() != KafkaError._PARTITION_EOF:
            log.warning(event, error=str(err))
    return good


@dataclass
class SourceHooks:
    """What the consumer reports to its owner (the loop), from inside its polls; each one optional."""

    on_assigned: AssignHook | None = None
    on_released: ReleaseHook | None = None
    on_lost: Callable[[], None] | None = None
    on_lag: StatsHook | None = None
    on_committed: Callable[[], None] | None = None
    on_error: Callable[[KafkaError], None] | None = None


class Source:
    def __init__(self, kafka: KafkaSettings, batching: BatchingSettings, hooks: SourceHooks | None = None) -> None:
        self.kafka, self.batching = kafka, batching
        self.hooks = hooks = hooks or SourceHooks()
        conf = consumer_config(kafka)
        conf.update(
            {"stats_cb": self._stats, "error_cb": hooks.on_error or self._error, "on_commit": self._commit_result}
        )
        self.consumer = Consumer(conf)
        self.assigned: set[PartitionKey] = set()
        self._acked: dict[PartitionKey, int] = {}  # next offset to read, acknowledged but not yet committed
        self._committing: dict[PartitionKey, int] = {}  # sent to the coordinator, result not yet known
        self.committed: dict[PartitionKey, int] = {}
        self._paused = False
        self._paused_keys: set[PartitionKey] = set()  # paused since the last resume (see `resume`)
        self._closing = False

    def subscribe(self) -> None:
        self.consumer.subscribe(
            [self.kafka.input_topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    def poll_batch(self) -> list[Message]:
        """Up to max_batch messages, waiting at most max_wait_ms; errors other than EOF are logged and skipped."""
        msgs = self.consumer.consume(num_messages=self.batching.max_batch, timeout=self.batching.max_wait_ms / 1000)
        return self._good(msgs)

    def _good(self, msgs: list[Message]) -> list[Message]:
        return usable(msgs, "consume_error")

    def mark_done(self, msgs: list[Message], at: Positions | None = None) -> None:
        """Everything these messages caused is acknowledged: store their offsets for the next commit.
        `at`: their `positions`, when the caller has them already (one array pass instead of one per message)."""
        topic, partitions, offsets = at if at is not None else positions(msgs)
        latest: dict[PartitionKey, int] = {}
        for p in np.unique(partitions):
            key = (topic, int(p))
            if key in self.assigned:  # else revoked while the batch was in flight; its new owner re-reads it
                latest[key] = int(offsets[partitions == p].max()) + 1
        if not latest:
            return
        self._acked.update({k: max(v, self._acked.get(k, 0)) for k, v in latest.items()})
        try:
            self.consumer.store_offsets(offsets=[TopicPartition(t, p, o) for (t, p), o in latest.items()])
        except KafkaException as e:  # a partition revoked meanwhile: its commit happened in on_revoke
            log.debug("store_offsets_failed", error=str(e))

    def commit(self, only: Iterable[PartitionKey] | None = None) -> int:
        """Send acknowledged offsets (of `only` partitions, if given) to the group coordinator without waiting for
        the answer (see the module docstring); returns how many partitions."""
        keys = [k for k in (self._acked if only is None else only) if k in self._acked]
        offsets = [TopicPartition(t, p, self._acked[(t, p)]) for t, p in keys]
        if not offsets:
            return 0
        try:
            self.consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as e:
            log.warning("commit_failed", error=str(e), partitions=len(offsets))
            return 0
        for k in keys:
            self._committing[k] = self._acked.pop(k)
        return len(offsets)

    def _commit_now(self, keys: list[PartitionKey]) -> None:
        """Synchronous commit, only for partitions being revoked (the broker is answering: it is rebalancing)."""
        keys = [k for k in keys if k in self._acked]
        if not keys:
            return
        try:
            self.consumer.commit(
                offsets=[TopicPartition(t, p, self._acked[(t, p)]) for t, p in keys], asynchronous=False
            )
        except KafkaException as e:
            log.warning("commit_failed", error=str(e), partitions=len(keys))
            return
        for k in keys:
            self.committed[k] = self._acked.pop(k)  # librdkafka reports it to `_commit_result` as well (counted there)

    def _commit_result(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """librdkafka's answer to a commit, asynchronous or not (served by a later consume)."""
        failed = []
        for tp in partitions:
            key, offset = (tp.topic, tp.partition), tp.offset
            if self._committing.get(key) == offset:
                del self._committing[key]
            if err is None and tp.error is None:
                self.committed[key] = max(offset, self.committed.get(key, -1))
            else:
                failed.append(f"{tp.topic}[{tp.partition}]")
                newer = max(self._acked.get(key, -1), self._committing.get(key, -1), self.committed.get(key, -1))
                if key in self.assigned and offset > newer:  # nothing newer will replace it: try again next time
                    self._acked[key] = offset
        if failed:
            log.warning(
                "commit_failed",
                error=str(err or next(tp.error for tp in partitions if tp.error)),
                partitions=sorted(failed),
            )
        elif self.hooks.on_committed is not None:
            self.hooks.on_committed()

    def await_commits(self, timeout: float) -> bool:
        """Serve the consumer until every commit sent has its answer (or `timeout` passes); True when all have.
        Messages consumed meanwhile are dropped: only for shutdown, where nothing more is processed."""
        deadline = time.monotonic() + timeout
        while self._committing and time.monotonic() < deadline:
            self.consumer.consume(num_messages=self.batching.max_batch, timeout=0.05)
        return not self._committing

    def pause(self) -> None:
        """Stop fetching but keep the group membership alive (the caller keeps calling `poll_paused`)."""
        self._paused = True
        parts = self.consumer.assignment()
        self._paused_keys.update((tp.topic, tp.partition) for tp in parts)
        self.consumer.pause(parts)

    def poll_paused(self, timeout: float) -> list[Message]:
        return self._good(self.consumer.consume(num_messages=self.batching.max_batch, timeout=timeout))

    def resume(self) -> None:
        """Resume every partition paused since `pause()`, owned now or not: librdkafka keeps a partition paused
        across losing and regaining it (measured: lost during a broker outage, assigned again afterwards, it never
        fetched again), so resuming only the current assignment would leave those stalled for good."""
        self._paused = False
        keys, self._paused_keys = self._paused_keys, set()
        keys.update((tp.topic, tp.partition) for tp in self.consumer.assignment())
        try:
            self.consumer.resume([TopicPartition(t, p) for t, p in sorted(keys)])
        except KafkaException as e:
            log.warning("resume_failed", error=str(e))

    def close(self, timeout: float, commit: bool = True) -> bool:
        """Commit what is acknowledged (unless `commit` is False: the broker is known to be unreachable), then leave
        the group, all within about `timeout` seconds; False if the consumer could not be closed in time
        (see `close_by`)."""
        deadline = time.monotonic() + timeout
        if commit:
            self.commit()
            if not self.await_commits(timeout / 2):
                log.warning("commit_unanswered", partitions=sorted(f"{t}[{p}]" for t, p in self._committing))
        self._closing = True  # the revoke inside close() must not commit synchronously now
        return close_by(self.consumer, deadline, timeout)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self.assigned.update(keys)
        log.info("partitions_assigned", partitions=sorted(f"{t}[{p}]" for t, p in keys))
        starts = self.hooks.on_assigned(keys) if self.hooks.on_assigned is not None and keys else {}
        rewound = rewind(consumer, partitions, starts, self.kafka.delivery_timeout_s) if starts else False
        if self._paused or rewound:
            consumer.incremental_assign(partitions)
        if self._paused:
            consumer.pause(partitions)
            self._paused_keys.update(keys)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        if self.hooks.on_released is not None and keys:
            self.hooks.on_released(keys, False)
        if not self._closing:
            self._commit_now(keys)
        self.assigned.difference_update(keys)
        for k in keys:
            self._acked.pop(k, None)
        log.info("partitions_revoked", partitions=sorted(f"{t}[{p}]" for t, p in keys))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self.assigned.difference_update(keys)
        for k in keys:
            self._acked.pop(k, None)
        log.warning("partitions_lost", partitions=sorted(f"{t}[{p}]" for t, p in keys))
        if self.hooks.on_released is not None and keys:
            self.hooks.on_released(keys, True)
        if self.hooks.on_lost is not None:
            self.hooks.on_lost()

    def _stats(self, raw: str) -> None:
        if self.hooks.on_lag is None:
            return
        for topic, partition, lag in lags(raw, self.assigned):
            self.hooks.on_lag(topic, partition, lag)

    def _error(self, err: KafkaError) -> None:
        log.warning("kafka_error", error=str(err), fatal=err.fatal())


def close_by(consumer: Consumer, deadline: float, timeout: float) -> bool:
    """Close `consumer` (leave the group) by about `deadline` (monotonic); False if it had not closed by then.

    librdkafka's close waits for every outstanding commit, with no limit when the broker is frozen or behind a
    network that drops packets (measured: > 90 s against a SIGSTOPped Tansu 0.6.0), so the close runs in a
    helper thread and is abandoned after the timeout: the process exits anyway and the group notices the
    member gone after its session timeout."""
    closer = threading.Thread(target=consumer.close, name="streammoe-consumer-close", daemon=True)
    closer.start()
    closer.join(max(0.0, deadline - time.monotonic()) + 1.0)
    if closer.is_alive():
        log.warning("consumer_close_timed_out", seconds=timeout)
        return False
    return True


def rewind(
    consumer: Consumer, partitions: list[TopicPartition], starts: dict[PartitionKey, int], timeout: float
) -> bool:
    """Start a partition before its committed position where the handed-over model learned less than was
    committed (its last snapshot predates the last commit: a crash), so those records are learned, not skipped."""
    try:
        committed = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(partitions, timeout=timeout)}
    except KafkaException as e:
        log.warning("committed_unknown", error=str(e), hint="partitions start at their committed position")
        return False
    rewound = False
    for tp in partitions:
        key = (tp.topic, tp.partition)
        start, done = starts.get(key), committed.get(key, -1)
        if start is not None and 0 <= start < done:
            tp.offset = start
            rewound = True
            log.warning(
                "partition_rewound",
                partition=f"{tp.topic}[{tp.partition}]",
                committed=done,
                start=start,
                reason="the restored model learned less than was committed; the gap is scored again",
            )
    return rewound


def lags(raw: str, assigned: set[PartitionKey]) -> Iterator[tuple[str, int, int]]:
    """(topic, partition, consumer lag) from librdkafka's statistics JSON, for assigned partitions (not a revoked
    one's) whose lag is known."""
    stats = orjson.loads(raw)
    for topic, t in stats.get("topics", {}).items():
        for pid, p in t.get("partitions", {}).items():
            lag = p.get("consumer_lag", -1)
            if int(pid) >= 0 and lag >= 0 and (topic, int(pid)) in assigned:
                yield topic, int(pid), int(lag)
