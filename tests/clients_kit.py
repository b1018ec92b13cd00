"""Fake broker clients for the daemon (`Daemon(settings, clients=FakeClients(...))`): the loop's logic without a
broker. Every client writes what it is asked to do into one shared journal, so tests can assert on the order
of sends, flushes, stored offsets and commits."""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from streammoe.config import Settings
from streammoe.daemon import Daemon
from streammoe.daemon.clients import ErrorHook, SourceHooks
from streammoe.daemon.pipeline import Judged, Part
from streammoe.kafka.sink import DeadLetter, Headers
from streammoe.kafka.snapshots import SnapshotMessage, snapshot_partition
from streammoe.kafka.source import PartitionKey, Positions, positions
from streammoe.model.detector import LearnReport, MixtureDetector
from streammoe.novelty.events import ModeEvent
from streammoe.state.snapshot import SnapshotTransport
from streammoe.wire.records import RecordDecoder


@dataclass
class FakeMessage:
    """The part of confluent_kafka.Message the daemon reads."""

    _topic: str
    _partition: int
    _offset: int
    _value: bytes | None
    _key: bytes | None = None
    _headers: list[tuple[str, bytes]] | None = None
    _timestamp: int = 0  # epoch ms; 0: none (TIMESTAMP_NOT_AVAILABLE)

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_NOT_AVAILABLE

        return (TIMESTAMP_CREATE_TIME, self._timestamp) if self._timestamp else (TIMESTAMP_NOT_AVAILABLE, -1)

    def key(self) -> bytes | None:
        return self._key

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers

    def error(self) -> None:
        return None


class MemorySnapshotTopic:
    """The snapshot topic in memory, one log per snapshot partition (`partitions` of them)."""

    def __init__(self, partitions: int = 1) -> None:
        self.logs: list[list[SnapshotMessage]] = [[] for _ in range(partitions)]

    def send(self, key: str, value: bytes, headers: Headers | None = None, input_partition: int = -1) -> None:
        p = (
            snapshot_partition(input_partition, len(self.logs))
            if input_partition >= 0
            else zlib.crc32(key.encode()) % len(self.logs)
        )
        self.logs[p].append((key, value, {k: v for k, v in headers or [] if isinstance(v, bytes)}))

    def read(self, input_partitions: set[int] | None = None) -> Iterator[SnapshotMessage]:
        wanted = (
            range(len(self.logs))
            if input_partitions is None
            else sorted({snapshot_partition(p, len(self.logs)) for p in input_partitions})
        )
        for p in wanted:
            yield from list(self.logs[p])

    def close(self) -> None:
        pass


