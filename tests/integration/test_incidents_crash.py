"""A SIGKILL in the middle of an incident, then a restart, against the real broker: one incident, resolved once.

`streammoe run` (tests/integration/crash_worker.py) reads one pump's records: normal ones, a stretch far off
(the problem), normal ones again; it is killed after the broker acknowledged a batch inside the incident
(before its offsets moved), then a clean worker drains the topic. The incidents topic must hold one incident
for the problem (deduplicated on incident_id + sequence, as docs/alerts.md tells consumers to) that opened
once and resolved once.
"""

from __future__ import annotations

import signal

import numpy as np
import orjson
import pytest
from conftest import consume_all, produce
from daemon_kit import drain_with_crash_worker, env_for, normal_rows, record, start_crash_worker, topics

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BATCH = 128
WILD = (1500, 1600)  # ts (= position) of the problem's records


def test_sigkill_mid_incident_then_restart_gives_one_incident_that_resolves_once(
    broker, topic_name, bootstrap_model, tmp_path
) -> None:
    t = topics(topic_name)
    incidents_topic = topic_name("incidents")
    rows = normal_rows(np.random.default_rng(3), 3200)
    rows[WILD[0] : WILD[1]] += 40.0
    delivered = produce(broker, t["input"], [(b"pump-1", record("pump-1", i, r)) for i, r in enumerate(rows)])
    group = topic_name("group")
    env = env_for(
        broker,
        t,
        group,
        tmp_path / "ckpt",
        bootstrap_model,
        CRASH_LEDGER=str(tmp_path / "ledger"),
        CRASH_PACE_S="0.02",
        STREAMMOE_BATCHING__MAX_BATCH=str(BATCH),
        STREAMMOE_CHECKPOINT__INTERVAL_S="0.3",
        STREAMMOE_INCIDENTS__TOPIC=incidents_topic,
        STREAMMOE_HTTP__ENABLED="false",
    )
    # The 13th batch ends at record 1664: past the problem, inside its quiet period (the incident is open).
    killed = start_crash_worker(env, CRASH_POINT="outputs_acked", CRASH_AFTER=str(WILD[0] // BATCH + 2))
    try:
        killed.wait(timeout=120)
    finally:
        if killed.poll() is None:
            killed.kill()
    assert killed.returncode == -signal.SIGKILL, killed.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
    before = [orjson.loads(m.value) for m in consume_all(broker, incidents_topic)]
    assert any(m["status"] == "opened" and m["last_ts"] >= WILD[0] for m in before), before
    assert not any(m["status"] == "resolved" and m["last_ts"] >= WILD[0] for m in before), "killed mid-incident"

    drain_with_crash_worker(broker, group, t["input"], delivered, env)

    seen: dict[tuple[str, int], dict] = {}
    for m in consume_all(broker, incidents_topic):
        msg = orjson.loads(m.value)
        seen.setdefault((msg["incident_id"], msg["sequence"]), msg)  # a redelivery is dropped
    problem = [m for m in seen.values() if m["first_ts"] < WILD[1] and m["last_ts"] >= WILD[0]]
    assert len({m["incident_id"] for m in problem}) == 1, problem
    statuses = [m["status"] for m in sorted(problem, key=lambda m: m["sequence"])]
    assert statuses[0] == "opened" and statuses.count("opened") == 1
    assert statuses.count("resolved") == 1 and statuses[-1] == "resolved", statuses
    resolved = next(m for m in problem if m["status"] == "resolved")
    assert resolved["count"] >= 90 and resolved["resolution"]["by"] == "quiet"
