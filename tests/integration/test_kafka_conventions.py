"""Kafka conventions of the outputs, checked against the test broker and read back by kafka-python (a client that
shares no code with librdkafka): murmur2 partitioning, record timestamps, dead-letter headers (the input's and
Kafka Connect's), tombstones apart from empty values, and a clear log for a missing topic."""

from __future__ import annotations

import time
import uuid

import pytest
from structlog.testing import capture_logs

from streammoe.config import KafkaSettings
from streammoe.kafka.control import ControlListener
from streammoe.kafka.sink import DeadLetter, Sink
from streammoe.kafka.topics import configured_topics, report_missing

pytestmark = pytest.mark.integration
kafka_python = pytest.importorskip("kafka", reason="kafka-python (dev extra) reads the outputs back")


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(15)


def read_back(bootstrap: str, topic: str, expected: int, timeout: float = 20.0) -> list:
    """Every record of `topic` through kafka-python's consumer (no group)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None, consumer_timeout_ms=1000
    )
    try:
        deadline = time.monotonic() + timeout
        while not consumer.partitions_for_topic(topic) and time.monotonic() < deadline:
            time.sleep(0.2)
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        out: list = []
        while len(out) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                out.extend(batch)
        return out
    finally:
        consumer.close()


def java_partition(key: bytes, partitions: int) -> int:
    """The partition Java clients and kafka-python pick for `key`."""
    from kafka.partitioner.default import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions


def test_outputs_keyed_by_asset_land_where_java_clients_put_the_key_with_the_records_time(broker, topic_name) -> None:
    topic = topic_name("alerts")
    create_topic(broker, topic, 6)
    sink = Sink(KafkaSettings(bootstrap_servers=broker))
    assets = [f"pump-{i}".encode() for i in range(12)]
    ts = 1_732_000_000_000
    for i, asset in enumerate(assets):
        sink.send(topic, b'{"alert": %d}' % i, asset, timestamp=ts + i)
    assert sink.flush(15) == 0
    got = read_back(broker, topic, len(assets))
    assert len(got) == len(assets)
    crc32_would_differ = 0
    for m in got:
        assert m.partition == java_partition(m.key, 6), m.key
        assert m.timestamp == ts + assets.index(m.key)  # the record's time, not the daemon's clock
        crc32_would_differ += m.partition != _crc32_partition(m.key, 6)
    assert crc32_would_differ, "the keys chosen must tell murmur2 from librdkafka's CRC32 default"


def _crc32_partition(key: bytes, partitions: int) -> int:
    import zlib

    return zlib.crc32(key) % partitions


def test_outputs_take_the_clock_when_configured(broker, topic_name) -> None:
    topic = topic_name("scores")
    sink = Sink(KafkaSettings(bootstrap_servers=broker, output_timestamp="now"))
    before = int(time.time() * 1000)
    sink.send(topic, b"{}", b"a", timestamp=5)
    assert sink.flush(15) == 0
    (m,) = read_back(broker, topic, 1)
    assert before - 1000 <= m.timestamp <= int(time.time() * 1000) + 1000


def test_dead_letters_keep_the_input_and_carry_streammoe_and_connect_headers(broker, topic_name) -> None:
    dlq = topic_name("dead")
    sink = Sink(KafkaSettings(bootstrap_servers=broker, dead_letter_topic=dlq))
    input_headers = [("traceparent", b"00-abc-01"), ("source_system", b"scada-3")]
    sink.dead_letter(
        DeadLetter(
            b"{not json",
            b"pump-1",
            "sensors",
            3,
            1234,
            "not_json",
            "unexpected character",
            headers=input_headers,
            timestamp=1_732_000_000_123,
        )
    )
    sink.dead_letter(DeadLetter(None, b"pump-2", "sensors", 3, 1235, "tombstone", "record has a null value"))
    sink.dead_letter(DeadLetter(b"", b"pump-3", "sensors", 3, 1236, "empty", "record has an empty value"))
    assert sink.flush(15) == 0
    got = {m.key: m for m in read_back(broker, dlq, 3)}
    bad = got[b"pump-1"]
    headers = dict(bad.headers)
    assert bad.value == b"{not json" and bad.timestamp == 1_732_000_000_123
    assert [h for h in bad.headers[:2]] == input_headers, "the input's headers first, untouched"
    assert headers["reason"] == b"not_json" and headers["source_offset"] == b"1234"
    assert headers["__connect.errors.topic"] == b"sensors"
    assert headers["__connect.errors.partition"] == b"3"
    assert headers["__connect.errors.offset"] == b"1234"
    assert headers["__connect.errors.exception.message"] == b"not_json: unexpected character"
    assert got[b"pump-2"].value is None, "a tombstone stays a null value"
    assert got[b"pump-3"].value == b"", "an empty value stays empty"
    assert dict(got[b"pump-2"].headers)["reason"] == b"tombstone"


def test_missing_topics_are_named_once_and_not_created(broker, topic_name) -> None:
    present = topic_name("alerts")
    create_topic(broker, present, 1)
    kafka = KafkaSettings(
        bootstrap_servers=broker,
        alerts_topic=present,
        input_topic=topic_name("input"),
        control_topic=topic_name("control"),
        dead_letter_topic=topic_name("dead"),
        events_topic=topic_name("events"),
    )
    sink, snapshots = Sink(kafka), topic_name("snaps")
    with capture_logs() as logs:
        missing = report_missing(sink.producer, configured_topics(kafka, snapshot_topic=snapshots))
    named = {e["topic"]: e for e in logs if e["event"] == "topic_missing"}
    assert (
        set(named)
        == {t.name for t in missing}
        == {kafka.input_topic, kafka.control_topic, kafka.dead_letter_topic, kafka.events_topic, snapshots}
    )
    assert named[kafka.input_topic]["setting"] == "STREAMMOE_KAFKA__INPUT_TOPIC"
    assert "nothing is consumed" in named[kafka.input_topic]["consequence"]
    assert present not in named
    assert (
        report_missing(sink.producer, configured_topics(kafka))
        and kafka.input_topic not in sink.producer.list_topics(timeout=5).topics
    )

    control = ControlListener(kafka)
    try:
        with capture_logs() as logs:
            assert control.start({}) is False and control.start({}) is False
        said = [e for e in logs if e["event"] == "control_topic_missing"]
        assert len(said) == 1 and said[0]["topic"] == kafka.control_topic
        create_topic(broker, kafka.control_topic, 2)
        with capture_logs() as logs:
            assert control.start({}) is True
        assert [e["partitions"] for e in logs if e["event"] == "control_topic_assigned"] == [2]
    finally:
        control.close()


def test_kafka_python_reads_what_librdkafka_wrote_with_compression(broker, topic_name) -> None:
    """kafka-python as producer (gzip) and consumer of the same topic: the foreign client and the broker agree."""
    from kafka import KafkaProducer

    topic = f"interop-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(bootstrap_servers=broker, compression_type="gzip", acks="all")
    for i in range(20):
        producer.send(
            topic, key=f"pump-{i % 4}".encode(), value=b'{"i": %d}' % i, timestamp_ms=1_000 + i, headers=[("h", b"v")]
        )
    producer.flush(15)
    producer.close()
    got = read_back(broker, topic, 20)
    assert sorted(m.value for m in got) == sorted(b'{"i": %d}' % i for i in range(20))
    assert all(m.partition == java_partition(m.key, 4) for m in got), "kafka-python keys with murmur2"


def test_kafka_python_in_and_out_of_the_daemon(broker, topic_name, bootstrap_model, tmp_path, monkeypatch) -> None:
    """kafka-python (gzip) produces the input; the daemon scores it; kafka-python reads the outputs: an asset's
    alert sits on the partition murmur2 gives its key (the partition of its input), stamped with the record's ts;
    a refused record's dead letter keeps its headers and timestamp and adds Kafka Connect's."""
    import numpy as np
    import orjson
    from daemon_kit import env_for, make_daemon, normal_rows, record, topics
    from kafka import KafkaProducer

    t = topics(topic_name)
    for role in ("input", "alerts"):
        create_topic(broker, t[role], 6)
    rng = np.random.default_rng(3)
    base = 1_732_000_000_000
    producer = KafkaProducer(bootstrap_servers=broker, compression_type="gzip", acks="all")
    rows = normal_rows(rng, 600)
    planted = {}
    for i, row in enumerate(rows):
        asset = f"pump-{i % 6}"
        if i >= 540 and i % 6 not in planted:  # one planted anomaly per asset
            row = row.copy()
            row[2] += 40.0
            planted[i % 6] = base + i
        producer.send(t["input"], key=asset.encode(), value=record(asset, base + i, row), timestamp_ms=base + i)
    producer.send(
        t["input"], key=b"pump-0", value=b"{not json", timestamp_ms=base + 999, headers=[("traceparent", b"00-feed-01")]
    )
    producer.flush(15)
    producer.close()
    n = len(rows) + 1

    daemon = make_daemon(monkeypatch, env_for(broker, t, topic_name("group"), tmp_path / "ckpt", bootstrap_model))
    summary = daemon.run(max_records=n, timeout_s=90)
    assert summary.records_in == n

    alerts = read_back(broker, t["alerts"], summary.alerts)
    assert len(alerts) == summary.alerts >= len(planted)
    for m in alerts:
        alert = orjson.loads(m.value)
        assert m.key == alert["asset"].encode()
        assert m.partition == java_partition(m.key, 6) == alert["source"]["partition"]
        assert m.timestamp == alert["ts"], "the record's time, not the daemon's clock"
    assert {orjson.loads(m.value)["ts"] for m in alerts} >= set(planted.values())

    (dead,) = read_back(broker, t["dead"], 1)
    headers = dict(dead.headers)
    assert dead.value == b"{not json" and dead.timestamp == base + 999
    assert dead.headers[0] == ("traceparent", b"00-feed-01")
    assert headers["reason"] == b"not_json" and headers["__connect.errors.topic"] == t["input"].encode()
    assert headers["__connect.errors.offset"] == headers["source_offset"]
