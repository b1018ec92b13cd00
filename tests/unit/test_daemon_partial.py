"""Records with missing channels through the daemon, on fake clients: scored on the channels present, marked in
alerts and score messages, counted, never learned; a record missing more than the share is a dead letter."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import numpy as np
import orjson
from clients_kit import fitted, make, records

from streammoe.wire.alerts import alert_schema

ALERTS = jsonschema.Draft202012Validator(alert_schema())


def partial(ts: int, values: dict[str, float | None]) -> bytes:
    return orjson.dumps({"asset_id": "pump-1", "ts": ts, "values": values})


def test_a_record_with_a_missing_channel_is_scored_marked_and_not_learned(tmp_path: Path) -> None:
    daemon, clients = make(tmp_path, kafka={"scores_topic": "scores"})
    daemon.state.detector = detector = fitted()
    rng = np.random.default_rng(3)
    source, sink = clients.source_client, clients.sink_client
    normal = records(rng, 40, start_ts=1000)
    gaps = [
        partial(2000, {"a": 0.1, "b": -0.2}),  # c absent, normal
        partial(2001, {"a": 0.3, "b": None, "c": 0.5}),  # b null, normal
        partial(2002, {"a": 45.0, "b": 0.1}),  # c absent, a far off: an alert
        partial(2003, {"a": 0.2, "b": None, "c": None}),  # two of three missing: more than the share
    ]
    source.feed(normal + gaps)
    learned_before = detector.counters["records_learned"]
    daemon.run(max_records=len(normal) + len(gaps), timeout_s=30)

    (dead,) = sink.on("dead")
    headers = dict(dead.headers or [])
    assert headers["reason"] == b"missing_value" and b"['b', 'c']" in headers["detail"]
    scores = {s["ts"]: s for s in (orjson.loads(m.value or b"") for m in sink.on("scores"))}
    assert len(scores) == len(normal) + 3
    assert scores[2000]["missing_channels"] == ["c"] and scores[2001]["missing_channels"] == ["b"]
    assert scores[1000]["missing_channels"] == []
    for ts in (2000, 2001, 2002):
        assert scores[ts]["nll"] is not None and scores[ts]["mode"] >= 0
    assert not scores[2000]["is_anomaly"] and not scores[2001]["is_anomaly"]
    alerts = [orjson.loads(a.value or b"") for a in sink.on("alerts")]
    (gap_alert,) = [a for a in alerts if a["ts"] == 2002]
    ALERTS.validate(gap_alert)
    assert gap_alert["missing_channels"] == ["c"] and gap_alert["reason"] == "score"
    assert gap_alert["top_channels"][0]["channel"] == "a"
    assert all(a["missing_channels"] == [] for a in alerts if a["ts"] != 2002)

    assert detector.counters["partial"] == 3
    assert detector.counters["records_learned"] - learned_before <= len(normal)
    r = daemon.metrics.registry
    assert r.get_sample_value("streammoe_partial_records_total", {"stage": "scored"}) == 3
    assert r.get_sample_value("streammoe_dead_letters_total", {"reason": "missing_value"}) == 1


def test_a_warm_up_fit_learns_only_from_complete_records(tmp_path: Path) -> None:
    daemon, clients = make(tmp_path, checkpoint={"warmup_records": 60})
    rng = np.random.default_rng(4)
    feed = records(rng, 40, start_ts=0) + [partial(100 + i, {"a": 0.1, "b": 0.2}) for i in range(10)]
    feed += records(rng, 30, start_ts=200)
    clients.source_client.feed(feed)
    daemon.run(max_records=len(feed), timeout_s=60)
    assert daemon.state.detector is not None and daemon.state.detector.is_fitted
    r = daemon.metrics.registry
    assert r.get_sample_value("streammoe_partial_records_total", {"stage": "warmup"}) == 10
    assert not clients.sink_client.on("dead")
