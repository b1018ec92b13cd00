"""Two worker processes in one consumer group, one model per asset: partitions split, scopes handed over through
the snapshot topic when a worker joins and when one stops, and every input offset accounted for."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from conftest import consume_all, log_ends, produce
from daemon_kit import (
    CHANNELS,
    Workers,
    asset_scope_env,
    dead_key,
    normal_rows,
    record,
    source_key,
    topics,
)

from benchmarks.scaleout import wait_for
from streammoe.config import KafkaSettings
from streammoe.kafka.snapshots import SnapshotTopic
from streammoe.state.snapshot import read_latest

pytestmark = pytest.mark.integration

ASSETS = [f"pump-{i}" for i in range(12)]


def items_for(rng: np.random.Generator, n: int, start_ts: int) -> list[tuple[bytes, bytes]]:
    rows = normal_rows(rng, n)
    return [
        (ASSETS[i % len(ASSETS)].encode(), record(ASSETS[i % len(ASSETS)], start_ts + i, row))
        for i, row in enumerate(rows)
    ]


def last_offsets(items: list[tuple[bytes, bytes]], delivered: list[tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """Per asset (= scope), the partition its records went to and the offset after its last one."""
    last: dict[str, tuple[int, int]] = {}
    for (key, _), (p, o) in zip(items, delivered):
        last[key.decode()] = (p, max(o + 1, last.get(key.decode(), (p, 0))[1]))
    return last


def test_two_workers_split_partitions_and_hand_scopes_over_through_snapshots(
    broker, topic_name, bootstrap_model, tmp_path
) -> None:
    t = topics(topic_name)
    snapshots, group = topic_name("snapshots"), topic_name("group")
    rng = np.random.default_rng(3)
    first = items_for(rng, 6000, 0)
    first.insert(100, (b"pump-0", b"{not json"))
    delivered_first = produce(broker, t["input"], first)
    where = last_offsets(first[:100] + first[101:], delivered_first[:100] + delivered_first[101:])
    assert {p for p, _ in where.values()} == {0, 1, 2, 3}, "the assets must cover every partition"

    env = asset_scope_env(broker, t, group, tmp_path / "ckpt", bootstrap_model, snapshots)
    with Workers(env, tmp_path, broker, group, t["input"]) as workers:
        # Worker b joins: a hands over the scopes of the partitions it gives up.
        a, b = workers.a_then_b(delivered_first)
        moved_to_b = b.held_partitions()
        wait_for(
            "b to restore the scopes of its partitions",
            lambda: (
                {e["scope"] for e in b.events("scope_restored")}
                >= {s for s, (p, _) in where.items() if p in moved_to_b}
            ),
            60,
            a,
            b,
        )
        first_ends = log_ends(delivered_first)
        for e in b.events("scope_restored"):  # a wrote them when the partitions were revoked, after learning them
            # how far a had judged the partition (all of it), not just after the scope's own last record
            assert e["learned_to"] == first_ends[where[e["scope"]][0]] >= where[e["scope"]][1], e
            written = [w for w in a.events("snapshot_written") if w["snapshot_id"] == e["snapshot_id"]]
            assert len(written) == 1 and (written[0]["experts"], written[0]["weights"]) == (e["experts"], e["weights"])

        # Both work on new records.
        second = items_for(rng, 4000, 10_000)
        delivered_second = produce(broker, t["input"], second)
        workers.wait_for_commits(
            "both workers to process the second records",
            delivered_first + delivered_second,
            120,
            a,
            b,
        )
        assert b.events("scope_released") == [], "nothing moved while both ran"

        # Worker b stops: a takes its scopes over from the snapshots b wrote on the way out.
        held_by_b = b.held_partitions()
        earlier = len(a.events("scope_restored"))  # a may have restored these scopes before (a flip at the join)
        assert b.stop() == 0, b.tail()
        b_scopes = {s for s, (p, _) in where.items() if p in held_by_b}
        b_last = {w["scope"]: w for w in b.events("snapshot_written")}
        assert set(b_last) >= b_scopes
        wait_for(
            "a to take over b's scopes",
            lambda: (
                {e["scope"] for e in a.events("scope_restored")[earlier:] if e["partition"] in held_by_b} >= b_scopes
                and a.held_partitions() == {0, 1, 2, 3}
            ),
            90,
            a,
        )
        snap_states, manifests = read_latest(
            SnapshotTopic(KafkaSettings(bootstrap_servers=broker), snapshots), CHANNELS, scopes=b_scopes
        )
        took_over = {e["scope"]: e for e in a.events("scope_restored")[earlier:] if e["partition"] in held_by_b}
        where_now = last_offsets(second, delivered_second)
        second_ends = log_ends(delivered_first + delivered_second)
        for scope in b_scopes:
            e, state = took_over[scope], snap_states[scope]
            assert e["snapshot_id"] == b_last[scope]["snapshot_id"] == manifests[scope].snapshot_id
            assert e["experts"] == state.detector.model.n_active == b_last[scope]["experts"]
            assert e["weights"] == [float(w) for w in state.detector.mixture_weights()] == b_last[scope]["weights"]
            assert e["learned_to"] == second_ends[where_now[scope][0]], "everything b judged of it, nothing more"

        # a continues with them.
        third = items_for(rng, 3000, 20_000)
        delivered_third = produce(broker, t["input"], third)
        workers.wait_for_commits(
            "a to process the third records",
            delivered_first + delivered_second + delivered_third,
            120,
            a,
        )
        assert a.stop() == 0, a.tail()

    everything = set(delivered_first + delivered_second + delivered_third)
    published = Counter(source_key(m) for m in consume_all(broker, t["scores"]))
    published += Counter(dead_key(m) for m in consume_all(broker, t["dead"]))
    assert set(published) == everything, f"lost: {sorted(everything - set(published))[:10]}"
    assert sum(n - 1 for n in published.values()) <= 2 * 256, "duplicates only from batches in flight at a handover"

    # The models a ended with continue b's and a's lineages: each scope learned every record once, in one line.
    final, _ = read_latest(SnapshotTopic(KafkaSettings(bootstrap_servers=broker), snapshots), CHANNELS)
    last_now = last_offsets(third, delivered_third)
    third_ends = log_ends(delivered_first + delivered_second + delivered_third)
    assert set(final) == set(ASSETS)
    for scope, state in final.items():
        p = last_now[scope][0]
        assert state.learned_offsets[t["input"]] == {p: third_ends[p]}, "a judged each partition to its end"
        assert state.lineage == took_over.get(scope, {"version": state.version})["version"].split(".")[0]


def test_a_worker_killed_after_its_last_snapshot_is_taken_over_without_skipping_what_it_learned_since(
    broker, topic_name, bootstrap_model, tmp_path
) -> None:
    """The crash case: the snapshot predates the last commit. The new owner starts the partitions at the snapshot's
    position, so the records in between are scored again and learned by the restored model, not skipped."""
    t = topics(topic_name)
    snapshots, group = topic_name("snapshots"), topic_name("group")
    rng = np.random.default_rng(4)
    env = asset_scope_env(broker, t, group, tmp_path / "ckpt", bootstrap_model, snapshots, interval_s="3600")
    first = items_for(rng, 3000, 0)
    delivered_first = produce(broker, t["input"], first)
    second = items_for(rng, 3000, 10_000)
    with Workers(env, tmp_path, broker, group, t["input"]) as workers:
        a = workers.start("a")
        workers.wait_for_commits("a to process the first records", delivered_first, 120, a)
        assert a.stop() == 0, a.tail()  # its shutdown snapshots hold the first records

        killed = workers.start("killed", ckpt="a")
        delivered_second = produce(broker, t["input"], second)
        ends = log_ends(delivered_first + delivered_second)
        workers.wait_for_commits(
            "the second worker to process and commit the second records",
            delivered_first + delivered_second,
            120,
            killed,
        )
        killed.kill()  # SIGKILL: what it learned since the snapshots is gone with it, its commits are not

        b = workers.start("b")
        everything = set(delivered_first + delivered_second)
        wait_for(
            "b to score the gap again",
            lambda: len(consume_all(broker, t["scores"])) >= len(everything) + len(delivered_second),
            120,
            b,
        )
        workers.wait_for_commits("b to commit", delivered_first + delivered_second, 60, b)
        assert b.stop() == 0, b.tail()

    rewound = {
        e["partition"].rsplit("[", 1)[1].rstrip("]"): (e["start"], e["committed"])
        for e in b.events("partition_rewound")
    }
    first_ends, all_ends = log_ends(delivered_first), ends
    assert {int(p): c for p, (_, c) in rewound.items()} == all_ends, "every partition started before its commit"
    assert all(s == first_ends[int(p)] for p, (s, _) in rewound.items()), "where a had judged it, not earlier"

    published = Counter(source_key(m) for m in consume_all(broker, t["scores"]))
    assert set(published) == everything
    duplicated = {k for k, n in published.items() if n > 1}
    assert set(delivered_second) <= duplicated, "the records learned after the snapshot are scored again"
    assert all(o >= rewound[str(p)][0] for p, o in duplicated), "nothing before the snapshot's position"

    restored = {e["scope"]: e for e in b.events("scope_restored")}
    final, _ = read_latest(SnapshotTopic(KafkaSettings(bootstrap_servers=broker), snapshots), CHANNELS)
    where_first, where_second = last_offsets(first, delivered_first), last_offsets(second, delivered_second)
    assert set(final) == set(restored) == set(ASSETS)
    for scope, state in final.items():
        p = where_second[scope][0]
        assert restored[scope]["learned_to"] == first_ends[p] >= where_first[scope][1]
        assert state.learned_offsets[t["input"]] == {p: all_ends[p]}
        learned_before = int(restored[scope]["version"].split(".")[1])
        assert state.detector.counters["records_learned"] > learned_before, "the gap was learned"
        assert state.lineage == restored[scope]["version"].split(".")[0], "by the model handed over, not a new one"
