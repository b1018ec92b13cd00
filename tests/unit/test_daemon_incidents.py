"""Incidents from the daemon's publish step, on fake clients: one incident per problem, kept across a restart."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import numpy as np
import orjson
from clients_kit import CHANNELS, fitted, make, publish_mode_added, records

from streammoe.daemon import REF_PARTITION_SHIFT
from streammoe.novelty.events import ModeEvent
from streammoe.wire.incidents import incident_schema

TOPIC = "streammoe-incidents"
VALIDATOR = jsonschema.Draft202012Validator(incident_schema())


def stream(rng: np.random.Generator) -> list[bytes]:
    """300 normal records, 20 far off (the problem), then 200 normal ones again."""
    return records(rng, 300) + records(rng, 20, start_ts=300, shift=40.0) + records(rng, 200, start_ts=320)


def incidents(clients) -> list[dict]:  # type: ignore[no-untyped-def]
    return [orjson.loads(m.value or b"") for m in clients.sink_client.on(TOPIC)]


def test_an_anomalous_stretch_is_one_incident_that_opens_and_resolves(tmp_path: Path) -> None:
    daemon, clients = make(tmp_path)
    daemon.state.detector = fitted()
    clients.source_client.feed(stream(np.random.default_rng(0)))
    summary = daemon.run(max_records=520, timeout_s=60)
    msgs = incidents(clients)
    for m in msgs:
        VALIDATOR.validate(m)
    wild = [m for m in msgs if m["first_ts"] <= 319 and m["last_ts"] >= 300]
    assert len({m["incident_id"] for m in wild}) == 1
    assert wild[0]["status"] == "opened" and wild[-1]["status"] == "resolved"
    assert wild[-1]["count"] >= 18 and wild[-1]["severity"] == "critical"
    assert {m.key for m in clients.sink_client.on(TOPIC)} == {b"pump-1"}
    assert summary.alerts == len(clients.sink_client.on("alerts")) >= 18  # per-record alerts still on
    assert daemon.state.incidents is not None
    m = daemon.metrics
    assert m.incidents_opened.labels("global")._value.get() == len({x["incident_id"] for x in msgs})
    assert m.incidents_resolved.labels("global", "quiet")._value.get() >= 1
    assert m.incidents_open.labels("global")._value.get() == len(
        daemon.incident_publisher.tracker("global")[1].open_incidents()
    )  # type: ignore[index]


def test_alerts_off_publishes_incidents_only(tmp_path: Path) -> None:
    daemon, clients = make(tmp_path, alerts={"enabled": False})
    daemon.state.detector = fitted()
    clients.source_client.feed(stream(np.random.default_rng(0)))
    daemon.run(max_records=520, timeout_s=60)
    assert clients.sink_client.on("alerts") == []
    assert any(m["status"] == "resolved" for m in incidents(clients))


def test_a_restart_mid_incident_neither_reopens_nor_duplicates_it(tmp_path: Path) -> None:
    """The kit's 20-step model alerts falsely on a few percent of normal records, so the quiet period is 40 records
    here: with the default 100 whether the incident resolves inside the last 200 records depended on where those
    few alerts fell (any change of what the model learned moved them), not on the restart."""
    rng = np.random.default_rng(0)
    values = stream(rng)
    quiet = {"quiet_records": 40}
    first, clients = make(tmp_path, incidents=quiet)
    first.state.detector = fitted()
    clients.source_client.feed(values[:310])  # stops in the middle of the problem, then checkpoints
    first.run(max_records=310, timeout_s=60)
    before = incidents(clients)
    opened = {m["incident_id"] for m in before if m["status"] == "opened" and m["last_ts"] >= 300}
    assert len(opened) == 1 and not any(m["status"] == "resolved" and m["incident_id"] in opened for m in before)

    second, clients2 = make(tmp_path, incidents=quiet)  # restored from the checkpoint; it re-reads from offset 0
    assert second.state.incidents is not None
    clients2.source_client.feed(values)
    second.run(max_records=len(values), timeout_s=60)
    after = [m for m in incidents(clients2) if m["incident_id"] in opened]
    assert [m["status"] for m in after][-1] == "resolved"
    assert "opened" not in [m["status"] for m in after]
    assert after[0]["sequence"] > max(m["sequence"] for m in before if m["incident_id"] in opened)
    assert not [
        m for m in incidents(clients2) if m["status"] == "opened" and m["first_ts"] <= 319 and m["last_ts"] >= 300
    ], "no second incident for the same problem"


def test_a_new_expert_turns_the_open_incident_into_new_mode(tmp_path: Path) -> None:
    event = ModeEvent(
        "mode_added",
        1,
        30,
        first_ref=(0 << REF_PARTITION_SHIFT) | 5,
        last_ref=(0 << REF_PARTITION_SHIFT) | 35,
        detail={"gain": 2.0, "explained": 0.9},
    )
    daemon, clients = publish_mode_added(tmp_path, event)
    state = daemon.state
    clients.sink_client.flush()
    out = incidents(clients)
    assert [m["status"] for m in out] == ["opened", "updated"]
    assert out[-1]["kind"] == "new_mode" and out[-1]["mode_event"]["expert"] == 1
    assert out[-1]["mode_event"]["first_source"] == {"topic": "input", "partition": 0, "offset": 5}
    VALIDATOR.validate(out[-1])
    assert state.incidents is not None and state.incidents["assets"]["pump-1"]["open"]["kind"] == "new_mode"


def test_an_incident_state_this_build_cannot_read_starts_the_scope_without_incidents(tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    daemon, clients = make(tmp_path)
    daemon.state.detector = fitted()
    daemon.state.incidents = {"version": 99, "assets": {}}  # a newer build's, or a damaged meta.json's
    clients.source_client.feed(stream(np.random.default_rng(0)))
    with capture_logs() as logs:
        summary = daemon.run(max_records=520, timeout_s=60)
    assert summary.records_in == 520
    assert [e["scope"] for e in logs if e["event"] == "incident_state_unreadable"] == ["global"]
    statuses = [m["status"] for m in incidents(clients)]
    assert "opened" in statuses and "resolved" in statuses
    assert daemon.state.incidents is not None and daemon.state.incidents["version"] != 99


def test_stale_incidents_are_looked_for_once_a_second_not_at_every_turn_of_the_loop(tmp_path: Path) -> None:
    import time

    from streammoe.daemon.incidents import EXPIRE_EVERY_S

    daemon, clients = make(tmp_path)
    daemon.state.detector = fitted()
    clients.source_client.feed(stream(np.random.default_rng(0))[:310])  # ends inside the problem: one incident open
    daemon.run(max_records=310, timeout_s=60)
    publisher = daemon.incident_publisher
    visits: list[str] = []
    tracker = publisher.tracker
    publisher.tracker = lambda scope: visits.append(scope) or tracker(scope)  # type: ignore[method-assign]
    publisher.clock = lambda: time.time() + 10 * daemon.settings.incidents.stale_after_s
    time.sleep(EXPIRE_EVERY_S)
    publisher.expire()
    clients.sink_client.flush()
    assert visits == ["global"]
    last = incidents(clients)[-1]
    assert (last["status"], (last["resolution"] or {}).get("by")) == ("resolved", "stale"), incidents(clients)
    publisher.expire()  # at once again: nothing visited
    assert visits == ["global"]


def test_an_incident_resolved_stale_while_no_records_come_is_checkpointed_resolved(tmp_path: Path) -> None:
    import time

    from streammoe.daemon.incidents import EXPIRE_EVERY_S

    first, clients = make(tmp_path)
    first.state.detector = fitted()
    clients.source_client.feed(stream(np.random.default_rng(0))[:310])  # ends inside the problem: one incident open
    first.run(max_records=310, timeout_s=60)  # checkpoints at the stop, the incident open
    first.incident_publisher.clock = lambda: time.time() + 10 * first.settings.incidents.stale_after_s
    time.sleep(EXPIRE_EVERY_S)
    first.incident_publisher.expire()  # no record since: the model and its offsets stay as they were
    clients.sink_client.flush()
    assert incidents(clients)[-1]["status"] == "resolved"
    first.commits.checkpoint()

    second, _ = make(tmp_path)
    assert second.state.incidents is not None
    assert [a["open"] for a in second.state.incidents["assets"].values() if a["open"] is not None] == [], (
        "restored with the incident open, it would be resolved (or grow) a second time"
    )


def test_the_daemon_and_the_offline_scorer_mark_the_same_records_critical() -> None:
    """One severity rule (incidents.critical_records): an incident's severity in SCORES.csv is the daemon's."""
    import dataclasses

    from streammoe.daemon.incidents import scored_batch
    from streammoe.files.offline import StreamResult
    from streammoe.incidents import critical_records
    from streammoe.kafka.source import Positions

    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0, 1, (20, 3)), rng.normal(40, 1, (5, 3))]).astype(np.float32)
    detector = fitted()
    scored = detector.score_many(values)
    log_crit = float(np.log(1e-6))
    assert (scored.log_p_value < log_crit).sum() >= 5
    # A record below the critical p-value that did not alert (a raised threshold, a mute of the alert rule): no
    # incident counts it as critical, in either place.
    quiet = scored.is_anomaly.copy()
    quiet[-1] = False
    scored = dataclasses.replace(scored, is_anomaly=quiet)
    n = len(values)
    at = Positions("in", np.zeros(n, np.int64), np.arange(n, dtype=np.int64))
    daemon = scored_batch(scored, log_crit, ["pump-1"] * n, np.arange(n), at).critical
    offline = StreamResult.empty(n, 3)
    offline.put(0, scored, ["a", "b", "c"], 1, critical_p_value=1e-6)
    expected = critical_records(scored.is_anomaly, scored.valid, scored.in_range, scored.log_p_value, log_crit)
    np.testing.assert_array_equal(np.asarray(daemon, bool), expected)
    np.testing.assert_array_equal(offline.critical, expected)
    assert not expected[-1] and expected[-2]


def test_the_evidence_rule_opens_an_incident_on_a_stretch_that_never_alerts(tmp_path: Path) -> None:
    """20 records at 1.8 on every channel score p 0.002-0.04 on this small model: none alerts (threshold 1e-3),
    and only with INCIDENTS__EVIDENCE_P_VALUE do they make an incident: the daemon hands the tracker every
    record's p-value, not only the alerts'."""
    odd = [orjson.dumps({"asset_id": "pump-1", "ts": 300 + i, "values": [1.8] * len(CHANNELS)}) for i in range(20)]
    values = records(np.random.default_rng(0), 300) + odd + records(np.random.default_rng(2), 200, start_ts=320)
    found = []
    for evidence in ({}, {"evidence_p_value": 0.05, "evidence_k": 8, "evidence_n": 10}):
        daemon, clients = make(tmp_path / str(len(found)), incidents=evidence)
        daemon.state.detector = fitted()
        clients.source_client.feed(values)
        daemon.run(max_records=520, timeout_s=60)
        alerted = {orjson.loads(m.value or b"")["ts"] for m in clients.sink_client.on("alerts")}
        assert not alerted & set(range(300, 320))
        found.append([m for m in incidents(clients) if m["first_ts"] <= 319 and m["last_ts"] >= 300])
    assert found[0] == []
    assert len({m["incident_id"] for m in found[1]}) == 1
    last = found[1][-1]
    VALIDATOR.validate(last)
    assert last["status"] == "resolved" and last["severity"] == "warning" and last["count"] >= 8
    assert 300 <= last["opened_ts"] <= 319
