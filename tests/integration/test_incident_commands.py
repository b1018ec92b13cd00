"""Operator commands on incidents through the real broker: an acknowledgement and a mute produced to the control
topic reach the incidents topic (and the alerts), a bad command the dead-letter topic, and the mute survives a
restart from the checkpoint."""

from __future__ import annotations

import threading

import numpy as np
import orjson
import pytest
from conftest import consume_all, produce
from daemon_kit import env_for, make_daemon, normal_rows, record, topics

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T0 = 1_732_000_000_000  # records' ts: epoch ms, one a second


def stretch(rng: np.random.Generator, start: int, n: int = 600, wild: tuple[int, int] = (300, 330)) -> list:
    rows = normal_rows(rng, n)
    rows[wild[0] : wild[1]] += 40.0
    return [(b"pump-1", record("pump-1", T0 + 1000 * (start + i), r)) for i, r in enumerate(rows)]


def run(daemon, **bounds: float) -> None:  # type: ignore[no-untyped-def]
    t = threading.Thread(target=daemon.run, kwargs=bounds)
    t.start()
    t.join(timeout=180)
    assert not t.is_alive(), "the daemon did not stop within its bounds"


def test_acknowledge_and_mute_on_the_control_topic(broker, topic_name, bootstrap_model, tmp_path, monkeypatch) -> None:
    rng = np.random.default_rng(5)
    t = {**topics(topic_name), "control": topic_name("control")}
    incidents_topic = topic_name("incidents")
    env = env_for(
        broker, t, topic_name("group"), tmp_path / "ckpt", bootstrap_model, STREAMMOE_INCIDENTS__TOPIC=incidents_topic
    )
    produce(broker, t["input"], stretch(rng, 0))
    run(make_daemon(monkeypatch, env), max_records=600, timeout_s=90)
    first = [orjson.loads(m.value) for m in consume_all(broker, incidents_topic)]
    problem = [m for m in first if m["first_ts"] <= T0 + 329_000 and m["last_ts"] >= T0 + 300_000]
    assert problem and problem[-1]["status"] == "resolved" and problem[-1]["muted"] is False
    iid = problem[-1]["incident_id"]

    produce(
        broker,
        t["control"],
        [
            (b"global", orjson.dumps({"command": "acknowledge", "incident_id": iid, "operator": "alice"})),
            (b"global", orjson.dumps({"command": "mute", "asset": "pump-1", "until": T0 + 10_000_000})),
            (b"global", orjson.dumps({"command": "acknowledge", "incident_id": "0" * 20})),
        ],
    )
    run(make_daemon(monkeypatch, env), timeout_s=8)  # no new input: only the control topic is read
    acked = [orjson.loads(m.value) for m in consume_all(broker, incidents_topic)]
    [ack] = [m for m in acked if m["incident_id"] == iid and m.get("acknowledged")]
    assert ack["status"] == "resolved" and ack["acknowledged"]["operator"] == "alice"
    assert ack["acknowledged"]["control_source"]["topic"] == t["control"]
    dead = [m for m in consume_all(broker, t["dead"]) if m.headers.get("reason") == b"bad_control"]
    assert len(dead) == 1 and b"no incident" in dead[0].headers["detail"]

    # A restart from the checkpoint keeps the mute: the next problem's incident and alerts are flagged muted.
    n_alerts = len(consume_all(broker, t["alerts"]))
    produce(broker, t["input"], stretch(rng, 600))
    run(make_daemon(monkeypatch, env), max_records=600, timeout_s=90)
    later = [orjson.loads(m.value) for m in consume_all(broker, incidents_topic)]
    muted = [m for m in later if m["first_ts"] <= T0 + 929_000 and m["last_ts"] >= T0 + 900_000]
    assert muted and all(m["muted"] for m in muted), later[-3:]
    alerts = [orjson.loads(m.value) for m in consume_all(broker, t["alerts"])][n_alerts:]
    assert len(alerts) >= 25 and all(a["muted"] for a in alerts)
