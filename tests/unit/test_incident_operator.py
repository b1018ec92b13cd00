"""Operator commands on a tracker's incidents: acknowledge, mute, verdicts; what they leave in the state."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest

from streammoe.incidents import IncidentTracker, Source, opens_at_once
from streammoe.incidents.mutes import MAX_MUTES, Mute
from streammoe.incidents.operator import UnknownIncident, acknowledge, expert_judged, judge, known, mute, unmute
from streammoe.wire.incidents import build_incident, incident_schema
from tests.unit.test_incidents import CHANNELS, batch, settings

VALIDATOR = jsonschema.Draft202012Validator(incident_schema())
BY = {"operator": "alice", "note": "on it", "control_source": {"topic": "control", "partition": 0, "offset": 7}}


def opened(t: IncidentTracker, start: int = 0, asset: str = "pump-1") -> str:
    [change] = t.observe(batch([1, 1, 1], start=start, asset=asset))
    assert change.status == "opened"
    return str(change.body["incident_id"])


def share(channel: int, n: int) -> np.ndarray:
    out = np.zeros((n, len(CHANNELS)), np.float32)
    out[:, channel] = 1.0
    return out


def test_an_acknowledgement_is_published_at_once_and_kept_in_the_state() -> None:
    t = IncidentTracker("global", settings(), CHANNELS)
    iid = opened(t)
    [change] = acknowledge(t, iid, BY)
    assert change.status == "updated" and change.sequence == 1
    assert change.body["acknowledged"] == BY
    VALIDATOR.validate(build_incident(change))
    again = IncidentTracker("global", settings(), CHANNELS)
    again.load_state(json.loads(json.dumps(t.to_state())), now=0.0)
    [inc] = again.open_incidents()
    assert inc.acknowledged == BY
    [later] = again.observe(batch([1, 0, 0, 0, 0], start=3))  # resolves: the acknowledgement stays on it
    assert later.status == "resolved" and later.body["acknowledged"] == BY


def test_a_resolved_incident_can_still_be_acknowledged_and_an_unknown_one_is_refused() -> None:
    t = IncidentTracker("global", settings(keep_resolved=1), CHANNELS)
    first = opened(t)
    t.observe(batch([0] * 4, start=3))
    [change] = acknowledge(t, first, BY)  # among the last keep_resolved: published again as resolved
    assert change.status == "resolved" and change.body["acknowledged"] == BY
    second = opened(t, start=10)
    t.observe(batch([0] * 4, start=13))
    assert known(t, second).id == second
    with pytest.raises(UnknownIncident, match="no incident"):
        acknowledge(t, first, BY)  # pushed out by the newer one
    with pytest.raises(UnknownIncident):
        acknowledge(t, "0" * 20, BY)


def test_a_muted_asset_still_gets_its_incidents_flagged_muted_until_the_mute_ends() -> None:
    t = IncidentTracker("global", settings(), CHANNELS)
    assert mute(t, Mute("pump-1", None, until=20_000, by=BY)) == []  # nothing open: nothing to publish
    [first] = t.observe(batch([1, 1, 1], start=0))
    assert first.body["muted"] is True
    t.observe(batch([0] * 4, start=3))
    assert t.kept.mutes.live  # ts 6 000 < until
    [other] = t.observe(batch([1, 1, 1], start=100, asset="pump-2"))
    assert other.body["muted"] is False  # another asset (whose ts are past pump-1's mute: not pump-1's)
    assert t.kept.mutes.live
    [late] = t.observe(batch([1, 1, 1], start=200))  # ts 200 000 >= until: the mute ended by itself
    assert late.body["muted"] is False and not t.kept.mutes.live


def test_muting_an_open_incident_publishes_it_muted_and_unmuting_publishes_it_again() -> None:
    t = IncidentTracker("global", settings(), CHANNELS)
    opened(t)
    [m] = mute(t, Mute("pump-1", None, until=10**12, by=BY))
    assert m.status == "updated" and m.body["muted"] is True
    assert mute(t, Mute("pump-1", None, until=10**13, by=BY)) == []  # already muted: nothing new to say
    [u] = unmute(t, "pump-1", None)
    assert u.body["muted"] is False


def test_a_channel_mute_covers_the_incidents_whose_top_channel_it_is() -> None:
    t = IncidentTracker("global", settings(), CHANNELS)
    mute(t, Mute("pump-1", "b", until=10**12, by=BY))
    mute(t, Mute("pump-2", "b", until=10**12, by=BY))
    [on_b] = t.observe(batch([1, 1, 1], share=share(1, 3)))
    [on_c] = t.observe(batch([1, 1, 1], start=10, asset="pump-2", share=share(2, 3)))
    assert on_b.body["muted"] is True and on_c.body["muted"] is False
    assert t.kept.mutes.covers("pump-1", 5, "b") and not t.kept.mutes.covers("pump-1", 5, "a")


def test_mutes_are_state_and_a_scope_keeps_a_bounded_number_of_them() -> None:
    t = IncidentTracker("global", settings(), CHANNELS)
    mute(t, Mute("pump-1", "a", until=5_000, by=BY))
    again = IncidentTracker("global", settings(), CHANNELS)
    again.load_state(json.loads(json.dumps(t.to_state())), now=0.0)
    assert again.kept.mutes.live[("pump-1", "a")].by == BY
    again.expire(now=10**6)  # the wall clock does not end a mute: the records' ts do (replays of old data)
    assert again.kept.mutes.live
    for i in range(MAX_MUTES):
        mute(again, Mute(f"pump-{i + 2}", None, until=10_000 + i, by=BY))
    assert len(again.kept.mutes.live) == MAX_MUTES and ("pump-1", "a") not in again.kept.mutes.live


def test_a_version_1_state_loads_without_operator_commands() -> None:
    """The state as this tracker wrote it before operator commands (incident state version 1)."""
    old = {
        "version": 1,
        "next_offsets": {"in": {"0": 3}},
        "assets": {
            "pump-1": {
                "seen": 3,
                "recent": None,
                "open": {
                    **{k: v for k, v in _open_state().items() if k not in ("acknowledged", "verdict", "muted")},
                    "records_at": None,
                },
            }
        },
    }
    del old["assets"]["pump-1"]["open"]["records_at"]
    t = IncidentTracker("global", settings(), CHANNELS)
    t.load_state(old, now=0.0)
    [inc] = t.open_incidents()
    assert inc.acknowledged is None and inc.verdict is None and inc.records_at == []
    assert not t.kept.mutes.live and not t.kept.closed
    assert t.to_state()["version"] == 2
    [change] = acknowledge(t, inc.id, BY)
    VALIDATOR.validate(build_incident(change))


def _open_state() -> dict:
    t = IncidentTracker("global", settings(), CHANNELS)
    opened(t)
    return t.to_state()["assets"]["pump-1"]["open"]


def test_a_normal_verdict_closes_the_incident_and_a_fault_verdict_keeps_it_open() -> None:
    t = IncidentTracker("global", settings(), CHANNELS)
    iid = opened(t)
    [closed] = judge(t, known(t, iid), {"verdict": "normal", **BY, "learned": 3})
    assert closed.status == "resolved" and closed.body["resolution"]["by"] == "operator"
    assert closed.body["verdict"]["learned"] == 3 and t.open_incidents() == []
    VALIDATOR.validate(build_incident(closed))
    other = opened(t, start=10)
    [kept] = judge(t, known(t, other), {"verdict": "fault", **BY, "learned": 0})
    assert kept.status == "updated" and t.open_incidents()[0].id == other
    [grows] = t.observe(batch([1, 1], start=13))  # still the same incident, growing, with its verdict
    assert grows.status == "updated" and grows.body["incident_id"] == other
    assert grows.body["verdict"]["verdict"] == "fault"


def test_a_verdict_on_the_expert_closes_or_reclassifies_its_new_mode_incident() -> None:
    t = IncidentTracker("global", settings(), CHANNELS)
    opened(t)
    [linked] = t.link_mode_added(1, Source("in", 0, 0), Source("in", 0, 2), {}, expert_id="3f9c2a1e:1:400")
    assert linked.body["mode_event"]["expert_id"] == "3f9c2a1e:1:400"
    assert expert_judged(t, 1, "3f9c2a1e:1:999", "fault", BY) == []  # another expert in the same slot
    [fault] = expert_judged(t, 1, "3f9c2a1e:1:400", "fault", BY)
    assert fault.body["kind"] == "anomaly" and fault.body["verdict"]["verdict"] == "fault"
    assert fault.status == "updated" and fault.body["mode_event"]["expert"] == 1
    VALIDATOR.validate(build_incident(fault))
    [back] = expert_judged(t, 1, None, "learned", BY)  # by slot; the verdict taken back
    assert back.body["kind"] == "new_mode" and back.body["verdict"] is None
    [ok] = expert_judged(t, 1, "3f9c2a1e:1:400", "confirmed", BY)
    assert ok.status == "resolved" and ok.body["resolution"]["by"] == "operator"
    assert ok.body["verdict"]["verdict"] == "normal" and ok.body["verdict"]["via"] == "expert"
    VALIDATOR.validate(build_incident(ok))


def test_only_a_spike_opens_at_once_among_critical_records() -> None:
    flagged = np.array([1, 1, 1, 1, 1, 0], bool)
    valid = np.array([1, 1, 1, 1, 0, 1], bool)
    in_range = np.array([1, 1, 1, 0, 1, 1], bool)
    log_p = np.log([1e-9, 1e-9, 1e-4, 1e-9, 1e-9, 1e-9])
    deviation = np.array([3.5, 40.0, 40.0, 3.0, np.inf, 40.0])
    crit = np.log(1e-6)
    assert opens_at_once(flagged, valid, in_range, log_p, crit, deviation, 10.0).tolist() == [
        False,  # critical but a few deviations off: counts in the debounce
        True,  # a spike
        False,  # far off but not critical
        True,  # out of range
        True,  # not finite
        False,  # not alerted
    ]
    assert opens_at_once(flagged, valid, in_range, log_p, crit, deviation, 0.0)[0]  # 0: every critical opens


def test_a_critical_record_that_is_no_spike_weighs_double_in_the_debounce() -> None:
    t = IncidentTracker("global", settings(open_k=3, open_n=5), CHANNELS)  # critical_weight 2 by default
    lone = batch([1, 0, 0, 0, 0, 0], critical=[1, 0, 0, 0, 0, 0])
    lone.at_once = np.zeros(6, bool)
    assert t.observe(lone) == []  # a stray critical record pages no one
    pair = batch([1, 0, 1, 0, 0], start=6, critical=[1, 0, 0, 0, 0])
    pair.at_once = np.zeros(5, bool)
    [change] = t.observe(pair)  # with one more alert within open_n it opens, at that alert
    assert change.status == "opened" and change.body["opened_by"]["offset"] == 8
    assert change.body["severity"] == "critical" and change.body["first_source"]["offset"] == 6
