"""Operator commands on incidents through the daemon, on fake clients: acknowledge, mute, verdicts, refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import orjson
from clients_kit import FakeMessage, fitted, make, publish_mode_added, records

from streammoe.daemon import REF_PARTITION_SHIFT
from streammoe.novelty.events import ModeEvent
from streammoe.wire.alerts import alert_schema
from streammoe.wire.incidents import incident_schema

TOPIC = "streammoe-incidents"
INCIDENTS = jsonschema.Draft202012Validator(incident_schema())
ALERTS = jsonschema.Draft202012Validator(alert_schema())


def incidents(clients) -> list[dict]:  # type: ignore[no-untyped-def]
    return [orjson.loads(m.value or b"") for m in clients.sink_client.on(TOPIC)]


def control(clients, timestamp: int = 0, **fields: object) -> None:  # type: ignore[no-untyped-def]
    log = clients.control_client.log
    log.append(FakeMessage("control", 0, len(log), orjson.dumps({"scope": "global", **fields}), None, None, timestamp))


def problem(daemon, clients, rng: np.random.Generator, start: int = 0) -> dict:  # type: ignore[no-untyped-def]
    """200 normal records, 20 far off, 150 normal: the incident's last message."""
    values = records(rng, 200, start_ts=start) + records(rng, 20, start_ts=start + 200, shift=40.0)
    values += records(rng, 150, start_ts=start + 220)
    clients.source_client.feed(values)
    daemon.run(max_records=daemon.summary.records_in + len(values), timeout_s=60)
    wild = [m for m in incidents(clients) if m["first_ts"] <= start + 219 and m["last_ts"] >= start + 200]
    return wild[-1]


def dead(clients) -> list[bytes]:  # type: ignore[no-untyped-def]
    return [dict(d.headers or [])["detail"] for d in clients.sink_client.on("dead")]


def test_an_acknowledgement_and_a_mute_reach_the_incident_and_the_alerts(tmp_path: Path) -> None:
    daemon, clients = make(tmp_path)
    daemon.state.detector = fitted()
    rng = np.random.default_rng(0)
    inc = problem(daemon, clients, rng)
    assert inc["status"] == "resolved" and inc["muted"] is False
    control(clients, command="acknowledge", incident_id=inc["incident_id"], operator="alice")
    control(clients, command="mute", asset="pump-1", for_s=1, operator="bob", timestamp=1000)  # until ts 2000
    daemon.verdicts.apply()
    clients.sink_client.flush()
    [ack] = [m for m in incidents(clients) if m["incident_id"] == inc["incident_id"] and m.get("acknowledged")]
    assert ack["status"] == "resolved" and ack["sequence"] == inc["sequence"] + 1
    assert ack["acknowledged"]["operator"] == "alice"
    assert ack["acknowledged"]["control_source"] == {"topic": "control", "partition": 0, "offset": 0}
    INCIDENTS.validate(ack)

    before = len(clients.sink_client.on("alerts"))
    muted = problem(daemon, clients, rng, start=400)  # records' ts 400..769: muted
    assert muted["muted"] is True and muted["incident_id"] != inc["incident_id"]
    new_alerts = [orjson.loads(a.value or b"") for a in clients.sink_client.on("alerts")[before:]]
    assert len(new_alerts) >= 18 and all(a["muted"] for a in new_alerts), "muted alerts are published, flagged"
    for a in new_alerts[:3]:
        ALERTS.validate(a)
    assert daemon.state.incidents is not None and daemon.state.incidents["mutes"][0]["operator"] == "bob"
    later = problem(daemon, clients, rng, start=2000)  # ts 2000 on: the mute has ended by itself
    assert later["muted"] is False and daemon.state.incidents["mutes"] == []


def test_bad_commands_on_incidents_go_to_the_dead_letter_topic(tmp_path: Path) -> None:
    daemon, clients = make(tmp_path)
    daemon.state.detector = fitted()
    control(clients, command="acknowledge", incident_id="0" * 20)
    control(clients, command="mute", asset="pump-1", for_s=60)  # no Kafka timestamp to count from
    control(clients, command="mute", asset="pump-1", channel="nope", until=10**12)
    control(clients, command="verdict", incident_id="0" * 20, verdict="normal")
    daemon.verdicts.apply()
    clients.sink_client.flush()
    details = dead(clients)
    assert len(details) == 4 and b"no incident" in details[0] and b"Kafka timestamp" in details[1]
    assert b"no channel 'nope'" in details[2] and b"no incident" in details[3]
    assert daemon.state.learned_offsets["control"] == {0: 4}