class FakeSource:
    """An input topic held in memory: `feed` appends records, `poll_batch` returns them in order of arrival.

    `on_next_poll(fn)` runs `fn` inside the next poll of any kind, as a rebalance callback runs inside
    librdkafka's consume."""

    def __init__(self, topic: str, partitions: int, journal: list[str], max_batch: int = 256) -> None:
        self.topic, self.partitions, self.journal, self.max_batch = topic, partitions, journal, max_batch
        self.hooks: SourceHooks | None = None
        self.queue: list[FakeMessage] = []
        self.next_offset = [0] * partitions
        self.assigned: set[PartitionKey] = set()
        self.stored: dict[PartitionKey, int] = {}
        self.committed: dict[PartitionKey, int] = {}
        self.paused = False
        self.polls = {"batch": 0, "paused": 0}
        self._at_next_poll: list[tuple[int, Callable[[], None]]] = []
        self.close_errors: list[Exception] = []

    def feed(self, values: list[bytes], partition: int = 0, key: bytes | None = None) -> list[FakeMessage]:
        msgs = []
        for v in values:
            msgs.append(FakeMessage(self.topic, partition, self.next_offset[partition], v, key))
            self.next_offset[partition] += 1
        self.queue += msgs
        return msgs

    def on_next_poll(self, fn: Callable[[], None]) -> None:
        self.at_poll(1, fn)

    def at_poll(self, n: int, fn: Callable[[], None]) -> None:
        """Run `fn` inside the n-th poll of any kind from now (1: the next one)."""
        self._at_next_poll.append((n, fn))

    def _serve(self) -> None:
        due = [fn for n, fn in self._at_next_poll if n <= 1]
        self._at_next_poll = [(n - 1, fn) for n, fn in self._at_next_poll if n > 1]
        for fn in due:
            fn()

    def subscribe(self) -> None:
        keys = [(self.topic, p) for p in range(self.partitions)]
        self.on_next_poll(lambda: self.assign(keys))

    def assign(self, keys: list[PartitionKey]) -> None:
        assert self.hooks is not None
        self.assigned.update(keys)
        self.journal.append(f"assigned {sorted(p for _, p in keys)}")
        self.hooks.on_assigned(keys)

    def revoke(self, keys: list[PartitionKey], lost: bool = False) -> None:
        assert self.hooks is not None
        self.journal.append(f"{'lost' if lost else 'revoked'} {sorted(p for _, p in keys)}")
        self.hooks.on_released(keys, lost)
        self.assigned.difference_update(keys)
        self.queue = [m for m in self.queue if (m.topic(), m.partition()) not in set(keys)]
        for k in keys:
            self.stored.pop(k, None)

    def poll_batch(self) -> list[FakeMessage]:  # type: ignore[override]
        self.polls["batch"] += 1
        self._serve()
        if self.paused:
            return []
        ready = [m for m in self.queue if (m.topic(), m.partition()) in self.assigned][: self.max_batch]
        taken = {id(m) for m in ready}
        self.queue = [m for m in self.queue if id(m) not in taken]
        return ready

    def poll_paused(self, timeout: float) -> list[FakeMessage]:
        self.polls["paused"] += 1
        self._serve()
        return []

    def mark_done(self, msgs: list[FakeMessage], at: Positions | None = None) -> None:  # type: ignore[override]
        topic, partitions, offsets = at if at is not None else positions(msgs)  # type: ignore[arg-type]
        for p in sorted(set(partitions.tolist())):
            key = (topic, int(p))
            if key in self.assigned:
                self.stored[key] = int(offsets[partitions == p].max()) + 1
                self.journal.append(f"store {p}:{self.stored[key]}")

    def commit(self) -> int:
        self.journal.append("commit")
        n = len(self.stored)
        self.committed.update(self.stored)
        self.stored = {}
        if n and self.hooks is not None:
            self.hooks.on_committed()
        return n

    def pause(self) -> None:
        self.paused = True
        self.journal.append("pause")

    def resume(self) -> None:
        self.paused = False
        self.journal.append("resume")

    def close(self, timeout: float, commit: bool = True) -> bool:
        """Like Source.close: commit, then leave the group on a helper thread, whose revoke calls the hooks there."""
        if commit:
            self.commit()
        self.journal.append("close")
        errors: list[Exception] = []

        def leave() -> None:
            try:
                if self.assigned:
                    self.revoke(sorted(self.assigned))
            except Exception as e:  # noqa: BLE001 - the test reads what the closing thread raised
                errors.append(e)

        closer = threading.Thread(target=leave, name="fake-consumer-close")
        closer.start()
        closer.join()
        self.close_errors = errors
        return not errors


@dataclass
class Sent:
    topic: str
    value: bytes | None
    key: bytes | None
    headers: Headers | None = None
    timestamp: int | None = None


class FakeSink:
    """Outputs kept in memory. `unacknowledged(n)`: the next n flushes report everything still pending (the
    broker is away), resending it each time."""

    def __init__(self, journal: list[str], dead_letter_topic: str = "dead") -> None:
        self.journal, self.dead_letter_topic = journal, dead_letter_topic
        self.sent: list[Sent] = []
        self.unacked: list[Sent] = []
        self.resent = 0
        self.last_failure = ""
        self.answers = True  # whether the cluster answers a metadata request
        self._fail_flushes = 0
        self.on_flush: Callable[[], None] | None = None

    def unacknowledged(self, flushes: int) -> None:
        self._fail_flushes = flushes

    @property
    def pending(self) -> int:
        return len(self.unacked)

    def on(self, topic: str) -> list[Sent]:
        return [s for s in self.sent if s.topic == topic]

    def send(self, topic: str, value: bytes | None, key: bytes | None = None, timestamp: int | None = None) -> None:
        self.unacked.append(Sent(topic, value, key, None, timestamp))

    def dead_letter(self, letter: DeadLetter) -> None:
        self.unacked.append(
            Sent(self.dead_letter_topic, letter.value, letter.key, letter.headers_out(), letter.timestamp)
        )

    def flush(self, timeout: float | None = None) -> int:
        if self.on_flush is not None:
            self.on_flush()
        if self._fail_flushes > 0 and self.unacked:
            self._fail_flushes -= 1
            self.resent += len(self.unacked)
            self.last_failure = "fake: timed out"
            self.journal.append(f"flush unacknowledged {len(self.unacked)}")
            return len(self.unacked)
        if self.unacked:
            self.journal.append(f"flush {len(self.unacked)}")
        self.sent += self.unacked
        self.unacked = []
        return 0

    def reachable(self, timeout: float) -> bool:
        return self.answers

    def drop_pending(self) -> int:
        dropped, self.unacked = len(self.unacked), []
        return dropped

    def poll(self) -> None:
        pass


