"""The Kafka consumer side: micro-batches, rebalance callbacks, and offsets that only move after success.

The daemon calls `mark_done(messages)` once a batch's outputs are acknowledged by the broker; only then are
the offsets stored, and `commit()` sends the stored positions (on an interval, when partitions are revoked,
and at shutdown). Lost partitions are dropped without a commit: another member owns them already.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from streammoe.config import BatchingSettings, KafkaSettings, consumer_config
from streammoe.logs import get_logger

log = get_logger("streammoe.source")

PartitionKey = tuple[str, int]
StatsHook = Callable[[str, int, int], None]  # topic, partition, consumer lag


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


class Source:
    def __init__(self, kafka: KafkaSettings, batching: BatchingSettings, on_lag: StatsHook | None = None) -> None:
        self.kafka, self.batching = kafka, batching
        self._on_lag = on_lag
        conf = consumer_config(kafka)
        conf.update({"stats_cb": self._stats, "error_cb": self._error})
        self.consumer = Consumer(conf)
        self.assigned: set[PartitionKey] = set()
        self._acked: dict[PartitionKey, int] = {}  # next offset to read, acknowledged but not yet committed
        self.committed: dict[PartitionKey, int] = {}
        self._paused = False

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

    def mark_done(self, msgs: Iterable[Message]) -> None:
        """Everything these messages caused is acknowledged: store their offsets for the next commit."""
        latest: dict[PartitionKey, int] = {}
        for m in msgs:
            key = (m.topic(), m.partition())
            if key not in self.assigned:  # revoked while the batch was in flight; its new owner re-reads it
                continue
            latest[key] = max(latest.get(key, 0), m.offset() + 1)
        if not latest:
            return
        self._acked.update({k: max(v, self._acked.get(k, 0)) for k, v in latest.items()})
        try:
            self.consumer.store_offsets(offsets=[TopicPartition(t, p, o) for (t, p), o in latest.items()])
        except KafkaException as e:  # a partition revoked meanwhile: its commit happened in on_revoke
            log.debug("store_offsets_failed", error=str(e))

    def commit(self, only: Iterable[PartitionKey] | None = None) -> int:
        """Synchronously commit acknowledged offsets (of `only` partitions, if given); returns how many."""
        keys = [k for k in (self._acked if only is None else only) if k in self._acked]
        offsets = [TopicPartition(t, p, self._acked[(t, p)]) for t, p in keys]
        if not offsets:
            return 0
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as e:
            log.warning("commit_failed", error=str(e), partitions=len(offsets))
            return 0
        for k in keys:
            self.committed[k] = self._acked.pop(k)
        return len(offsets)

    def pause(self) -> None:
        """Stop fetching but keep the group membership alive (the caller keeps calling `poll_paused`)."""
        self._paused = True
        self.consumer.pause(self.consumer.assignment())

    def poll_paused(self, timeout: float) -> list[Message]:
        return self._good(self.consumer.consume(num_messages=self.batching.max_batch, timeout=timeout))

    def resume(self) -> None:
        self._paused = False
        self.consumer.resume(self.consumer.assignment())

    def close(self) -> None:
        self.commit()
        self.consumer.close()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned.update((tp.topic, tp.partition) for tp in partitions)
        log.info("partitions_assigned", partitions=sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions))
        if self._paused:
            consumer.incremental_assign(partitions)
            consumer.pause(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self.commit(only=keys)
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

    def _stats(self, raw: str) -> None:
        if self._on_lag is None:
            return
        stats = orjson.loads(raw)
        for topic, t in stats.get("topics", {}).items():
            for pid, p in t.get("partitions", {}).items():
                lag = p.get("consumer_lag", -1)
                if int(pid) >= 0 and lag >= 0:
                    self._on_lag(topic, int(pid), int(lag))

    def _error(self, err: KafkaError) -> None:
        log.warning("kafka_error", error=str(err), fatal=err.fatal())
