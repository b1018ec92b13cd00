"""The incident tracker of one scope: anomalous records in, `opened` / `updated` / `resolved` messages out.

Per asset it keeps the alerts (and, with the evidence rule, the evidence records) of the debounce window and
the open incident, if any. A batch is
grouped by asset and each asset's records are walked from one state change to the next with numpy (the
debounce counts with `searchsorted`, the quiet period with the gaps between anomalies), so the cost grows
with the number of incidents a batch opens or resolves, not with its records. Assets with nothing open and
nothing pending keep no state at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streammoe.incidents.incident import Incident, Rows, Source, incident_id, mode_added_link
from streammoe.incidents.settings import SPIKE_DEVIATION, IncidentSettings
from streammoe.incidents.state import AssetState, TrackerState, state_from_json, state_to_json


@dataclass
class Batch:
    """One scored batch as the tracker needs it: one value per record, in arrival order."""

    asset: Sequence[str]
    ts: np.ndarray
    partition: np.ndarray
    offset: np.ndarray
    flagged: np.ndarray  # the record alerts (is_anomaly)
    critical: np.ndarray  # the record's severity is critical (critical p-value, not finite, out of range)
    score: np.ndarray  # -log10(p-value)
    p_value: np.ndarray
    mode: np.ndarray
    share: np.ndarray | None = None  # (B, C) misfit share per channel
    topic: str = ""
    at_once: np.ndarray | None = None  # opens an incident without the debounce (opens_at_once); None: `critical`


@dataclass(frozen=True)
class Change:
    """One message for the incidents topic: `status` is opened, updated or resolved."""

    status: str
    sequence: int
    body: dict[str, Any]
    repeat: bool = False  # a resolved incident published again (an operator's command on it): not a new resolution


@dataclass
class _Pending:
    """Incidents a batch touched, and whether their `opened` is still to be published."""

    order: list[Incident] = field(default_factory=list)
    unopened: set[str] = field(default_factory=set)

    def touch(self, inc: Incident) -> None:
        if all(inc is not x for x in self.order):
            self.order.append(inc)


class IncidentTracker:
    def __init__(self, scope: str, settings: IncidentSettings, channels: list[str], topic: str = "") -> None:
        self.scope, self.settings, self.channels, self.topic = scope, settings, list(channels), topic
        self.kept = TrackerState()  # also: the next offset to fold per input topic and partition, mutes

    @property
    def assets(self) -> dict[str, AssetState]:
        return self.kept.assets

    # ---- records --------------------------------------------------------------------------------------------

    def observe(self, batch: Batch, now: float = 0.0) -> list[Change]:
        """Fold a batch into the incidents; `now` is the wall clock (seconds), for `expire`."""
        fresh = fresh_rows(self.kept.next_offsets, batch, self.topic)
        if not fresh.all():  # re-read after a restart: already folded into the state that was restored
            batch = _subset(batch, np.flatnonzero(fresh))
        n = len(batch.ts)
        flagged = np.asarray(batch.flagged, bool)
        assets = np.asarray(batch.asset, dtype=object)
        self.kept.mutes.passed(assets, np.asarray(batch.ts))
        p_value = np.nan_to_num(np.asarray(batch.p_value, np.float64), nan=0.0)
        counted = flagged | (p_value < self.settings.evidence_p_value)  # alerts, and evidence records if on
        if n == 0 or (not counted.any() and not self.assets):
            return []
        names, inverse = np.unique(assets, return_inverse=True)
        per_asset = np.bincount(inverse, weights=counted, minlength=len(names))
        order = np.argsort(inverse, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(inverse, minlength=len(names)))])
        rows = rows_of(batch, flagged, len(self.channels))
        self.topic = batch.topic or self.topic
        changes: list[Change] = []
        for a, name in enumerate(names.tolist()):
            state = self.assets.get(name)
            if state is None and per_asset[a] == 0:
                continue
            state = state or AssetState()
            idx = order[bounds[a] : bounds[a + 1]]
            group = rows.take(idx)
            group.j = state.seen + np.arange(len(idx), dtype=np.int64)
            state.seen += len(idx)
            changes += self._advance(name, state, group)
            if state.open is None and (state.recent is None or not len(state.recent)):
                self.assets.pop(name, None)
            else:
                state.last_wall = now
                self.assets[name] = state
        return changes

    def _advance(self, asset: str, state: AssetState, rows: Rows) -> list[Change]:
        """Walk one asset's rows from state change to state change."""
        s = self.settings
        flagged_at = np.flatnonzero(rows.flagged)
        candidate_at = np.flatnonzero(rows.flagged | (rows.p_value < s.evidence_p_value))  # what a debounce counts
        pending = _Pending()
        changes: list[Change] = []
        i, m, j0 = 0, len(rows), int(rows.j[0])
        while i < m:
            inc = state.open
            if inc is not None:
                fpos = flagged_at[np.searchsorted(flagged_at, i) :]
                end = quiet_end(s, inc, rows, fpos, i)
                if end is None:
                    inc.absorb(rows.take(fpos))
                    pending.touch(inc)
                    break
                c, r = end
                inc.absorb(rows.take(fpos[:c]))
                pending.touch(inc)
                changes += self._resolve(
                    inc,
                    pending,
                    "quiet",
                    int(rows.ts[r]),
                    Source(self.topic, int(rows.partition[r]), int(rows.offset[r])),
                )
                state.open, state.recent = None, None
                i = r + 1
                continue
            cpos = candidate_at[np.searchsorted(candidate_at, i) :]
            recent = state.recent if state.recent is not None else Rows.empty(rows.share.shape[1])
            both = Rows.concat([recent, rows.take(cpos)])
            found = opening(s, both, len(recent))
            if found is None:  # keep what a later record's window can still reach
                state.recent = both.take(both.j >= j0 + m + 1 - s.window)
                break
            t, lo = found
            p = int(cpos[t - len(recent)])
            opener = Source(self.topic, int(rows.partition[p]), int(rows.offset[p]))
            window = both.take(slice(lo, t + 1))
            inc = Incident(
                id=incident_id(self.scope, asset, opener),
                scope=self.scope,
                asset=asset,
                topic=self.topic,
                opened_by=opener,
                opened_ts=int(rows.ts[p]),
                first_j=int(window.j[0]),
                first_ts=int(window.ts[0]),
                first_source=Source(self.topic, int(window.partition[0]), int(window.offset[0])),
            )
            inc.absorb(window)
            state.open, state.recent = inc, None
            pending.touch(inc)
            pending.unopened.add(inc.id)
            i = p + 1
        for inc in pending.order:
            if inc.resolution is None:
                changes += self._publish_open(inc, pending)
        return changes

    # ---- messages -------------------------------------------------------------------------------------------

    def emit(self, inc: Incident, status: str, repeat: bool = False) -> Change:
        """The incident's next message (also for operator commands: incidents/operator.py)."""
        top = inc.top_channels(self.channels, 1)
        inc.muted = self.kept.mutes.covers(inc.asset, inc.last_ts, top[0]["channel"] if top else None)
        inc.sequence += 1
        body = inc.body(self.channels, self.settings.top_channels)
        inc.published = {"ts": inc.last_ts, "count": inc.count, "severity": inc.severity, "kind": inc.kind}
        return Change(status, inc.sequence, body, repeat)

    def _publish_open(self, inc: Incident, pending: _Pending) -> list[Change]:
        if inc.id in pending.unopened:
            pending.unopened.discard(inc.id)
            return [self.emit(inc, "opened")]
        last = inc.published
        if inc.count == last.get("count") and inc.kind == last.get("kind"):
            return []
        urgent = (inc.severity != last.get("severity")) or (inc.kind != last.get("kind"))
        if urgent or inc.last_ts - int(last.get("ts", inc.last_ts)) >= self.settings.update_interval_ms:
            return [self.emit(inc, "updated")]
        return []

    def _resolve(
        self, inc: Incident, pending: _Pending, by: str, ts: int | None, source: Source | None
    ) -> list[Change]:
        out = self._publish_open(inc, pending) if inc.id in pending.unopened else []
        inc.resolve(by, ts, source)
        closed = self.kept.closed
        closed[inc.id] = inc  # operators may still acknowledge or judge it
        while len(closed) > self.settings.keep_resolved:
            closed.pop(next(iter(closed)))
        return out + [self.emit(inc, "resolved")]

    def close(self, inc: Incident, by: str) -> list[Change]:
        """Resolve an open incident now (`by`: operator), or publish a resolved one again with what changed."""
        state = self.assets.get(inc.asset)
        if state is not None and state.open is inc:
            state.open, state.recent = None, None
            return self._resolve(inc, _Pending(), by, inc.last_ts, inc.last_source)
        return [republish(self, inc)]

    # ---- outside the records --------------------------------------------------------------------------------

    def expire(self, now: float) -> list[Change]:
        """Resolve the incidents of assets that sent nothing for `stale_after_s` wall-clock seconds."""
        changes: list[Change] = []
        for name in [n for n, st in self.assets.items() if now - st.last_wall >= self.settings.stale_after_s]:
            state = self.assets.pop(name)
            if state.open is not None:
                changes += self._resolve(state.open, _Pending(), "stale", None, None)
        return changes

    def link_mode_added(
        self,
        expert: int,
        first: Source | None,
        last: Source | None,
        detail: dict[str, Any] | None = None,
        expert_id: str | None = None,
    ) -> list[Change]:
        """A `mode_added` event: open incidents whose records overlap its run become one `new_mode` incident."""
        if first is None or last is None:
            return []
        changes: list[Change] = []
        for state in self.assets.values():
            inc = state.open
            if inc is None or inc.kind == "new_mode" or inc.last_source is None:
                continue
            same = inc.first_source.partition == first.partition == last.partition
            if same and inc.first_source.offset <= last.offset and inc.last_source.offset >= first.offset:
                inc.kind = "new_mode"
                inc.mode_event = mode_added_link(expert, first, last, detail, expert_id)
                changes.append(self.emit(inc, "updated"))
        return changes

    def open_incidents(self) -> list[Incident]:
        return [st.open for st in self.assets.values() if st.open is not None]

    # ---- state ----------------------------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """Plain JSON (incidents/state.py), for checkpoints and scope snapshots."""
        return state_to_json(self.kept)

    def load_state(self, state: dict[str, Any], now: float) -> None:
        """Restore `to_state`; the stale clock restarts at `now` (a restart is not an asset falling silent)."""
        self.kept = state_from_json(state, len(self.channels), now)


