"""The broker clients the daemon uses, as the loop sees them, and the factory that builds the Kafka ones.

`Daemon(settings, clients=...)` takes any `Clients`: the Kafka ones by default (`KafkaClients`), fakes in unit
tests (tests/clients_kit.py), so the pipeline, publishing, verdicts and the commit order are tested
without a broker. The factory builds the snapshot topic, the sink and the control reader first and the source
last, because the source's rebalance hooks call into parts that use the others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from confluent_kafka import KafkaError, Message

from streammoe.config import Settings
from streammoe.kafka.control import ControlListener
from streammoe.kafka.sink import DeadLetter, Sink
from streammoe.kafka.snapshots import SnapshotTopic
from streammoe.kafka.source import PartitionKey, Positions, Source, SourceHooks
from streammoe.kafka.topics import configured_topics, report_missing
from streammoe.state.snapshot import SnapshotTransport

ErrorHook = Callable[[KafkaError], None]


def source_of(m: Message) -> tuple[str, int, int]:
    """A consumed message's topic, partition and offset (set on every message a consume returns without error)."""
    topic, partition, offset = m.topic(), m.partition(), m.offset()
    if topic is None or partition is None or offset is None:
        raise ValueError("a message without topic, partition or offset (not one the consumer returned)")
    return topic, partition, offset


class SourceClient(Protocol):
    """The input topic's consumer (streammoe.kafka.source.Source)."""

    assigned: set[PartitionKey]
    committed: dict[PartitionKey, int]

    def subscribe(self) -> None: ...
    def poll_batch(self) -> list[Message]: ...
    def mark_done(self, msgs: list[Message], at: Positions | None = None) -> None: ...
    def commit(self) -> int: ...
    def pause(self) -> None: ...
    def poll_paused(self, timeout: float) -> list[Message]: ...
    def resume(self) -> None: ...
    def close(self, timeout: float, commit: bool = True) -> bool: ...


class SinkClient(Protocol):
    """The producer of alerts, scores, events and dead letters (streammoe.kafka.sink.Sink)."""

    resent: int
    last_failure: str

    @property
    def pending(self) -> int: ...
    def send(self, topic: str, value: bytes | None, key: bytes | None = None, timestamp: int | None = None) -> None: ...
    def dead_letter(self, letter: DeadLetter) -> None: ...
    def flush(self, timeout: float | None = None) -> int: ...
    def reachable(self, timeout: float) -> bool: ...
    def drop_pending(self) -> int: ...
    def poll(self) -> None: ...


class ControlClient(Protocol):
    """The control topic's reader (streammoe.kafka.control.ControlListener)."""

    topic: str
    assigned: bool

    def start(self, positions: dict[int, int]) -> bool: ...
    def rewind(self, positions: dict[int, int]) -> None: ...
    def poll(self, max_messages: int = 100) -> list[Message]: ...
    def close(self) -> None: ...


class Clients(Protocol):
    def snapshots(self) -> SnapshotTransport | None: ...
    def sink(self, on_error: ErrorHook) -> SinkClient: ...
    def control(self, on_error: ErrorHook) -> ControlClient: ...
    def source(self, hooks: SourceHooks) -> SourceClient: ...


class KafkaClients:
    """The daemon's Kafka clients, configured from `settings.kafka` (the default `Clients`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def snapshots(self) -> SnapshotTransport | None:
        """The snapshot topic, when STREAMMOE_SNAPSHOT__TOPIC names one."""
        s = self.settings.snapshot
        return SnapshotTopic(self.settings.kafka, s.topic, s.read_timeout_s) if s.topic else None

    def sink(self, on_error: ErrorHook) -> SinkClient:
        """The producer; it also names, once, each configured topic the cluster does not have (kafka/topics.py)."""
        sink = Sink(self.settings.kafka, on_error=on_error)
        incidents = self.settings.incidents
        topics = configured_topics(
            self.settings.kafka,
            self.settings.snapshot.topic,
            incidents_topic=incidents.topic if incidents.enabled else None,
        )
        report_missing(sink.producer, topics)
        return sink

    def control(self, on_error: ErrorHook) -> ControlClient:
        return ControlListener(self.settings.kafka, on_error=on_error)

    def source(self, hooks: SourceHooks) -> SourceClient:
        return Source(self.settings.kafka, self.settings.batching, hooks)