class FakeControl:
    """The control topic: `feed` appends commands to partition 0; `poll` returns those past the position."""

    def __init__(self, journal: list[str], topic: str = "control") -> None:
        self.journal, self.topic = journal, topic
        self.assigned = False
        self.log: list[FakeMessage] = []
        self.position = 0
        self.rewound: list[dict[int, int]] = []

    def feed(self, value: bytes, key: bytes | None = None) -> None:
        self.log.append(FakeMessage(self.topic, 0, len(self.log), value, key))

    def start(self, positions: dict[int, int]) -> bool:
        self.assigned, self.position = True, positions.get(0, 0)
        return True

    def rewind(self, positions: dict[int, int]) -> None:
        self.rewound.append(positions)
        self.position = min(self.position, positions.get(0, 0))

    def poll(self, max_messages: int = 100) -> list[FakeMessage]:  # type: ignore[override]
        msgs = self.log[self.position : self.position + max_messages]
        self.position += len(msgs)
        return msgs

    def close(self) -> None:
        self.journal.append("close_control")


@dataclass
class FakeClients:
    """`Clients` for `Daemon(settings, clients=...)`, sharing one journal."""

    topic: str = "input"
    partitions: int = 1
    journal: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.source_client = FakeSource(self.topic, self.partitions, self.journal)
        self.sink_client = FakeSink(self.journal)
        self.control_client = FakeControl(self.journal)
        self.snapshot_topic: SnapshotTransport | None = None

    def snapshots(self) -> SnapshotTransport | None:
        return self.snapshot_topic

    def sink(self, on_error: ErrorHook) -> FakeSink:
        return self.sink_client

    def control(self, on_error: ErrorHook) -> FakeControl:
        return self.control_client

    def source(self, hooks: SourceHooks) -> FakeSource:
        self.source_client.hooks = hooks
        return self.source_client


CHANNELS = ["a", "b", "c"]


def fake_settings(tmp_path: Path, **sections: object) -> Settings:
    """Daemon settings for fake clients: three channels, a small fast model, no HTTP server, topics named by role."""
    base: dict[str, object] = {
        "kafka": {
            "input_topic": "input",
            "alerts_topic": "alerts",
            "dead_letter_topic": "dead",
            "events_topic": "events",
            "control_topic": "control",
            "commit_interval_s": 0.001,
        },
        "records": {"channels": CHANNELS},
        "checkpoint": {"dir": tmp_path / "ckpt", "warmup_records": 200, "interval_s": 3600},
        "http": {"enabled": False},
        "model": {"k_max": 2, "hidden": 8, "latent": 2, "n_samples": 2, "fit_steps": 20, "calibration_size": 64},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values} if isinstance(values, dict) else values  # type: ignore[dict-item]
    return Settings(**base)  # type: ignore[arg-type]


def fitted(seed: int = 0) -> MixtureDetector:
    """A small detector fitted on standard normal readings of CHANNELS (a second or so on one core)."""
    settings = fake_settings(Path("/nonexistent"))
    detector = MixtureDetector(len(CHANNELS), settings.model, CHANNELS)
    detector.fit(np.random.default_rng(seed).normal(size=(400, len(CHANNELS))).astype(np.float32))
    return detector


def make(
    tmp_path: Path, partitions: int = 1, snapshots: SnapshotTransport | None = None, **sections: object
) -> tuple[Daemon, FakeClients]:
    """A daemon on fake clients (its global scope warming up unless the test gives it a detector)."""
    clients = FakeClients(partitions=partitions)
    clients.snapshot_topic = snapshots
    return Daemon(fake_settings(tmp_path, **sections), clients=clients), clients


def records(
    rng: np.random.Generator, n: int, asset: str = "pump-1", start_ts: int = 0, shift: float = 0.0
) -> list[bytes]:
    rows = rng.normal(shift, 1.0, (n, len(CHANNELS)))
    return [
        orjson.dumps({"asset_id": asset, "ts": start_ts + i, "values": [round(float(v), 4) for v in row]})
        for i, row in enumerate(rows)
    ]


def publish_mode_added(
    tmp_path: Path,
    event: ModeEvent,
    learned_ids: dict[str, dict[int, str]] | Callable[[str], dict[str, dict[int, str]]] | None = None,
) -> tuple[Daemon, FakeClients]:
    """A fitted daemon publishes one batch of 40 records far off (an open incident) whose learning raised `event`
    (a `mode_added` over some of them), as if the model had just added that expert; `learned_ids` as Judged's, or
    made from the model's lineage."""
    daemon, clients = make(tmp_path)
    state = daemon.state
    state.detector = fitted()
    msgs = clients.source_client.feed(records(np.random.default_rng(0), 40, shift=40.0))
    decoded = RecordDecoder(daemon.settings.records).decode([m.value() for m in msgs])
    rows = np.arange(len(decoded))
    scored = state.detector.score_many(decoded.values, refs=rows.astype(np.int64), timestamps=decoded.ts)
    judged = Judged(
        parts=[Part("global", scored, rows, state.version, state.detector.expert_status())],
        learned=[("global", state.version, LearnReport(learned=30, events=[event]))],
        learned_ids=(learned_ids(state.lineage) if callable(learned_ids) else learned_ids) or {},
    )
    daemon.publisher.publish(msgs, decoded, judged)  # type: ignore[arg-type]
    return daemon, clients