def republish(tracker: IncidentTracker, inc: Incident) -> Change:
    """The incident's next message after an operator changed it: `updated`, or `resolved` again if it was (a
    repeat: the metrics count resolutions, not messages)."""
    if inc.resolution is not None:
        return tracker.emit(inc, "resolved", repeat=True)
    return tracker.emit(inc, "updated")


def rows_of(batch: Batch, flagged: np.ndarray, c: int) -> Rows:
    """A batch as the tracker's Rows (`j` filled in per asset later); `c` channels."""
    n = len(flagged)
    score = np.asarray(batch.score, np.float64)
    share = batch.share if batch.share is not None and c else np.zeros((n, c), np.float32)
    return Rows(
        j=np.zeros(n, np.int64),
        ts=np.asarray(batch.ts, np.int64),
        partition=np.asarray(batch.partition, np.int32),
        offset=np.asarray(batch.offset, np.int64),
        flagged=flagged,
        critical=np.asarray(batch.critical, bool) & flagged,
        at_once=np.asarray(batch.critical if batch.at_once is None else batch.at_once, bool) & flagged,
        score=np.where(np.isnan(score), np.inf, score),
        p_value=np.nan_to_num(np.asarray(batch.p_value, np.float64), nan=0.0),
        mode=np.asarray(batch.mode, np.int64),
        share=np.asarray(share, np.float32),
    )


