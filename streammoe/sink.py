"""The Kafka producer side: alerts, scores, mode events and dead letters, flushed before offsets move."""

from __future__ import annotations

from confluent_kafka import KafkaError, Message, Producer

from streammoe.config import KafkaSettings, producer_config
from streammoe.logs import get_logger

log = get_logger("streammoe.sink")

Headers = list[tuple[str, bytes]]


class DeliveryError(Exception):
    """The broker did not acknowledge every output of a batch; its input offsets must not be committed."""


def produce(producer: Producer, topic: str, value: bytes | None, key: bytes | None = None,
            headers: Headers | None = None, on_delivery=None) -> None:  # type: ignore[no-untyped-def]
    """Queue one message; while librdkafka's local queue is full, serve delivery reports and retry (backpressure,
    never a dropped message)."""
    while True:
        try:
            producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.05)


class Sink:
    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self.producer = Producer({**producer_config(kafka), "error_cb": self._error})
        self._failures: list[str] = []
        self.sent = 0

    def send(self, topic: str, value: bytes, key: bytes | None = None, headers: Headers | None = None) -> None:
        produce(self.producer, topic, value, key, headers, self._delivered)
        self.sent += 1

    def dead_letter(self, value: bytes | None, key: bytes | None, topic: str, partition: int, offset: int,
                    reason: str, detail: str) -> None:
        """The original bytes, untouched, with where they came from and why they were refused as headers."""
        headers = [
            ("source_topic", topic.encode()),
            ("source_partition", str(partition).encode()),
            ("source_offset", str(offset).encode()),
            ("reason", reason.encode()),
            ("detail", detail[:1000].encode()),
        ]
        self.send(self.kafka.dead_letter_topic, value if value is not None else b"", key, headers)

    def flush(self) -> None:
        """Block until everything sent so far is acknowledged; raise DeliveryError otherwise."""
        remaining = self.producer.flush(self.kafka.delivery_timeout_s)
        if remaining or self._failures:
            failures, self._failures = self._failures, []
            raise DeliveryError(f"{remaining} messages unacknowledged, {len(failures)} failed: {failures[:3]}")

    def poll(self) -> None:
        self.producer.poll(0)

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failures.append(f"{msg.topic()}: {err}")

    def _error(self, err: KafkaError) -> None:
        log.warning("kafka_error", error=str(err), fatal=err.fatal())
