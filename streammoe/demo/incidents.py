"""The demo's incidents against the simulator's ground truth: one per fault episode, one for the new mode.

Used by the demo's summary (incidents read from the incidents topic, matched by `ts`) and by
benchmarks/demo_faults.py (the same schedule offline), so both judge incidents the same way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streammoe.demo.view import DemoState

NEW_MODE = "C"  # the sensors' mode that is never in the fitting data


@dataclass(frozen=True)
class Episode:
    fault: str
    mode: str
    first_ts: int
    last_ts: int


def episodes(truth: Sequence[tuple[int, str, str | None]]) -> list[Episode]:
    """Runs of records with the same injected fault, from (ts, mode, fault) in production order."""
    out: list[Episode] = []
    run: list[tuple[int, str, str | None]] = []
    for rec in [*truth, (0, "", None)]:
        if run and (rec[2] != run[0][2] or rec[2] is None):
            out.append(Episode(str(run[0][2]), run[0][1], run[0][0], run[-1][0]))
            run = []
        if rec[2] is not None:
            run.append(rec)
    return out


def judge(truth: Sequence[tuple[int, str, str | None]], incidents: Sequence[dict]) -> dict:
    """Count incidents per fault episode, `new_mode` incidents over mode C, and the rest (false incidents).

    `incidents` are the latest message of each (first_ts, last_ts, kind). An incident overlapping a fault
    episode counts for it; a `new_mode` incident whose records are mode C counts for the new mode."""
    eps = episodes(truth)
    modes = {ts: mode for ts, mode, _ in truth}
    c_ts = [ts for ts, mode, _ in truth if mode == NEW_MODE]
    per_episode = [0] * len(eps)
    new_mode, false = 0, 0
    for inc in incidents:
        a, b = int(inc["first_ts"]), int(inc["last_ts"])
        hits = [k for k, e in enumerate(eps) if a <= e.last_ts and b >= e.first_ts]
        for k in hits:
            per_episode[k] += 1
        if inc.get("kind") == "new_mode" and c_ts and a <= c_ts[-1] and b >= c_ts[0]:
            new_mode += 1
        elif not hits:
            false += 1
    return {
        "episodes": [{"fault": e.fault, "mode": e.mode, "incidents": n} for e, n in zip(eps, per_episode)],
        "new_mode_incidents": new_mode,
        "false_incidents": false,
        "false_by_mode": _false_by_mode(incidents, eps, modes),
    }


def _false_by_mode(incidents: Sequence[dict], eps: list[Episode], modes: dict[int, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for inc in incidents:
        a, b = int(inc["first_ts"]), int(inc["last_ts"])
        if inc.get("kind") != "new_mode" and not any(a <= e.last_ts and b >= e.first_ts for e in eps):
            mode = modes.get(a, "?")
            out[mode] = out.get(mode, 0) + 1
    return out


def meets_goal(judged: dict) -> bool:
    """Issue 18's demo goal: each episode 1-2 incidents, one new_mode incident, at most 3 false ones."""
    return (
        all(1 <= e["incidents"] <= 2 for e in judged["episodes"])
        and judged["new_mode_incidents"] == 1
        and judged["false_incidents"] <= 3
    )


def incident_summary(state: DemoState, truth: Mapping[int, tuple[str, str | None]]) -> dict:
    """The demo summary's incidents: what was read from the incidents topic and how it matches the truth."""
    with state.lock:
        latest = list(state.incidents.values())
        messages, still_open = state.incident_messages, state.incidents_open()
    ordered = sorted((ts, mode, fault) for ts, (mode, fault) in truth.items())
    return {
        "total": len(latest),
        "open": still_open,
        "messages": messages,
        "by_kind": dict(Counter(i.get("kind", "?") for i in latest)),
        "judged": judge(ordered, latest),
    }
