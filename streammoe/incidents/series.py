"""Incidents of one scored series, offline: the same tracker the daemon runs, with the row index as offset and ts.

`SCORES.csv`'s `incident` column and the benchmark's event metrics both come from here, so a file is judged
by the incidents an operator of the daemon would have been sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from streammoe.incidents.incident import Source
from streammoe.incidents.settings import IncidentSettings
from streammoe.incidents.tracker import Batch, Change, IncidentTracker

CHUNK = 4096


@dataclass
class SeriesIncidents:
    incidents: list[dict]  # the last message of each incident, in opening order
    messages: list[Change]  # every message, in publishing order
    column: list[str]  # per row: the id of the incident whose span (first to last anomaly) holds it, or ""

    def spans(self) -> list[tuple[int, int, int]]:
        """(first row, last row, opening row) of each incident."""
        return [
            (i["first_source"]["offset"], i["last_source"]["offset"], i["opened_by"]["offset"]) for i in self.incidents
        ]


def track_series(
    flagged: np.ndarray,
    critical: np.ndarray | None = None,
    score: np.ndarray | None = None,
    p_value: np.ndarray | None = None,
    mode: np.ndarray | None = None,
    share: np.ndarray | None = None,
    channels: Sequence[str] = (),
    settings: IncidentSettings | None = None,
    mode_added: Sequence[tuple[int, int, int]] = (),
    name: str = "series",
    at_once: np.ndarray | None = None,
) -> SeriesIncidents:
    """Run the tracker over a whole series (one asset, scope `global`); `mode_added` is (expert, first, last row);
    `critical` is the rows' severity, `at_once` the rows that open an incident at once (default: `critical`).

    A mode_added event is applied once the tracker has seen its last row, as the daemon applies it after the
    batch whose learning raised it."""
    n = len(flagged)
    flagged = np.asarray(flagged, bool)
    tracker = IncidentTracker("global", settings or IncidentSettings(), list(channels), topic=name)
    rows = np.arange(n, dtype=np.int64)
    fill = {
        "critical": np.zeros(n, bool),
        "score": np.where(flagged, 1.0, 0.0),
        "p_value": np.ones(n),
        "mode": np.full(n, -1, np.int64),
    }
    critical = fill["critical"] if critical is None else np.asarray(critical, bool)
    score = fill["score"] if score is None else score
    p_value = fill["p_value"] if p_value is None else p_value
    mode = fill["mode"] if mode is None else mode
    events = sorted(mode_added, key=lambda e: e[2])
    cuts = sorted({min(int(e[2]) + 1, n) for e in events} | set(range(CHUNK, n, CHUNK)) | {n})
    messages: list[Change] = []
    start, e = 0, 0
    for stop in cuts:
        if stop > start:
            part = slice(start, stop)
            messages += tracker.observe(
                Batch(
                    asset=["series"] * (stop - start),
                    ts=rows[part],
                    partition=np.zeros(stop - start, np.int32),
                    offset=rows[part],
                    flagged=flagged[part],
                    critical=critical[part],
                    score=score[part],
                    p_value=p_value[part],
                    mode=mode[part],
                    share=None if share is None else share[part],
                    topic=name,
                    at_once=None if at_once is None else np.asarray(at_once, bool)[part],
                )
            )
            start = stop
        while e < len(events) and events[e][2] < stop:
            expert, first_row, last_row = events[e]
            messages += tracker.link_mode_added(expert, Source(name, 0, int(first_row)), Source(name, 0, int(last_row)))
            e += 1
    latest: dict[str, dict] = {}
    for msg in messages:
        latest[msg.body["incident_id"]] = msg.body
    for inc in tracker.open_incidents():  # still open at the end of the file: as far as it got
        latest[inc.id] = inc.body(tracker.channels, tracker.settings.top_channels)
    incidents = sorted(latest.values(), key=lambda b: b["opened_by"]["offset"])
    column = np.full(n, "", dtype=object)
    for body in incidents:
        column[body["first_source"]["offset"] : body["last_source"]["offset"] + 1] = body["incident_id"]
    return SeriesIncidents(incidents, messages, column.tolist())
