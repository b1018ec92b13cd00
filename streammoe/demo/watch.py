"""The demo's operator: a consumer of the alerts, incidents, events and dead-letter topics (from the start, without a group)
and a scraper of the daemon's /metrics, as a dashboard would read them. Alerts and events are matched to the
feed's ground truth by their `ts`."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable, Mapping

from streammoe.demo.view import DemoState, truth_label

ALERT_FIELDS = (
    "ts",
    "truth",
    "severity",
    "reason",
    "score",
    "p_value",
    "mode",
    "mode_entropy",
    "epistemic",
    "aleatoric",
    "top_channels",
)


class Watch:
    def __init__(
        self, topics: Mapping[str, str], state: DemoState, truth_of: Callable[[object], tuple[str | None, str | None]]
    ) -> None:
        self.topics, self.state, self.truth_of = topics, state, truth_of
        self.stop = threading.Event()
        self.alert_list: list[dict] = []
        self.last_output_at = time.monotonic()

    def read_outputs(self, bootstrap: str) -> None:
        """Every alert, event and dead letter, until `stop`."""
        import orjson
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        c = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "streammoe-demo-view",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
                "client.id": "streammoe-demo-view",
            }
        )
        try:
            parts = []
            for role in ("alerts", "incidents", "events", "dead"):
                meta = c.list_topics(self.topics[role], timeout=10).topics[self.topics[role]]
                parts += [TopicPartition(self.topics[role], p, OFFSET_BEGINNING) for p in meta.partitions]
            c.assign(parts)
            while not self.stop.is_set():
                for m in c.consume(num_messages=500, timeout=0.2):
                    value = m.value()
                    if m.error() is not None or value is None:
                        continue
                    self.last_output_at = time.monotonic()
                    if m.topic() == self.topics["dead"]:  # the refused bytes, untouched; why is in the headers
                        reason = dict(m.headers() or []).get("reason") or b"?"
                        text = reason.decode(errors="replace") if isinstance(reason, bytes) else reason
                        with self.state.lock:
                            self.state.dead_letters += 1
                            self.state.dead_by_reason[text] += 1
                    else:
                        self.on_output(m.topic() or "", orjson.loads(value))
        finally:
            c.close()

    def on_output(self, topic: str, obj: dict) -> None:
        st = self.state
        if topic == self.topics["alerts"]:
            label = truth_label(*self.truth_of(obj.get("ts")))
            obj["truth"] = label
            with st.lock:
                st.alerts += 1
                st.alerts_by_truth[label] += 1
                st.alerts_by_severity[obj.get("severity", "?")] += 1
                st.recent_alerts.append(obj)
            self.alert_list.append({k: obj.get(k) for k in ALERT_FIELDS})
        elif topic == self.topics["incidents"]:
            for end in ("first", "last"):
                obj[f"truth_{end}"] = truth_label(*self.truth_of(obj.get(f"{end}_ts")))
            with st.lock:  # delivered at least once: a (incident_id, sequence) already seen is dropped
                known = st.incidents.get(obj["incident_id"])
                if known is None or obj["sequence"] > known["sequence"]:
                    st.incidents[obj["incident_id"]] = obj
                    st.incident_messages += 1
        elif topic == self.topics["events"]:
            for end in ("first", "last"):
                obj[f"truth_{end}"] = truth_label(*self.truth_of(obj.get(f"{end}_ts")))
            with st.lock:
                st.events.append(obj)

    def scrape_metrics(self, port: Callable[[], int | None]) -> None:
        """The daemon's /metrics every half second, until `stop`: records in, experts, mixture weights."""
        from prometheus_client.parser import text_string_to_metric_families

        st = self.state
        while not self.stop.wait(0.5):
            at = port()
            if at is None:
                continue
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{at}/metrics", timeout=1) as r:
                    text = r.read().decode()
            except OSError:
                continue
            scored, experts, weights = None, None, {}
            for fam in text_string_to_metric_families(text):
                for s in fam.samples:
                    if s.name == "streammoe_records_in_total":
                        scored = int(s.value)
                    elif s.name == "streammoe_experts_active":
                        experts = int(s.value)
                    elif s.name == "streammoe_mixture_weight" and s.value > 0:
                        weights[int(s.labels["expert"])] = float(s.value)
            with st.lock:
                st.scored = scored if scored is not None else st.scored
                st.experts_active = experts if experts is not None else st.experts_active
                st.weights = weights or st.weights
