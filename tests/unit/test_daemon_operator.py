"""The daemon's operator-facing conventions on fake clients: record timestamps and input headers on outputs, expert
ids in alerts and verdicts (another lineage or a reused slot is refused), drift and silence events, lag series
and per-scope gauges that leave with their partitions and scopes, and liveness fed by long steps."""

from __future__ import annotations

import time
from pathlib import Path

import jsonschema
import numpy as np
import orjson
from clients_kit import FakeMessage, fitted, make, records

from streammoe import heartbeat
from streammoe.daemon.accounting import account_learning
from streammoe.state.checkpoint import ModelState
from streammoe.wire.alerts import event_schema

EVENTS = jsonschema.Draft202012Validator(event_schema())


def test_outputs_carry_the_records_time_and_dead_letters_the_inputs_headers(tmp_path: Path) -> None:
    daemon, clients = make(tmp_path)
    daemon.state.detector = fitted()
    rng = np.random.default_rng(5)
    good = records(rng, 20, start_ts=1_732_000_000_000) + records(rng, 2, start_ts=1_732_000_000_020, shift=40.0)
    source, sink = clients.source_client, clients.sink_client
    source.feed(good)
    bad = FakeMessage(
        "input",
        0,
        source.next_offset[0],
        b"{not json",
        b"pump-1",
        [("traceparent", b"00-ab-01")],
        _timestamp=1_731_999_999_000,
    )
    source.next_offset[0] += 1
    source.queue.append(bad)
    daemon.run(max_records=len(good) + 1, timeout_s=30)

    alerts = sink.on("alerts")
    assert alerts and all(a.timestamp == orjson.loads(a.value or b"")["ts"] for a in alerts)
    assert all(orjson.loads(a.value or b"")["expert_id"].startswith(daemon.state.lineage + ":") for a in alerts)
    (dead,) = sink.on("dead")
    assert dead.headers is not None and dead.headers[0] == ("traceparent", b"00-ab-01")
    assert dict(dead.headers)["reason"] == b"not_json" and dead.timestamp == 1_731_999_999_000


def verdict(expert_id: str) -> bytes:
    return orjson.dumps({"scope": "global", "expert_id": expert_id, "status": "fault", "operator": "alice"})


def test_a_verdict_for_another_lineage_or_a_reused_slot_is_not_applied(tmp_path: Path) -> None:
    daemon, clients = make(tmp_path)
    daemon.state.detector = fitted()
    lineage, control, sink = daemon.state.lineage, clients.control_client, clients.sink_client
    born = daemon.state.detector.model.born
    control.feed(verdict("0ld11ne:0:fit"))  # an earlier model of this scope (the bootstrap restarted it)
    born[0] = 51200  # slot 0 now holds an expert added at record 51200
    control.feed(verdict(f"{lineage}:0:fit"))  # the expert that held slot 0 before
    control.feed(verdict(f"{lineage}:0:51200"))  # the one there now: applied
    daemon.verdicts.apply()
    sink.flush()

    details = [dict(d.headers or [])["detail"].decode() for d in sink.on("dead")]
    assert len(details) == 2
    assert "lineage 0ld11ne" in details[0] and f"lineage {lineage}" in details[0]
    assert f"slot 0 now holds {lineage}:0:51200" in details[1]
    assert daemon.state.detector.expert_status()[0] == "fault"
    (event,) = [orjson.loads(e.value or b"") for e in sink.on("events")]
    assert event["expert_id"] == f"{lineage}:0:51200"
    EVENTS.validate(event)