def test_a_fresh_model_skips_old_commands_on_incidents_it_never_had_and_says_so_once(tmp_path: Path) -> None:
    """A fresh model reads the control topic from its beginning: acknowledgements and verdicts sent before its
    lineage began name an earlier model's incidents. They are counted and logged once, not dead-lettered; an
    unknown incident in a command sent after the birth still is."""
    from structlog.testing import capture_logs

    daemon, clients = make(tmp_path)
    daemon.state.detector = fitted()
    born = daemon.state.born_ms
    assert born > 0
    for i in range(5):  # an hour of history from an earlier model
        control(clients, born - 3_600_000 + i, command="acknowledge", incident_id=f"{i:020d}", operator="alice")
        control(clients, born - 3_600_000 + i, command="verdict", incident_id=f"{i:020d}", verdict="normal")
    control(clients, born + 1_000, command="acknowledge", incident_id="9" * 20)  # after the birth: a real mistake
    with capture_logs() as logs:
        daemon.verdicts.apply()
    clients.sink_client.flush()
    details = dead(clients)
    assert len(details) == 1 and b"no incident 99999" in details[0]
    skipped = daemon.metrics.registry.get_sample_value("streammoe_control_skipped_total", {"reason": "before_model"})
    assert skipped == 10
    [summary] = [e for e in logs if e["event"] == "control_skipped_before_model"]
    assert summary["commands"] == 10 and summary["scopes"] == ["global"] and summary["last"]["offset"] == 9
    assert daemon.state.learned_offsets["control"] == {0: 11}, "skipped commands are read once, not retried"


def test_commands_on_incidents_are_refused_when_incidents_are_off(tmp_path: Path) -> None:
    daemon, clients = make(tmp_path, incidents={"enabled": False})
    daemon.state.detector = fitted()
    control(clients, command="unmute", asset="pump-1")
    daemon.verdicts.apply()
    clients.sink_client.flush()
    assert b"incidents are off" in dead(clients)[0]


def test_a_normal_verdict_teaches_the_model_the_records_and_stops_the_alarm(tmp_path: Path) -> None:
    daemon, clients = make(tmp_path)
    daemon.state.detector = fitted()
    rng = np.random.default_rng(1)
    inc = problem(daemon, clients, rng)
    pattern = rng.normal(40.0, 1.0, (50, 3)).astype(np.float32)
    before = int(daemon.state.detector.score_many(pattern).is_anomaly.sum())
    control(clients, command="verdict", incident_id=inc["incident_id"], verdict="normal", operator="alice")
    daemon.verdicts.apply()
    clients.sink_client.flush()
    [judged] = [m for m in incidents(clients) if m.get("verdict")]
    INCIDENTS.validate(judged)
    assert judged["verdict"]["verdict"] == "normal" and judged["verdict"]["learned"] >= 18
    assert judged["status"] == "resolved" and judged["verdict"]["detail"] is None
    after = int(daemon.state.detector.score_many(pattern).is_anomaly.sum())
    assert before >= 45 and after <= before // 2, (before, after)
    control(clients, command="verdict", incident_id=inc["incident_id"], verdict="normal")  # again: nothing left
    daemon.verdicts.apply()
    clients.sink_client.flush()
    again = [m for m in incidents(clients) if m.get("verdict")][-1]
    assert again["verdict"]["learned"] == 0 and "no longer kept" in again["verdict"]["detail"]


def test_a_fault_verdict_keeps_the_records_out_of_the_new_mode_memory(tmp_path: Path) -> None:
    daemon, clients = make(tmp_path)
    daemon.state.detector = fitted()
    inc = problem(daemon, clients, np.random.default_rng(2))
    memory = daemon.state.detector.model.memory
    live = int((memory.seq > -(2**62)).sum())
    control(clients, command="verdict", incident_id=inc["incident_id"], verdict="fault")
    daemon.verdicts.apply()
    clients.sink_client.flush()
    [judged] = [m for m in incidents(clients) if m.get("verdict")]
    assert judged["verdict"]["forgotten"] >= 18 and judged["verdict"]["learned"] == 0
    assert int((memory.seq > -(2**62)).sum()) == live - judged["verdict"]["forgotten"]


def test_a_verdict_on_an_expert_closes_its_new_mode_incident(tmp_path: Path) -> None:
    event = ModeEvent("mode_added", 0, 30, first_ref=(0 << REF_PARTITION_SHIFT) | 5, last_ref=35, detail={})
    daemon, clients = publish_mode_added(
        tmp_path, event, learned_ids=lambda lineage: {"global": {0: f"{lineage}:0:fit"}}
    )
    state = daemon.state
    control(clients, expert_id="abc:0:fit", status="confirmed", operator="alice")
    daemon.verdicts.apply()
    clients.sink_client.flush()
    out = incidents(clients)
    assert out[1]["kind"] == "new_mode" and out[1]["mode_event"]["expert_id"] == f"{state.lineage}:0:fit"
    assert dead(clients) == [
        b"expert abc:0:fit belongs to model lineage abc; scope global's model is lineage "
        + state.lineage.encode()
        + b" (verdicts on an earlier model do not carry over)"
    ]
    control(clients, expert=0, status="confirmed", operator="alice")  # by slot
    daemon.verdicts.apply()
    clients.sink_client.flush()
    last = incidents(clients)[-1]
    assert last["status"] == "resolved" and last["resolution"]["by"] == "operator"
    assert last["verdict"]["verdict"] == "normal" and last["verdict"]["via"] == "expert"
    INCIDENTS.validate(last)


