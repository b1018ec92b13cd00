"""Broker outages without a broker: the watch's state, readiness and metrics; outputs sent again, headers kept."""

from __future__ import annotations

import time

from confluent_kafka import KafkaError

from streammoe.config import KafkaSettings
from streammoe.kafka.outage import BrokerWatch
from streammoe.kafka.sink import DeadLetter, Sink
from streammoe.metrics import Health, Metrics
from streammoe.testing.broker import free_port


def test_an_outage_makes_the_daemon_unready_once_and_ends_cleanly() -> None:
    metrics, health = Metrics(), Health(stale_s=30)
    health.progress(assigned=4)
    watch = BrokerWatch(metrics, health)
    assert health.ready() == (True, "ok") and not watch.down

    watch.client_error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    for _ in range(50):  # librdkafka repeats itself on every reconnect attempt
        watch.client_error(KafkaError(KafkaError._TRANSPORT, "Connection refused"))
    watch.begin("outputs not acknowledged")  # a second sign of the same outage
    ok, why = health.ready()
    assert watch.down and not ok and why.startswith("broker unreachable: ") and "brokers are down" in why
    assert metrics.registry.get_sample_value("streammoe_broker_unreachable") == 1
    assert metrics.registry.get_sample_value("streammoe_broker_outages_total") == 1
    assert watch._held_back == 51

    watch.end()
    assert not watch.down and health.ready() == (True, "ok")
    assert metrics.registry.get_sample_value("streammoe_broker_unreachable") == 0
    watch.end()  # idempotent
    assert metrics.registry.get_sample_value("streammoe_broker_outages_total") == 1


def test_closing_clients_is_not_an_outage() -> None:
    metrics, health = Metrics(), Health(stale_s=30)
    watch = BrokerWatch(metrics, health)
    watch.closing()
    watch.client_error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    assert not watch.down and metrics.registry.get_sample_value("streammoe_broker_outages_total") == 0


def test_outputs_the_broker_never_took_are_sent_again_with_their_headers() -> None:
    kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", delivery_timeout_s=0.3)  # nothing listens
    sink = Sink(kafka, on_error=lambda err: None)
    produced: list[tuple] = []
    real_produce = sink._produce
    sink._produce = lambda *args: (produced.append(args), real_produce(*args))  # type: ignore[method-assign]
    sink.dead_letter(DeadLetter(b"{bad", b"k", "in", 2, 17, "not_json", "unexpected character"))
    sink.send("alerts", b'{"alert": 1}', b"pump-1")
    deadline, pending = time.monotonic() + 10, 0
    while sink.resent < 2 and time.monotonic() < deadline:
        pending = sink.flush(0.5)
    # Each timed-out output is queued again (on a slow machine some twice), none dropped or doubled.
    assert sink.resent >= 2 and pending == 2 == sink.pending, "timed out outputs are queued again, not dropped"
    assert sink.sent == 2 and "Message timed out" in sink.last_failure
    first, again = produced[:2], produced[2:]
    # The copies are what was sent, headers included (they come from the sink: a delivery report has none).
    assert {repr(args) for args in again} == {repr(args) for args in first}
    dead = next(args for args in again if args[0] == kafka.dead_letter_topic)
    assert dict(dead[3])["source_offset"] == b"17" and dict(dead[3])["reason"] == b"not_json"
    assert sink.drop_pending() == 2 and sink.pending == 0
