"""Judged batch -> dead letters, scores, alerts and mode events -> the sink (not yet acknowledged: see delivery)."""

from __future__ import annotations

import numpy as np
import orjson
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message

from streammoe.config import Settings
from streammoe.daemon.accounting import RunSummary
from streammoe.daemon.clients import SinkClient, source_of
from streammoe.daemon.incidents import IncidentPublisher
from streammoe.daemon.pipeline import REF_PARTITION_SHIFT, Judged
from streammoe.kafka.sink import DeadLetter, Headers
from streammoe.kafka.source import Positions, positions
from streammoe.metrics import Metrics
from streammoe.wire.alerts import Origin, build_alert, build_score
from streammoe.wire.records import DecodedBatch


class Publisher:
    def __init__(
        self,
        settings: Settings,
        sink: SinkClient,
        metrics: Metrics,
        summary: RunSummary,
        incidents: IncidentPublisher | None = None,
    ) -> None:
        self.settings, self.sink, self.metrics, self.summary = settings, sink, metrics, summary
        self.channels = list(settings.records.channels)
        self.incidents = incidents

    def publish(self, msgs: list[Message], decoded: DecodedBatch, judged: Judged, at: Positions | None = None) -> None:
        """Every output of a batch: a dead letter per refused record, a score per record (with a scores topic),
        an alert per anomaly (unless ALERTS__ENABLED is off), the incidents they add up to, and the mode events
        of what each scope learned."""
        kafka, sink, s = self.settings.kafka, self.sink, self.summary
        for d in decoded.dead:
            m = msgs[d.index]
            sink.dead_letter(refused(m, d.reason, d.detail))
            self.metrics.dead_letters.labels(d.reason).inc()
        s.dead_letters += len(decoded.dead)
        s.non_alerts += judged.warmup_rows
        self.metrics.non_alerts.inc(judged.warmup_rows)
        for part in judged.parts:
            scored, rows = part.scored, part.rows
            visit = range(len(rows)) if kafka.scores_topic else np.flatnonzero(scored.is_anomaly).tolist()
            for i in visit:
                row = rows[i]
                m = msgs[decoded.index[row]]
                origin = Origin(*source_of(m))
                asset, ts = decoded.assets[row], int(decoded.ts[row])
                if kafka.scores_topic:
                    score = build_score(
                        scored, i, asset=asset, ts=ts, origin=origin, scope=part.scope, channels=self.channels
                    )
                    sink.send(kafka.scores_topic, orjson.dumps(score), asset.encode(), timestamp=ts)
                if not scored.is_anomaly[i]:
                    continue
                alert = build_alert(
                    scored,
                    i,
                    asset=asset,
                    ts=ts,
                    origin=origin,
                    channels=self.channels,
                    expert_status=part.expert_status,
                    model_version=part.version,
                    settings=self.settings.alerts,
                    scope=part.scope,
                    expert_ids=part.expert_ids,
                )
                if self.incidents is not None:  # an operator's mute flags the alert, it is still published
                    top = alert["top_channels"][0]["channel"] if alert["top_channels"] else None
                    alert["muted"] = self.incidents.muted(part.scope, asset, ts, top)
                if self.settings.alerts.enabled:
                    sink.send(kafka.alerts_topic, orjson.dumps(alert), asset.encode(), timestamp=ts)
                self.metrics.alerts.labels(alert["severity"]).inc()
                s.alerts += 1
            if self.incidents is not None and len(rows):
                at = at if at is not None else positions(msgs)
                self.incidents.fold(part, decoded, at)
            n_normal = int((~scored.is_anomaly).sum())
            s.non_alerts += n_normal
            self.metrics.non_alerts.inc(n_normal)
        for scope, version, report in judged.learned:
            ids = judged.learned_ids.get(scope, {})
            added = {e.expert for e in report.events if e.kind == "mode_added"}
            for event in report.events:
                body = event.as_dict()
                # the id read after learning names the expert the event is about, unless the event's slot was
                # freed and taken again in the same step (then only the mode_added event gets it)
                if event.expert in ids and (event.kind == "mode_added" or event.expert not in added):
                    body["expert_id"] = ids[event.expert]
                self.send_event(body, scope, version)
            if self.incidents is not None:
                self.incidents.learned(scope, report, ids)
        for scope, version, drift in judged.drifts:
            self.send_plain_event(drift, scope, version)

    def send_plain_event(self, event: dict, scope: str, version: str) -> None:
        """An event that is not about the experts (likelihood_drift, asset_silent, asset_resumed): no sources."""
        payload = {**event, "scope": scope, "model_version": version}
        self.sink.send(self.settings.kafka.events_topic, orjson.dumps(payload), scope.encode())

    def send_event(self, event: dict, scope: str, version: str) -> None:
        """One event on the events topic, keyed by its scope."""
        payload = event_payload(event, input_topic=self.settings.kafka.input_topic, scope=scope, model_version=version)
        self.sink.send(self.settings.kafka.events_topic, orjson.dumps(payload), scope.encode())


def refused(m: Message, reason: str, detail: str) -> DeadLetter:
    """A consumed message as a dead letter: untouched, with where it came from and why it was refused."""
    return DeadLetter(m.value(), m.key(), *source_of(m), reason, detail, input_headers(m), input_timestamp(m))


def input_headers(m: Message) -> Headers | None:
    """The consumed message's own headers, as the producer takes them."""
    raw = m.headers()
    return list(raw.items()) if isinstance(raw, dict) else raw


def input_timestamp(m: Message) -> int | None:
    """The consumed message's own Kafka timestamp (epoch ms), if it has one."""
    kind, ts = m.timestamp()
    return ts if kind != TIMESTAMP_NOT_AVAILABLE and ts > 0 else None


def event_payload(event: dict, *, input_topic: str, scope: str, model_version: str) -> dict:
    """An event for the events topic (schemas/event.schema.json): packed refs become `{topic, partition, offset}`."""
    for end in ("first", "last"):
        ref = event.pop(f"{end}_ref", None)
        event[f"{end}_source"] = (
            None
            if ref is None
            else {
                "topic": input_topic,
                "partition": ref >> REF_PARTITION_SHIFT,
                "offset": ref & ((1 << REF_PARTITION_SHIFT) - 1),
            }
        )
    return {**event, "scope": scope, "model_version": model_version}
