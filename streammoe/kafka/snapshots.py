"""The snapshot topic as bytes: keyed messages written one at a time, and the whole log read back in order.

What the bytes mean (manifests, chunks, slots, checksums) is streammoe.state.snapshot's business; this module
only moves them, so it needs neither torch nor the model. A scope's snapshots go to the snapshot partition with
its input partition's number (wrapped when the snapshot topic has fewer), so a worker taking over input
partitions reads only the matching snapshot partitions.

Each message is flushed on its own: Tansu reports a partition's end as the last batch's base offset + 1, so a
multi-record batch at the end of the log would hide its tail from a reader that stops at the high watermark.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from streammoe import heartbeat
from streammoe.config import KafkaSettings, consumer_config, producer_config
from streammoe.kafka.sink import Headers, produce

SnapshotMessage = tuple[str, bytes, dict[str, bytes]]  # key, value, headers


class SnapshotError(Exception):
    """A snapshot could not be written, or none usable could be read."""


def snapshot_partition(input_partition: int, partitions: int) -> int:
    """Where the snapshots of a scope living on `input_partition` go: the same number, wrapped if the snapshot
    topic has fewer partitions."""
    return input_partition % partitions


class SnapshotTopic:
    """Writes and reads the snapshot topic; every write waits for the broker's acknowledgement."""

    def __init__(self, kafka: KafkaSettings, topic: str, read_timeout_s: float = 30.0) -> None:
        self.kafka, self.topic, self.read_timeout_s = kafka, topic, read_timeout_s
        self.timeout_s = kafka.delivery_timeout_s
        self.producer = Producer(producer_config(kafka))
        self._errors: list[str] = []
        self._partitions = 0

    def send(self, key: str, value: bytes, headers: Headers | None = None, input_partition: int = -1) -> None:
        """One message, acknowledged before this returns (SnapshotError if it is not). `input_partition`: the
        input partition the scope lives on (-1: none, the key decides the snapshot partition)."""
        target = None if input_partition < 0 else snapshot_partition(input_partition, self.partition_count())
        produce(self.producer, self.topic, value, key.encode(), headers, self._delivered, target)
        if self.producer.flush(self.timeout_s) or self._errors:
            errors, self._errors = self._errors, []
            raise SnapshotError(f"snapshot message {key!r} not acknowledged: {errors[:3] or 'timed out'}")

    def partition_count(self) -> int:
        if not self._partitions:
            try:
                meta = self.producer.list_topics(self.topic, timeout=self.timeout_s).topics.get(self.topic)
            except KafkaException as e:
                raise SnapshotError(f"snapshot topic {self.topic}: {e}") from e
            if meta is None or meta.error is not None or not meta.partitions:
                raise SnapshotError(
                    f"snapshot topic {self.topic} does not exist (create it, compacted, with as many "
                    f"partitions as the input topic): {meta.error if meta else 'no metadata'}"
                )
            self._partitions = len(meta.partitions)
        return self._partitions

    def close(self) -> None:
        self.producer.flush(self.timeout_s)

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._errors.append(str(err))

    def read(self, input_partitions: set[int] | None = None) -> Iterator[SnapshotMessage]:
        """Every message of the topic (of the snapshot partitions `input_partitions` map to, or all) from the start
        to the end it had when reading began, in order per partition; SnapshotError if that takes longer than
        `read_timeout_s`."""
        conf = consumer_config(self.kafka)
        conf.update(
            {
                "group.id": f"{self.kafka.group_id}-snapshot-reader",
                "enable.partition.eof": False,
                "allow.auto.create.topics": False,
            }
        )
        conf.pop("statistics.interval.ms", None)
        consumer = Consumer(conf)
        timeout_s = self.read_timeout_s
        try:
            meta = consumer.list_topics(self.topic, timeout=timeout_s).topics.get(self.topic)
            if meta is None or meta.error is not None:
                return
            wanted = (
                set(meta.partitions)
                if input_partitions is None
                else {snapshot_partition(p, len(meta.partitions)) for p in input_partitions}
            )
            ends = {}
            for p in sorted(wanted):
                low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=timeout_s)
                if high > low:
                    ends[p] = high
            if not ends:
                return
            consumer.assign([TopicPartition(self.topic, p, 0) for p in ends])
            deadline = time.monotonic() + timeout_s
            while ends:
                if time.monotonic() > deadline:
                    raise SnapshotError(f"reading {self.topic} timed out with partitions {sorted(ends)} unfinished")
                heartbeat.beat("reading scope snapshots")  # /healthz: busy, not stuck
                for m in consumer.consume(num_messages=500, timeout=0.2):
                    if m.error() is not None:
                        continue
                    p = m.partition()
                    if p is not None and p in ends:
                        yield (m.key() or b"").decode(), m.value() or b"", _headers(m)
                        if (m.offset() or 0) + 1 >= ends[p]:
                            del ends[p]
        finally:
            consumer.close()


def _headers(m: Message) -> dict[str, bytes]:
    """A message's headers by name (a snapshot's are bytes; a missing value reads as empty)."""
    raw = m.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return {k: v.encode() if isinstance(v, str) else (v or b"") for k, v in pairs}
