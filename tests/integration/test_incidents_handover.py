"""A handover between two workers in the middle of incidents, against the real broker: one incident, not two.

One model per asset; every asset's last records of the first batch of input are far off, so each asset has an
open incident when worker b joins and worker a hands it the scopes of half the partitions (through the snapshot
topic, which carries the incident state). Normal records follow, and each incident resolves on whichever worker
then holds its scope: per asset one incident id, opened once and resolved once (deduplicated on
incident_id + sequence).
"""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from conftest import consume_all, produce
from daemon_kit import Workers, asset_scope_env, normal_rows, record, topics

from benchmarks.scaleout import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ASSETS = [f"pump-{i}" for i in range(12)]
WILD = 20 * len(ASSETS)  # the first input's last records: 20 per asset


def items(rows: np.ndarray, start_ts: int) -> list[tuple[bytes, bytes]]:
    return [
        (ASSETS[i % len(ASSETS)].encode(), record(ASSETS[i % len(ASSETS)], start_ts + i, row))
        for i, row in enumerate(rows)
    ]


def test_a_handover_mid_incident_gives_one_incident_not_two(broker, topic_name, bootstrap_model, tmp_path) -> None:
    t = topics(topic_name)
    snapshots, group, incidents = topic_name("snapshots"), topic_name("group"), topic_name("incidents")
    rng = np.random.default_rng(5)
    rows = normal_rows(rng, 3600)
    rows[-WILD:] += 40.0
    first = items(rows, 0)
    delivered_first = produce(broker, t["input"], first)
    partition_of = {key.decode(): p for (key, _), (p, _) in zip(first, delivered_first)}
    env = asset_scope_env(
        broker, t, group, tmp_path / "ckpt", bootstrap_model, snapshots, STREAMMOE_INCIDENTS__TOPIC=incidents
    )
    with Workers(env, tmp_path, broker, group, t["input"]) as workers:
        a, b = workers.a_then_b(delivered_first)
        moved = {s for s, p in partition_of.items() if p in b.held_partitions()}
        wait_for(
            "b to restore the scopes of its partitions",
            lambda: {e["scope"] for e in b.events("scope_restored")} >= moved,
            60,
            a,
            b,
        )
        second = items(normal_rows(rng, 12_000), 10_000)  # 1000 per asset: room for a 100-record quiet period
        delivered_second = produce(broker, t["input"], second)
        workers.wait_for_commits(
            "both workers to process the normal records",
            delivered_first + delivered_second,
            120,
            a,
            b,
        )
        assert a.stop() == 0 and b.stop() == 0, a.tail() + b.tail()

    seen: dict[tuple[str, int], dict] = {}
    for m in consume_all(broker, incidents):
        msg = orjson.loads(m.value)
        seen.setdefault((msg["incident_id"], msg["sequence"]), msg)
    wild_from = 3600 - WILD
    assert moved, "the handover moved some assets"
    wrong = {}
    for asset in ASSETS:
        problem = [
            m for m in seen.values() if m["asset"] == asset and m["last_ts"] >= wild_from and m["first_ts"] < 3600
        ]
        statuses = [m["status"] for m in sorted(problem, key=lambda m: m["sequence"])]
        if (
            len({m["incident_id"] for m in problem}) != 1
            or statuses.count("opened") != 1
            or statuses.count("resolved") != 1
        ):
            wrong[asset] = (asset in moved, statuses, [(m["sequence"], m["count"], m["last_ts"]) for m in problem])
    assert wrong == {}