def _subset(batch: Batch, idx: np.ndarray) -> Batch:
    return Batch(
        asset=[batch.asset[i] for i in idx.tolist()],
        ts=np.asarray(batch.ts)[idx],
        partition=np.asarray(batch.partition)[idx],
        offset=np.asarray(batch.offset)[idx],
        flagged=np.asarray(batch.flagged)[idx],
        critical=np.asarray(batch.critical)[idx],
        score=np.asarray(batch.score)[idx],
        p_value=np.asarray(batch.p_value)[idx],
        mode=np.asarray(batch.mode)[idx],
        share=None if batch.share is None else np.asarray(batch.share)[idx],
        topic=batch.topic,
        at_once=None if batch.at_once is None else np.asarray(batch.at_once)[idx],
    )


def fresh_rows(seen_by_topic: dict[str, dict[int, int]], batch: Batch, topic: str) -> np.ndarray:
    """Rows past the offsets already folded in, per partition; moves those offsets on."""
    partition = np.asarray(batch.partition, np.int64)
    offset = np.asarray(batch.offset, np.int64)
    seen = seen_by_topic.setdefault(batch.topic or topic, {})
    fresh = np.ones(len(offset), bool)
    for p in np.unique(partition).tolist():
        mine = partition == p
        fresh &= ~mine | (offset >= seen.get(p, 0))
        seen[p] = max(seen.get(p, 0), int(offset[mine].max()) + 1)
    return fresh


