"""The publish step's incidents: each scope's judged rows folded into its IncidentTracker, messages to the sink.

A tracker belongs to its scope's ModelState (learned state): its `to_state()` is kept in `state.incidents`
after every batch, so a checkpoint or a scope snapshot carries it, and a restored or handed-over scope goes on
with the same open incidents (the tracker skips records it folded in before, by offset). Records are never
folded into a scope this worker no longer holds: the new owner reads them again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import orjson

from streammoe.config import Settings
from streammoe.daemon.clients import SinkClient
from streammoe.daemon.pipeline import REF_PARTITION_SHIFT, Part
from streammoe.incidents import Batch, Change, IncidentTracker, Source, critical_records, opens_at_once
from streammoe.incidents.settings import SPIKE_DEVIATION
from streammoe.kafka.source import Positions
from streammoe.logs import get_logger
from streammoe.metrics import Metrics
from streammoe.model.detector import LearnReport
from streammoe.model.scoring import ScoredBatch
from streammoe.state.checkpoint import ModelState
from streammoe.wire.incidents import build_incident, incident_key
from streammoe.wire.records import DecodedBatch

_OFFSET_MASK = (1 << REF_PARTITION_SHIFT) - 1
EXPIRE_EVERY_S = 1.0  # the loop asks every turn; staleness is minutes (INCIDENTS__STALE_AFTER_S), so once a second

log = get_logger("streammoe.daemon")


def scored_batch(
    scored: ScoredBatch,
    critical_log_p: float,
    assets: list[str],
    ts: np.ndarray,
    at: Positions,
    spike_deviation: float = SPIKE_DEVIATION,
) -> Batch:
    """Scored records as the incident tracker takes them, `at` where each came from: their severity, and the ones
    that open an incident at once by the one rule (opens_at_once: spikes, poison, not finite). For the daemon and
    the demo's offline check."""
    return Batch(
        asset=assets,
        ts=ts,
        partition=at.partitions,
        offset=at.offsets,
        flagged=scored.is_anomaly,
        critical=critical_records(scored.is_anomaly, scored.valid, scored.in_range, scored.log_p_value, critical_log_p),
        score=scored.score,
        p_value=scored.p_value,
        mode=scored.mode,
        share=scored.channel_share,
        topic=at.topic,
        at_once=opens_at_once(
            scored.is_anomaly,
            scored.valid,
            scored.in_range,
            scored.log_p_value,
            critical_log_p,
            scored.deviation,
            spike_deviation,
        ),
    )


