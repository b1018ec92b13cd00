"""Event-level metrics: how a method's decisions look as incidents, the way an operator meets them.

Two groupings of the same 0/1 decisions are scored: the incident tracker (streammoe/incidents, the daemon's
own logic, row index as offset; given the rows' p-values, its evidence rule can count sub-threshold rows) and the simple grouping of flagged rows whose gaps are under 10 rows (what
"one alert per record" amounts to once someone groups neighbours by eye). Labelled anomaly segments are the
runs of label 1.

- `segment_recall`: share of labelled segments that an incident overlaps;
- `false_per_10k`: incidents overlapping no segment, per 10,000 normal rows;
- `per_detected_segment`: incidents overlapping a segment, averaged over the segments detected;
- `median_delay`: rows from a detected segment's start to the opening row of the first incident that
  overlaps it (0 when it opened earlier); for the gap grouping the opening row is the group's first row;
- `normal_inside`: share of normal rows inside an incident's span (first to last anomalous row), so that
  merging everything into one long incident does not look good.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from streammoe.incidents import IncidentSettings
from streammoe.incidents.series import track_series

GAP = 10
GROUPINGS = ("incidents", "gap10")


def segments(labels: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) row of each run of label 1."""
    y = np.asarray(labels).astype(np.int8)
    edges = np.diff(np.concatenate([[0], y, [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    return list(zip(starts.tolist(), ends.tolist()))


def gap_groups(flagged: np.ndarray, gap: int = GAP) -> list[tuple[int, int, int]]:
    """(first, last, opening row) of groups of flagged rows with fewer than `gap` unflagged rows between."""
    f = np.flatnonzero(np.asarray(flagged).astype(bool))
    if not len(f):
        return []
    breaks = np.flatnonzero(np.diff(f) - 1 >= gap)
    firsts = np.concatenate([[f[0]], f[breaks + 1]])
    lasts = np.concatenate([f[breaks], [f[-1]]])
    return [(int(a), int(b), int(a)) for a, b in zip(firsts, lasts)]


@dataclass
class EventCounts:
    """Poolable counts behind the event metrics of one or more series."""

    segments: int = 0
    detected: int = 0
    incidents: int = 0
    false_incidents: int = 0
    normal_rows: int = 0
    normal_inside: int = 0
    normal_flagged: int = 0
    per_segment: list[int] = field(default_factory=list)  # incidents overlapping each detected segment
    delays: list[int] = field(default_factory=list)

    def __add__(self, o: EventCounts) -> EventCounts:
        """Pooled over series: every count adds, the per-segment lists join."""
        return EventCounts(**{f.name: getattr(self, f.name) + getattr(o, f.name) for f in fields(self)})

    def metrics(self) -> dict:
        return {
            "segment_recall": self.detected / self.segments if self.segments else None,
            "false_per_10k": 1e4 * self.false_incidents / self.normal_rows if self.normal_rows else None,
            "per_detected_segment": float(np.mean(self.per_segment)) if self.per_segment else None,
            "median_delay": float(np.median(self.delays)) if self.delays else None,
            "normal_inside": self.normal_inside / self.normal_rows if self.normal_rows else None,
            "normal_flagged": self.normal_flagged / self.normal_rows if self.normal_rows else None,
            "incidents": self.incidents,
            "false_incidents": self.false_incidents,
            "segments": self.segments,
        }

    def as_dict(self) -> dict:
        return asdict(self)


def count_events(labels: np.ndarray, flagged: np.ndarray, spans: Sequence[tuple[int, int, int]]) -> EventCounts:
    """Score incident spans (first, last, opening row) against the labelled segments of one series."""
    y = np.asarray(labels).astype(bool)
    segs = segments(y)
    inside = np.zeros(len(y), bool)
    false = 0
    hits: list[list[tuple[int, int, int]]] = [[] for _ in segs]
    starts = np.array([s for s, _ in segs], np.int64)
    for span in spans:
        a, b, _ = span
        inside[a : b + 1] = True
        k0 = int(np.searchsorted(starts, a, side="right")) - 1  # the segment starting at or before a
        found = False
        for k in range(max(k0, 0), len(segs)):
            s, e = segs[k]
            if s > b:
                break
            if e >= a:
                hits[k].append(span)
                found = True
        false += not found
    detected = [h for h in hits if h]
    delays = [max(0, min(o for _, _, o in h) - segs[k][0]) for k, h in enumerate(hits) if h]
    normal = ~y
    return EventCounts(
        segments=len(segs),
        detected=len(detected),
        incidents=len(spans),
        false_incidents=false,
        normal_rows=int(normal.sum()),
        normal_inside=int((inside & normal).sum()),
        normal_flagged=int((np.asarray(flagged).astype(bool) & normal).sum()),
        per_segment=[len(h) for h in detected],
        delays=delays,
    )


def event_counts(
    labels: np.ndarray,
    flagged: np.ndarray,
    critical: np.ndarray | None = None,
    settings: IncidentSettings | None = None,
    mode_added: Sequence[tuple[int, int, int]] = (),
    at_once: np.ndarray | None = None,
    neg_log10_p: np.ndarray | None = None,
) -> dict[str, EventCounts]:
    """Both groupings of one series' decisions; `critical` rows are of critical severity, `at_once` rows open an
    incident at once (streammoe's own; default: the critical ones); `neg_log10_p` each row's -log10 p-value, for
    the tracker's evidence rule (`IncidentSettings.evidence_p_value`; none: only alerts count)."""
    p_value = None if neg_log10_p is None else 10.0 ** -np.nan_to_num(np.asarray(neg_log10_p, np.float64), nan=np.inf)
    tracked = track_series(
        flagged, critical, neg_log10_p, p_value, settings=settings, mode_added=mode_added, at_once=at_once
    )
    return {
        "incidents": count_events(labels, flagged, tracked.spans()),
        "gap10": count_events(labels, flagged, gap_groups(flagged)),
    }


def add_events(
    metrics: dict,
    labels: np.ndarray,
    flagged: np.ndarray,
    critical: np.ndarray | None,
    mode_added: Sequence[tuple[int, int, int]],
    settings: IncidentSettings,
    start: int = 0,
    at_once: np.ndarray | None = None,
    neg_log10_p: np.ndarray | None = None,
) -> None:
    """Put both groupings' event metrics and counts into a run's `metrics["events"]`; `flagged`, `critical`,
    `at_once`, `neg_log10_p` and the mode_added rows cover the whole stream, of which rows `start:` are labelled."""
    crit = None if critical is None else critical[start:]
    once = None if at_once is None else at_once[start:]
    score = None if neg_log10_p is None else neg_log10_p[start:]
    added = [(e, a - start, b - start) for e, a, b in mode_added if b >= start]
    counts = event_counts(labels, flagged[start:], crit, settings, added, once, score)
    metrics["events"] = {g: {**c.metrics(), "counts": c.as_dict()} for g, c in counts.items()}


def pool_events(metrics: Iterable[tuple[str, dict]]) -> dict:
    """Pooled event metrics per part (e.g. the dataset) and grouping, from (part, run metrics) pairs."""
    pools: dict[str, dict[str, EventCounts]] = {}
    for part, m in metrics:
        for g, e in m.get("events", {}).items():
            slot = pools.setdefault(part, {})
            slot[g] = slot.get(g, EventCounts()) + EventCounts(**e["counts"])
    return {p: {g: c.metrics() for g, c in v.items()} for p, v in pools.items()}