def test_a_verdict_naming_only_a_slot_never_closes_the_incident_of_an_older_expert_in_that_slot(
    tmp_path: Path,
) -> None:
    """The incident's mode_added names the expert born at 7 in slot 0; slot 0 now holds the first fit's expert
    (the old one retired and the slot was reused): a slot-only verdict means the expert in it now."""
    event = ModeEvent("mode_added", 0, 30, first_ref=(0 << REF_PARTITION_SHIFT) | 5, last_ref=35, detail={})
    daemon, clients = publish_mode_added(tmp_path, event, learned_ids=lambda lineage: {"global": {0: f"{lineage}:0:7"}})
    control(clients, expert=0, status="confirmed", operator="alice")
    daemon.verdicts.apply()
    clients.sink_client.flush()
    assert not dead(clients)
    assert daemon.state.detector.expert_status()[0] == "confirmed"  # the verdict reached the expert in the slot
    assert all(m["status"] != "resolved" for m in incidents(clients))  # and not the older expert's incident


def verdict_on_new_mode_incident(tmp_path: Path, verdict: str) -> tuple[Any, dict]:
    """A fitted daemon's new_mode incident (expert 0 added from offsets 5-35) given `verdict` by an operator: the
    daemon and the incident's last message, after checking nothing was dead-lettered and the message is valid."""
    event = ModeEvent("mode_added", 0, 30, first_ref=(0 << REF_PARTITION_SHIFT) | 5, last_ref=35, detail={})
    daemon, clients = publish_mode_added(tmp_path, event)
    clients.sink_client.flush()
    (incident_id,) = {m["incident_id"] for m in incidents(clients) if m["kind"] == "new_mode"}
    control(clients, command="verdict", incident_id=incident_id, verdict=verdict, operator="alice")
    daemon.verdicts.apply()
    clients.sink_client.flush()
    assert not dead(clients)
    last = incidents(clients)[-1]
    INCIDENTS.validate(last)
    assert last["verdict"]["verdict"] == verdict and last["verdict"]["detail"] is None, last["verdict"]
    return daemon, last


def test_a_normal_verdict_on_a_new_mode_incident_confirms_its_expert_and_says_nothing_is_lost(tmp_path: Path) -> None:
    """Its records became an expert (the memory let them go when it grew): the verdict confirms that expert, and
    its detail must not say that records are gone and the pattern may alarm again."""
    daemon, last = verdict_on_new_mode_incident(tmp_path, "normal")
    assert last["status"] == "resolved" and last["resolution"]["by"] == "operator"
    assert daemon.state.detector.expert_status()[0] == "confirmed"


def test_a_fault_verdict_on_a_new_mode_incident_makes_it_an_anomaly_as_one_on_its_expert_would(tmp_path: Path) -> None:
    daemon, last = verdict_on_new_mode_incident(tmp_path, "fault")
    assert last["status"] == "updated" and last["kind"] == "anomaly" and last["mode_event"]["expert"] == 0
    assert daemon.state.detector.expert_status()[0] == "fault"


def test_a_command_on_a_resolved_incident_publishes_it_again_without_counting_a_second_resolution(
    tmp_path: Path,
) -> None:
    daemon, clients = make(tmp_path)
    daemon.state.detector = fitted()
    inc = problem(daemon, clients, np.random.default_rng(0))
    assert inc["status"] == "resolved"
    r = daemon.metrics.registry

    def resolved() -> float | None:
        return r.get_sample_value("streammoe_incidents_resolved_total", {"scope": "global", "by": "quiet"})

    once = resolved()
    assert once is not None and once >= 1
    control(clients, command="acknowledge", incident_id=inc["incident_id"], operator="alice")
    control(clients, command="verdict", incident_id=inc["incident_id"], verdict="fault", operator="alice")
    daemon.verdicts.apply()
    clients.sink_client.flush()
    again = [m for m in incidents(clients) if m["incident_id"] == inc["incident_id"]][-2:]
    assert [m["status"] for m in again] == ["resolved", "resolved"], "published again, as docs/alerts.md says"
    assert resolved() == once, "one incident resolved once: the metric counts resolutions, not messages"