def test_drift_and_silence_reach_the_events_topic(tmp_path: Path) -> None:
    daemon, clients = make(tmp_path, silence={"after_s": 5})
    daemon.state.detector = fitted()
    source, sink = clients.source_client, clients.sink_client
    rng = np.random.default_rng(6)
    base = 1_732_000_000_000
    source.feed(records(rng, 50, asset="quiet", start_ts=base))
    source.feed(records(rng, 50, asset="busy", start_ts=base + 10_000))  # 10 s of record time later
    daemon.run(max_records=100, timeout_s=30)
    events = [orjson.loads(e.value or b"") for e in sink.on("events")]
    silent = [e for e in events if e["kind"] == "asset_silent"]
    assert [e["asset"] for e in silent] == ["quiet"] and silent[0]["clock"] == "ts"
    for e in events:
        EVENTS.validate(e)
    assert daemon.metrics.registry.get_sample_value("streammoe_asset_silences_total") == 1

    from streammoe.daemon.pipeline import Judged

    judged = Judged(
        drifts=[("global", daemon.state.version, {"kind": "likelihood_drift", "detections": 1, "level": 9.5})]
    )
    daemon.publisher.publish([], daemon.pipeline.decode([], None), judged)
    sink.flush()
    drift = [orjson.loads(e.value or b"") for e in sink.on("events") if b"likelihood_drift" in (e.value or b"")]
    assert len(drift) == 1
    EVENTS.validate(drift[0])


def test_lag_and_scope_series_leave_with_their_partitions_and_scopes(tmp_path: Path) -> None:
    daemon, _ = make(tmp_path, partitions=2, scopes={"mode": "asset"}, http={"enabled": False, "max_scope_series": 1})
    metrics = daemon.metrics
    for p in (0, 1):
        daemon._lag("input", p, 5)
    daemon.scopes.route(["pump-1", "pump-2"], np.array([1, 1]))
    for name in ("pump-1", "pump-2"):
        state = ModelState(name, fitted())
        daemon.scopes.models[name] = state
        account_learning(metrics, state, None)
    metrics.held_scopes(2)
    r = metrics.registry
    assert r.get_sample_value("streammoe_experts_active", {"scope": "pump-1"}) is not None
    assert r.get_sample_value("streammoe_experts_active", {"scope": "pump-2"}) is None, "bounded at 1"
    assert r.get_sample_value("streammoe_scopes_without_series") == 1
    daemon.rebalance.released([("input", 1)], lost=False)
    assert r.get_sample_value("streammoe_consumer_lag", {"topic": "input", "partition": "1"}) is None
    assert r.get_sample_value("streammoe_consumer_lag", {"topic": "input", "partition": "0"}) == 5
    assert r.get_sample_value("streammoe_experts_active", {"scope": "pump-1"}) is None


def test_long_steps_keep_the_daemon_alive(tmp_path: Path) -> None:
    daemon, _ = make(tmp_path, http={"enabled": False, "live_stale_s": 0.2})
    health = daemon.health
    health.progress(assigned=1)
    for _ in range(4):
        time.sleep(0.1)
        heartbeat.beat("training a candidate expert")
    assert health.live() == (True, "ok")
    time.sleep(0.3)
    ok, why = health.live()
    assert not ok and "training a candidate expert" in why


def test_mode_events_name_the_expert_by_its_id(tmp_path: Path) -> None:
    """A new expert's mode_added event carries the id a control command names it by; a slot freed and taken
    again in one step gives the id to the mode_added event only."""
    from streammoe.daemon.pipeline import Judged
    from streammoe.model.detector import LearnReport
    from streammoe.novelty.events import ModeEvent

    daemon, clients = make(tmp_path)
    daemon.state.detector = fitted()
    lineage = daemon.state.lineage
    report = LearnReport(
        events=[
            ModeEvent("mode_retired", 1, 0, detail={"weight": 0.01, "replaced": 1.0}),
            ModeEvent(
                "mode_added",
                1,
                1000,
                first_ref=5,
                last_ref=9,
                first_ts=5,
                last_ts=9,
                detail={"gain": 20.0, "explained": 0.9},
            ),
        ]
    )
    judged = Judged(
        learned=[("global", daemon.state.version, report)],
        learned_ids={"global": {0: f"{lineage}:0:fit", 1: f"{lineage}:1:51200"}},
    )
    daemon.publisher.publish([], daemon.pipeline.decode([], None), judged)
    clients.sink_client.flush()
    events = {e["kind"]: e for e in (orjson.loads(m.value or b"") for m in clients.sink_client.on("events"))}
    assert events["mode_added"]["expert_id"] == f"{lineage}:1:51200"
    assert "expert_id" not in events["mode_retired"]
    for e in events.values():
        EVENTS.validate(e)
