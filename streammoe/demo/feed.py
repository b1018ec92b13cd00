"""The demo's producer: the simulated pump's schedule played onto the input topic at a steady rate.

It writes each record's ground truth (mode, fault) by its `ts` before producing it, so the demo can match alerts
to the truth; the daemon never sees it. Every `malformed_every` records it also sends one more record missing
channels, as a sensor gateway dropping some would: alternately one missing `temperature` (the daemon scores it
on the other channels) and one with only three channels left (more missing than the daemon's share: it must
dead-letter it and carry on).
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import TYPE_CHECKING

from streammoe.demo.view import DemoState, truth_label
from streammoe.kafka.sink import produce
from streammoe.testing.records import encode

if TYPE_CHECKING:
    from confluent_kafka import KafkaError, Message, Producer


class Feed:
    def __init__(
        self, topic: str, state: DemoState, *, rate: float, seed: int, scale: int, malformed_every: int
    ) -> None:
        self.topic, self.state = topic, state
        self.rate, self.seed, self.scale, self.malformed_every = rate, seed, scale, malformed_every
        self.stop = threading.Event()
        self.truth: dict[int, tuple[str, str | None]] = {}  # ts -> (mode, fault); written before producing
        self.produced_by_truth: Counter = Counter()
        self.delivered = 0
        self.delivery_failed = 0

    def truth_of(self, ts: object) -> tuple[str | None, str | None]:
        return self.truth.get(ts, (None, None)) if isinstance(ts, int) else (None, None)

    def run(self, bootstrap: str) -> None:
        from confluent_kafka import Producer

        from streammoe.demo.sensors import PumpSimulator, default_schedule
        from streammoe.files.replay import TokenBucket

        producer = Producer(
            {"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all", "client.id": "streammoe-demo-producer"}
        )
        bucket = TokenBucket(self.rate, burst=max(1.0, self.rate / 10))
        st = self.state
        try:
            for i, rec in enumerate(PumpSimulator(self.seed).run(default_schedule(self.scale))):
                if self.stop.is_set():
                    break
                bucket.take()
                label = truth_label(rec.mode, rec.fault)
                self.truth[rec.ts] = (rec.mode, rec.fault)
                self._send(
                    producer,
                    rec.asset_id,
                    encode(rec.asset_id, rec.ts, rec.values.values(), list(rec.values), digits=None),
                )
                self.produced_by_truth[label] += 1
                every = self.malformed_every
                malformed = every > 0 and i % every == every - 1
                partial = malformed and (i // every) % 2 == 0
                if malformed:
                    names = list(rec.values)
                    keep = [k for k in names if k != "temperature"] if partial else names[:3]
                    kept = {k: rec.values[k] for k in keep}
                    self._send(
                        producer, rec.asset_id, encode(rec.asset_id, rec.ts, kept.values(), list(kept), digits=None)
                    )
                with st.lock:
                    st.produced += 1
                    st.malformed_sent += malformed
                    st.partial_sent += partial
                    st.playing = label
                producer.poll(0)
        finally:
            producer.flush(15)
            with st.lock:
                st.producer_done = True
                st.playing = "-"

    def _send(self, producer: Producer, asset: str, value: bytes) -> None:
        produce(producer, self.topic, value, asset.encode(), on_delivery=self._on_delivery)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.delivery_failed += 1