class IncidentPublisher:
    def __init__(
        self,
        settings: Settings,
        sink: SinkClient,
        state_of: Callable[[str], ModelState | None],
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings, self.sink, self.state_of, self.clock = settings, sink, state_of, clock
        self.metrics = metrics
        self.incidents = settings.incidents
        self.critical_log_p = float(np.log(settings.alerts.critical_p_value))
        self._trackers: dict[str, tuple[ModelState, IncidentTracker]] = {}
        self._expire_at = 0.0
        self.published = 0

    def tracker(self, scope: str) -> tuple[ModelState, IncidentTracker] | None:
        """The scope's tracker, rebuilt from its ModelState when that state is new (restored, handed over)."""
        state = self.state_of(scope)
        if state is None:
            self._trackers.pop(scope, None)
            return None
        held = self._trackers.get(scope)
        if held is None or held[0] is not state:
            held = self._trackers[scope] = (state, self._restore(scope, state))
        return held

    def _restore(self, scope: str, state: ModelState) -> IncidentTracker:
        """The scope's tracker from its saved state; a state this build cannot read (another state version, a
        damaged checkpoint meta or snapshot) starts the scope without open incidents instead of stopping the
        daemon: the model itself loaded, and its records still alert."""

        def fresh() -> IncidentTracker:
            return IncidentTracker(
                scope, self.incidents, list(self.settings.records.channels), topic=self.settings.kafka.input_topic
            )

        tracker = fresh()
        if state.incidents is None:
            return tracker
        try:
            tracker.load_state(state.incidents, now=self.clock())
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning(
                "incident_state_unreadable",
                scope=scope,
                error=f"{type(e).__name__}: {e}",
                consequence="the scope starts without open incidents; records re-read may open them again",
            )
            tracker = fresh()  # load_state may have set part of it
        return tracker

    def fold(self, part: Part, decoded: DecodedBatch, at: Positions) -> None:
        """One scope's scored rows into its incidents; publishes what changed."""
        if not self.incidents.enabled:
            return
        held = self.tracker(part.scope)
        if held is None:
            return
        state, tracker = held
        scored, rows = part.scored, part.rows
        idx = decoded.index[rows]
        where = Positions(at.topic, at.partitions[idx], at.offsets[idx])
        batch = scored_batch(
            scored,
            self.critical_log_p,
            [decoded.assets[r] for r in rows.tolist()],
            decoded.ts[rows],
            where,
            self.incidents.spike_deviation,
        )
        now = self.clock()
        self._send(tracker.observe(batch, now=now) + tracker.expire(now))
        state.keep_incidents(tracker.to_state())
        if self.metrics is not None:
            self.metrics.incidents_open.labels(part.scope).set(len(tracker.open_incidents()))

    def act(self, scope: str, command: Callable[[IncidentTracker], list[Change]]) -> None:
        """An operator's command on the scope's incidents (daemon/incident_commands.py): publishes what it changed
        and keeps the state. The scope is one this worker holds (the caller found its ModelState)."""
        held = self.tracker(scope)
        if held is None:
            return
        state, tracker = held
        self._send(command(tracker))
        state.keep_incidents(tracker.to_state())

    def muted(self, scope: str, asset: str, ts: int, channel: str | None) -> bool:
        """Whether an alert of `asset` at `ts` whose top channel is `channel` is muted (incidents/mutes.py)."""
        held = self.tracker(scope) if self.incidents.enabled else None  # restored on a scope's first batch too
        return held is not None and held[1].kept.mutes.covers(asset, ts, channel)

    def learned(self, scope: str, report: LearnReport, expert_ids: dict[int, str] | None = None) -> None:
        """A new expert's records turn the scope's overlapping open incident into one `new_mode` incident (naming
        the expert's id, from `expert_ids`, so that a verdict on it finds the incident)."""
        if not self.incidents.enabled:
            return
        held = self.tracker(scope)
        if held is None:
            return
        state, tracker = held
        topic = self.settings.kafka.input_topic
        for event in report.events:
            if event.kind != "mode_added" or event.first_ref is None or event.last_ref is None:
                continue
            first = Source(topic, event.first_ref >> REF_PARTITION_SHIFT, event.first_ref & _OFFSET_MASK)
            last = Source(topic, event.last_ref >> REF_PARTITION_SHIFT, event.last_ref & _OFFSET_MASK)
            named = (expert_ids or {}).get(event.expert)
            self._send(tracker.link_mode_added(event.expert, first, last, event.detail, named))
        state.keep_incidents(tracker.to_state())

    def expire(self) -> None:
        """Resolve the incidents of assets that fell silent (also while no records arrive at all); at most once
        per EXPIRE_EVERY_S: each call visits every scope held (~1 us each; thousands with asset scopes)."""
        if not self.incidents.enabled or time.monotonic() < self._expire_at:
            return
        self._expire_at = time.monotonic() + EXPIRE_EVERY_S
        now = self.clock()
        for scope in list(self._trackers):
            held = self.tracker(scope)
            if held is not None:
                changes = held[1].expire(now)
                if changes:
                    self._send(changes)
                    held[0].keep_incidents(held[1].to_state())
                    if self.metrics is not None:
                        self.metrics.incidents_open.labels(scope).set(len(held[1].open_incidents()))

    def _send(self, changes: list[Change]) -> None:
        for change in changes:
            self.sink.send(self.incidents.topic, orjson.dumps(build_incident(change)), incident_key(change))
            if self.metrics is None:
                continue
            scope = str(change.body["scope"])
            if change.status == "opened":
                self.metrics.incidents_opened.labels(scope).inc()
            elif change.status == "resolved" and not change.repeat:  # resolutions, not messages
                self.metrics.incidents_resolved.labels(scope, change.body["resolution"]["by"]).inc()
        self.published += len(changes)