def opening(s: IncidentSettings, both: Rows, skip: int) -> tuple[int, int] | None:
    """(row of `both` at which an incident opens, first row of its window), or None; rows before `skip` were
    judged by an earlier batch. `both` holds an asset's alerts and evidence records (p below evidence_p_value).

    By alerts: open_k of the last open_n records alerted, a critical one weighing critical_weight, or one that
    opens at once. By evidence: evidence_k of the last evidence_n records are alerts or evidence."""
    lo = np.searchsorted(both.j, both.j - s.open_n + 1)
    weight = np.concatenate([[0], np.cumsum(np.where(both.flagged, np.where(both.critical, s.critical_weight, 1), 0))])
    by_alerts = (both.flagged & ((weight[1:] - weight[lo]) >= s.open_k)) | both.at_once
    fire = by_alerts.copy()
    lo_e = lo
    if s.evidence_p_value > 0:
        lo_e = np.searchsorted(both.j, both.j - s.evidence_n + 1)
        fire |= np.arange(1, len(both) + 1) - lo_e >= s.evidence_k
    fire[:skip] = False
    if not fire.any():
        return None
    t = int(np.argmax(fire))
    return t, int(lo[t] if by_alerts[t] else lo_e[t])


def quiet_end(s: IncidentSettings, inc: Incident, rows: Rows, fpos: np.ndarray, i: int) -> tuple[int, int] | None:
    """(gap, row) of the first quiet period after `inc`'s last anomaly that resolves it, or None.

    Gap c is the run of records before the c-th anomaly in `fpos` (c = len(fpos): the tail); the row is
    the first of that run with quiet_records quiet records behind it and quiet_ms of `ts` since."""
    j0, m = int(rows.j[0]), len(rows)
    prev_j = np.concatenate([[inc.last_j], rows.j[fpos]])
    prev_ts = np.concatenate([[inc.last_ts], rows.ts[fpos]])
    next_loc = np.concatenate([fpos, [m]])
    next_j = np.concatenate([rows.j[fpos], [j0 + m]])
    for c in np.flatnonzero(next_j - prev_j - 1 >= s.quiet_records).tolist():
        start = max(int(prev_j[c]) + s.quiet_records - j0, i)
        stop = int(next_loc[c])
        ok = rows.ts[start:stop] - prev_ts[c] >= s.quiet_ms
        if ok.any():
            return c, start + int(np.argmax(ok))
    return None


def critical_records(
    is_anomaly: np.ndarray, valid: np.ndarray, in_range: np.ndarray, log_p_value: np.ndarray, critical_log_p: float
) -> np.ndarray:
    """The alerted records that make an incident `critical`: not finite, poison (out of range), or a p-value below
    the critical one (`AlertSettings.critical_p_value`, as a natural log). One rule for the daemon and the offline
    scorer, so an incident's severity in SCORES.csv is the one the daemon would publish."""
    return is_anomaly & (~valid | ~in_range | (log_p_value < critical_log_p))


def opens_at_once(
    is_anomaly: np.ndarray,
    valid: np.ndarray,
    in_range: np.ndarray,
    log_p_value: np.ndarray,
    critical_log_p: float,
    deviation: np.ndarray | None = None,
    spike_deviation: float = SPIKE_DEVIATION,
) -> np.ndarray:
    """The alerted records that open an incident without the debounce: not finite, poison, or a spike: alerted
    with a p-value below the critical one (`AlertSettings.critical_p_value`, as a natural log) and a channel at
    least `spike_deviation` of its expert's predicted standard deviations off (`ScoredBatch.deviation`). A
    critical p-value alone is not enough: the model gives odd but plausible records (a few deviations off on
    their worst channel) critical p-values too, and each would page on its own. `spike_deviation` 0 (or no
    `deviation`) lets every critical record open at once. One rule for the daemon and the offline scorer."""
    extreme = log_p_value < critical_log_p
    if deviation is not None and spike_deviation > 0:
        extreme &= ~(np.asarray(deviation, np.float64) < spike_deviation)  # NaN: not known, counts as a spike
    return is_anomaly & (~valid | ~in_range | extreme)
