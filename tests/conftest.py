"""Shared fixtures: a real Tansu broker (memory storage) on a free loopback port, and topic helpers."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from streammoe.kafka.sink import produce as produce_message


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tests run torch as the daemon does (STREAMMOE_TORCH_THREADS=1): on a shared 2-core box a second OpenMP
    thread spin-waits, and fits ran 10-100x slower with torch's default."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def one_torch_thread_per_test() -> Iterator[None]:
    """And each test starts with one, whatever ran before it (an in-process daemon sets its own
    STREAMMOE_TORCH_THREADS), and leaves the count as it found it: no test module needs its own copy."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """Bootstrap address of a Tansu broker that lives for the whole test session."""
    from streammoe.testing.broker import EmbeddedBroker

    with EmbeddedBroker() as b:
        yield b.bootstrap


@pytest.fixture()
def topic_name(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """`topic_name("alerts")` -> a topic name unique to this test (named after it, for reading broker logs)."""
    base = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)[:80].strip("-")
    suffix = uuid.uuid4().hex[:6]
    return lambda role: f"{base}-{role}-{suffix}"


@dataclass
class Consumed:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


def produce(bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes | None]]) -> list[tuple[int, int]]:
    """Produce (key, value) pairs, wait for every acknowledgement, and return their (partition, offset)s, the one of
    item i at position i.

    Tansu's high watermark is the last batch's base offset + 1, not the log end, so tests take the truth
    about what a topic holds from delivery reports instead."""
    from confluent_kafka import Producer

    errors: list[str] = []
    delivered: list[tuple[int, int] | None] = [None] * len(items)

    def on_delivery(i: int):  # type: ignore[no-untyped-def]
        def report(err, msg) -> None:  # type: ignore[no-untyped-def]
            if err:
                errors.append(str(err))
            else:
                delivered[i] = (msg.partition(), msg.offset())

        return report

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
    for i, (key, value) in enumerate(items):
        produce_message(p, topic, value, key, on_delivery=on_delivery(i))
    assert p.flush(30) == 0 and not errors and None not in delivered, errors[:3]
    return delivered  # type: ignore[return-value]


def log_ends(delivered: list[tuple[int, int]]) -> dict[int, int]:
    """Per partition, the offset after the last delivered record (where a finished consumer commits)."""
    ends: dict[int, int] = {}
    for p, o in delivered:
        ends[p] = max(ends.get(p, 0), o + 1)
    return ends


def consume_all(
    bootstrap: str,
    topic: str,
    expected: int | None = None,
    idle_s: float = 1.5,
    timeout: float = 30.0,
    fetch_wait_ms: int = 10,
) -> list[Consumed]:
    """Every message in `topic` from the start, without joining a group: until `expected` messages arrived,
    or nothing new came for `idle_s` (a topic never written to reads as empty). Tansu on S3 storage answers a
    fetch with nothing when listing the bucket takes longer than `fetch_wait_ms`: give it ~500 there."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": fetch_wait_ms,
            "allow.auto.create.topics": False,
        }
    )
    try:
        meta = c.list_topics(topic, timeout=10).topics[topic]
        if meta.error is not None:
            return []
        c.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        out: list[Consumed] = []
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() < deadline and (expected is None or len(out) < expected):
            msgs = c.consume(num_messages=1000, timeout=0.1)
            for m in msgs:
                if m.error() is None:
                    out.append(
                        Consumed(m.topic(), m.partition(), m.offset(), m.key(), m.value(), dict(m.headers() or []))
                    )
            if msgs:
                last = time.monotonic()
            elif expected is None and time.monotonic() - last > idle_s:
                break
        return out
    finally:
        c.close()


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed positions for partitions that have one, read without joining the group."""
    from benchmarks.scaleout import committed

    return committed(bootstrap, group, topic)


@pytest.fixture(scope="module")
def bootstrap_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model fitted on the daemon kit's synthetic normal data, as `streammoe fit` would leave it."""
    import numpy as np
    from daemon_kit import CHANNELS, normal_rows

    from streammoe.model.config import ModelConfig
    from streammoe.model.detector import MixtureDetector
    from streammoe.state.persistence import save_detector

    x = normal_rows(np.random.default_rng(0), 4000)
    detector = MixtureDetector(len(CHANNELS), ModelConfig(fit_steps=200, n_samples=2, k_max=2), CHANNELS)
    detector.fit(x)
    return save_detector(detector, tmp_path_factory.mktemp("boot") / "model")
