"""Broker outages as the daemon sees them: one state shared by its Kafka clients, /readyz, a metric and the logs.

librdkafka reconnects on its own and reports every failed attempt through `error_cb` (several a second per
client while a broker is down), so an outage is logged once when it begins (`broker_unreachable`) and once when
it ends (`broker_reachable`, with how long it lasted and how many client errors were held back); in between the
daemon reports not-ready with the reason.

An outage begins when a client reports that every broker is down (a refused or dropped connection), or when an
output was not acknowledged in time (`STREAMMOE_KAFKA__DELIVERY_TIMEOUT_S`): a broker that is frozen or behind
a network that drops packets refuses nothing, it just never answers. It ends when the broker acknowledges every
pending output, or answers a metadata request while nothing is pending.
"""

from __future__ import annotations

import time

from confluent_kafka import KafkaError

from streammoe.logs import get_logger
from streammoe.metrics import Health, Metrics

log = get_logger("streammoe.kafka.outage")

# Client errors that only repeat what an outage already says: held back (counted) while one lasts.
_OUTAGE_NOISE = {KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE, KafkaError._TIMED_OUT}


class BrokerWatch:
    def __init__(self, metrics: Metrics, health: Health) -> None:
        self.metrics, self.health = metrics, health
        self.since: float | None = None  # monotonic start of the outage in progress
        self._held_back = 0
        self._closing = False

    @property
    def down(self) -> bool:
        return self.since is not None

    def client_error(self, err: KafkaError) -> None:
        """`error_cb` for every Kafka client of the daemon (served on the loop's thread by poll/consume/flush)."""
        if self._closing:  # closing a client takes its connections down, which it reports as all brokers down
            log.debug("kafka_error", error=str(err), fatal=err.fatal())
            return
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self.begin(str(err))
        if self.down and err.code() in _OUTAGE_NOISE:
            self._held_back += 1
            return
        log.warning("kafka_error", error=str(err), fatal=err.fatal())

    def closing(self) -> None:
        """The daemon is closing its clients: what they report now is not an outage."""
        self._closing = True

    def begin(self, reason: str) -> None:
        if self.down:
            return
        self.since, self._held_back = time.monotonic(), 0
        log.warning("broker_unreachable", reason=reason)
        self.metrics.broker_outages.inc()
        self.metrics.broker_unreachable.set(1)
        self.health.broker_unreachable(reason)

    def end(self) -> None:
        if self.since is None:
            return
        seconds, self.since = time.monotonic() - self.since, None
        log.info("broker_reachable", outage_seconds=round(seconds, 1), client_errors_held_back=self._held_back)
        self.metrics.broker_unreachable.set(0)
        self.health.broker_unreachable(None)
