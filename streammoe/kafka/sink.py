"""The Kafka producer side: alerts, scores, mode events and dead letters, flushed before offsets move.

Outputs the broker did not acknowledge (it was down, or did not answer within `delivery_timeout_s`) are sent
again by `flush` until it takes them, so a broker outage delays a batch but never drops its outputs; a resent
output may reach the topic twice (alerts carry `alert_id` for deduplication). The producer is deliberately not
idempotent: Tansu forgets producer ids when it restarts and an idempotent producer then never recovers
(docs/platform.md), while a plain one just delivers what it buffered, so the same producer serves before and
after an outage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from confluent_kafka import TIMESTAMP_CREATE_TIME, KafkaError, KafkaException, Message, Producer

from streammoe.config import KafkaSettings, producer_config
from streammoe.logs import get_logger

log = get_logger("streammoe.kafka.sink")

Headers = list[tuple[str, str | bytes | None]]  # as confluent-kafka types them
PARTITION_UA = -1  # librdkafka's "unassigned": the configured partitioner picks (produce's own default)

# Delivery failures that sending again cannot fix: the daemon stops (exit 1) instead of retrying forever.
PERMANENT = {
    KafkaError.MSG_SIZE_TOO_LARGE,
    KafkaError.RECORD_LIST_TOO_LARGE,
    KafkaError.INVALID_RECORD,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.TOPIC_EXCEPTION,
    KafkaError.INVALID_REQUIRED_ACKS,
    KafkaError._INVALID_ARG,
}


class DeliveryError(Exception):
    """The broker refused an output for good (too large, not authorised, ...): retrying cannot help."""


def produce(
    producer: Producer,
    topic: str,
    value: bytes | None,
    key: bytes | None = None,
    headers: Headers | None = None,
    on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
    partition: int | None = None,
    timestamp: int = 0,
) -> None:
    """Queue one message (`timestamp`: epoch ms, 0 = now); while librdkafka's local queue is full, serve delivery
    reports and retry (backpressure, never a dropped message)."""
    while True:
        try:
            producer.produce(
                topic,
                value=value,
                key=key,
                headers=headers,
                on_delivery=on_delivery,
                partition=PARTITION_UA if partition is None else partition,
                timestamp=timestamp,
            )
            return
        except BufferError:
            producer.poll(0.05)


def record_timestamp(ts: int | None) -> int:
    """A record's `ts` as a Kafka timestamp: epoch milliseconds, or 0 (the producer's clock) when it cannot be one
    (librdkafka takes 0 for "now" and refuses negatives)."""
    return ts if ts is not None and 0 < ts < MAX_TIMESTAMP_MS else 0


MAX_TIMESTAMP_MS = 253_402_300_800_000  # 10000-01-01: beyond it `ts` is not epoch milliseconds


@dataclass(frozen=True)
class DeadLetter:
    """A refused input record as the dead-letter topic keeps it: its value (a tombstone stays a null value, an empty
    one stays empty), key, `headers` and `timestamp` (the input's own Kafka timestamp) untouched, then where it came
    from and why it was refused, as streammoe's headers and as Kafka Connect's DLQ headers (read by existing DLQ
    tooling). One type for the Sink and its fakes, so the rule is written once."""

    value: bytes | None
    key: bytes | None
    topic: str
    partition: int
    offset: int
    reason: str
    detail: str
    headers: Headers | None = None
    timestamp: int | None = None

    def headers_out(self) -> Headers:
        """The input's headers first, then streammoe's and Kafka Connect's."""
        ours = dead_letter_headers(self.topic, self.partition, self.offset, self.reason, self.detail)
        return [*(self.headers or []), *ours]


class Sink:
    def __init__(self, kafka: KafkaSettings, on_error: Callable[[KafkaError], None] | None = None) -> None:
        self.kafka = kafka
        self.producer = Producer({**producer_config(kafka), "error_cb": on_error or self._error})
        self._retry: list[tuple[str, bytes | None, bytes | None, Headers | None, int]] = []
        self._stamp = kafka.output_timestamp == "record"
        self._permanent: list[str] = []
        self.sent = 0
        self.resent = 0  # outputs sent again after a failed delivery
        # Outputs queued and not yet reported on. librdkafka's own queue length also counts its pending events (a
        # "brokers down" error among them), so it can read one more than the outputs in flight.
        self._unreported = 0
        self.last_failure = ""

    def send(self, topic: str, value: bytes | None, key: bytes | None = None, timestamp: int | None = None) -> None:
        """Queue one output. `timestamp`: the epoch-ms time it is about (the record's `ts`), used as its Kafka
        timestamp when STREAMMOE_KAFKA__OUTPUT_TIMESTAMP=record (the default); else, or when None, the clock's."""
        self._produce(topic, value, key, None, record_timestamp(timestamp) if self._stamp else 0)
        self.sent += 1

    def _produce(
        self, topic: str, value: bytes | None, key: bytes | None, headers: Headers | None, timestamp: int = 0
    ) -> None:
        # A delivery report carries the value, key and timestamp but not the headers: a message with headers keeps
        # them here, in case it has to be sent again.
        report = self._delivered if headers is None else partial(self._delivered, headers=headers)
        produce(self.producer, topic, value, key, headers, report, timestamp=timestamp)
        self._unreported += 1

    def dead_letter(self, letter: DeadLetter) -> None:
        """The original record, untouched, under its own Kafka timestamp, with where it came from and why it was
        refused (DeadLetter)."""
        self._produce(
            self.kafka.dead_letter_topic,
            letter.value,
            letter.key,
            letter.headers_out(),
            record_timestamp(letter.timestamp),
        )
        self.sent += 1

    def flush(self, timeout: float | None = None) -> int:
        """Serve delivery reports for up to `timeout` seconds (default `delivery_timeout_s`), send again what the
        broker failed to take, and return how many outputs are still unacknowledged: 0 means the broker holds
        everything sent so far. DeliveryError for a failure no retry can fix."""
        self.producer.flush(self.kafka.delivery_timeout_s if timeout is None else timeout)
        if self._permanent:
            failures, self._permanent = self._permanent, []
            raise DeliveryError(f"{len(failures)} outputs refused: {failures[:3]}")
        retry, self._retry = self._retry, []
        for topic, value, key, headers, timestamp in retry:
            self._produce(topic, value, key, headers, timestamp)
        self.resent += len(retry)
        return self.pending

    @property
    def pending(self) -> int:
        """Outputs sent but not yet acknowledged (each gets exactly one delivery report, purged ones included)."""
        return self._unreported + len(self._retry)

    def reachable(self, timeout: float) -> bool:
        """Whether the cluster answers a metadata request within `timeout` seconds (creates no topic)."""
        try:
            self.producer.list_topics(timeout=timeout)
        except KafkaException:
            return False
        return True

    def drop_pending(self) -> int:
        """Give up on what the broker has not acknowledged (at shutdown during an outage, so that closing the
        producer does not wait for it); the batches those outputs belong to were not committed. Returns how many."""
        dropped, self._retry = self.pending, []
        self.producer.purge()
        self.producer.flush(0)  # serve the purge's delivery reports
        self._unreported = 0  # a purged request's report may come later; it is counted as dropped here
        return dropped

    def poll(self) -> None:
        self.producer.poll(0)

    def _delivered(self, err: KafkaError | None, msg: Message, headers: Headers | None = None) -> None:
        self._unreported = max(0, self._unreported - 1)
        if err is None:
            return
        if err.fatal() or err.code() in PERMANENT:
            self._permanent.append(f"{msg.topic()}: {err}")
        elif err.code() not in (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT):
            topic = msg.topic()
            assert topic is not None, "a delivery report names its topic"
            kind, timestamp = msg.timestamp()
            self._retry.append(
                (
                    topic,
                    msg.value(),
                    msg.key(),
                    headers,
                    timestamp if kind == TIMESTAMP_CREATE_TIME and timestamp > 0 else 0,
                )
            )
            self.last_failure = f"{msg.topic()}: {err.str()}"

    def _error(self, err: KafkaError) -> None:
        log.warning("kafka_error", error=str(err), fatal=err.fatal())


def dead_letter_headers(topic: str, partition: int, offset: int, reason: str, detail: str) -> Headers:
    """Where a refused record came from and why, as streammoe's headers and as Kafka Connect's DLQ headers (so
    existing DLQ tooling reads them); `detail` is cut to 1,000 characters."""
    detail = detail[:1000]
    return [
        ("source_topic", topic.encode()),
        ("source_partition", str(partition).encode()),
        ("source_offset", str(offset).encode()),
        ("reason", reason.encode()),
        ("detail", detail.encode()),
        ("__connect.errors.topic", topic.encode()),
        ("__connect.errors.partition", str(partition).encode()),
        ("__connect.errors.offset", str(offset).encode()),
        ("__connect.errors.exception.class.name", f"streammoe.{reason}".encode()),
        ("__connect.errors.exception.message", f"{reason}: {detail}".encode()),
    ]
