"""What an operator's commands do to a scope's incidents: acknowledge, mute, a verdict on an incident, and a
verdict on an expert that closes or reclassifies its `new_mode` incident.

Each returns the messages to publish (the incident's next message, with the next sequence number). What a
verdict does to the model (learning the records, marking the expert) is the daemon's part (daemon/verdicts.py);
here only the incident's own record changes. A command naming an incident the scope does not know (never
opened here, or resolved longer ago than the last `keep_resolved`) raises `UnknownIncident`.
"""

from __future__ import annotations

from typing import Any

from streammoe.incidents.incident import Incident
from streammoe.incidents.mutes import Mute
from streammoe.incidents.tracker import Change, IncidentTracker, republish


class UnknownIncident(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def find(tracker: IncidentTracker, incident_id: str) -> Incident | None:
    """An open incident, or one of the last `keep_resolved` resolved ones."""
    live = next((inc for inc in tracker.open_incidents() if inc.id == incident_id), None)
    return live if live is not None else tracker.kept.closed.get(incident_id)


def known(tracker: IncidentTracker, incident_id: str) -> Incident:
    inc = find(tracker, incident_id)
    if inc is None:
        raise UnknownIncident(
            f"scope {tracker.scope} has no incident {incident_id} (open, or among its last "
            f"{tracker.settings.keep_resolved} resolved)"
        )
    return inc


def _republish(tracker: IncidentTracker, inc: Incident) -> list[Change]:
    return [republish(tracker, inc)]


def acknowledge(tracker: IncidentTracker, incident_id: str, by: dict[str, Any]) -> list[Change]:
    """Someone is on it: recorded on the incident (`acknowledged`), which is published again at once."""
    inc = known(tracker, incident_id)
    inc.acknowledged = dict(by)
    return _republish(tracker, inc)


def mute(tracker: IncidentTracker, m: Mute) -> list[Change]:
    """Mute an asset or one of its channels; its open incident, now muted, is published again at once."""
    tracker.kept.mutes.set(m)
    return _refresh(tracker, m.asset)


def unmute(tracker: IncidentTracker, asset: str, channel: str | None) -> list[Change]:
    """End a mute before its time (no mute of that asset and channel: nothing to do)."""
    tracker.kept.mutes.clear(asset, channel)
    return _refresh(tracker, asset)


def _refresh(tracker: IncidentTracker, asset: str) -> list[Change]:
    state = tracker.assets.get(asset)
    inc = state.open if state is not None else None
    if inc is None:
        return []
    top = inc.top_channels(tracker.channels, 1)
    if tracker.kept.mutes.covers(asset, inc.last_ts, top[0]["channel"] if top else None) == inc.muted:
        return []
    return [tracker.emit(inc, "updated")]


def judge(tracker: IncidentTracker, inc: Incident, verdict: dict[str, Any]) -> list[Change]:
    """Record an operator's verdict (`verdict["verdict"]`: normal or fault). `normal` closes the incident (resolved
    `by: operator` if it was open); `fault` keeps it open and alarming."""
    inc.verdict = dict(verdict)
    if verdict["verdict"] == "normal":
        return tracker.close(inc, "operator")
    return _republish(tracker, inc)


def expert_judged(
    tracker: IncidentTracker, expert: int, expert_id: str | None, status: str, by: dict[str, Any]
) -> list[Change]:
    """An operator's verdict on an expert (`confirmed`, `fault`, `learned`) on the newest incident linked to that
    expert's `mode_added` event (by `expert_id` when the verdict and the link both carry one, else by slot):
    `confirmed` closes it as normal, `fault` reclassifies it as an `anomaly` that stays open (the expert's records
    now alert as `fault_mode` and join it), `learned` takes the verdict back (kind `new_mode` again)."""
    inc = linked(tracker, expert, expert_id)
    if inc is None:
        return []
    if status == "learned":
        inc.verdict, inc.kind = None, "new_mode"
        return _republish(tracker, inc)
    verdict = {"verdict": "normal" if status == "confirmed" else "fault", **by, "learned": 0, "via": "expert"}
    if status == "fault":
        inc.kind = "anomaly"
    return judge(tracker, inc, verdict)


def linked(tracker: IncidentTracker, expert: int, expert_id: str | None) -> Incident | None:
    """The newest incident (open first, then resolved) whose `mode_event` names this expert."""

    def names(inc: Incident) -> bool:
        ev = inc.mode_event
        if ev is None:
            return False
        if expert_id is not None and ev.get("expert_id") is not None:
            return ev["expert_id"] == expert_id
        return int(ev["expert"]) == expert

    for inc in [*tracker.open_incidents(), *reversed(list(tracker.kept.closed.values()))]:
        if names(inc):
            return inc
    return None
