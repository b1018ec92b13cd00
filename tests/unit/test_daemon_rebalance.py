"""Rebalances on fake clients: a revoked scope is snapshotted and dropped, its next owner restores it before
scoring, a lost one is dropped without writing anything, and the inbox loses only the released partitions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from clients_kit import CHANNELS, FakeMessage, MemorySnapshotTopic, fitted, make, records

from streammoe.state.checkpoint import ModelState
from streammoe.state.snapshot import Manifest, read_latest

ASSET = {"mode": "asset"}


def holding(tmp_path: Path, topic: MemorySnapshotTopic, name: str):  # type: ignore[no-untyped-def]
    """A worker that holds scope pump-1 (on input partition 1) with a model that learned up to offset 300."""
    daemon, clients = make(tmp_path / name, partitions=2, snapshots=topic, scopes=ASSET)
    daemon.scopes.route(["pump-1"], np.array([1]))
    daemon.scopes.models["pump-1"] = ModelState(
        "pump-1", fitted(), lineage="lin-1", learned_offsets={"input": {1: 300}, "control": {0: 4}}
    )
    return daemon, clients


def test_a_revoked_scope_is_handed_to_the_next_owner_through_its_snapshot(tmp_path: Path) -> None:
    topic = MemorySnapshotTopic(partitions=2)
    a, _ = holding(tmp_path, topic, "a")
    a.inbox.add([FakeMessage("input", 0, 7, b"{}"), FakeMessage("input", 1, 301, b"{}")])  # type: ignore[list-item]
    a.scopes.judged.batch(np.array([0, 1, 1]), np.array([9, 350, 420]))  # a judged partition 1 up to 420
    a.rebalance.released([("input", 1)], lost=False)
    assert "pump-1" not in a.models and a.scopes.judged.next == {0: 10}, "partition 1's position is forgotten"
    assert [(m.partition(), m.offset()) for m in a.inbox.take()[0]] == [(0, 7)], "only partition 1 was dropped"
    assert any(key == "pump-1" for key, _, _ in topic.logs[1]), "the manifest went to snapshot partition 1"
    assert a.metrics.registry.get_sample_value("streammoe_snapshots_total") == 1

    b, b_clients = make(tmp_path / "b", partitions=2, snapshots=topic, scopes=ASSET)
    starts = b.rebalance.assigned([("input", 0), ("input", 1)])
    restored = b.models["pump-1"]
    assert restored.origin == "snapshot" and restored.lineage == "lin-1"
    assert starts == {("input", 1): 421}, "where a had judged partition 1 (pump-1 learned up to 300 of it)"
    assert b_clients.control_client.rewound == [{0: 4}], "verdicts it has not seen are read again for it"
    assert b.metrics.registry.get_sample_value("streammoe_scopes_held") == 1


def test_a_lost_scope_is_dropped_without_a_snapshot(tmp_path: Path) -> None:
    topic = MemorySnapshotTopic(partitions=2)
    a, _ = holding(tmp_path, topic, "a")
    a.warmup.collect("pump-1", np.zeros((3, 3), np.float32))
    a.rebalance.released([("input", 1)], lost=True)
    assert "pump-1" not in a.models and topic.logs == [[], []]
    a.warmup.collect("pump-1", np.zeros((1, 3), np.float32))
    assert [len(v) for v in a.warmup._collected["pump-1"]] == [1], "its warm-up records were forgotten with it"


def test_leaving_the_group_at_shutdown_writes_no_second_snapshot(tmp_path: Path) -> None:
    topic = MemorySnapshotTopic(partitions=2)
    a, _ = holding(tmp_path, topic, "a")
    a.rebalance.closing = True
    a.rebalance.released([("input", 1)], lost=False)
    assert topic.logs == [[], []] and "pump-1" not in a.models


def test_a_new_owner_that_re_reads_only_what_its_scopes_learned_writes_no_snapshot_of_them(tmp_path: Path) -> None:
    """A clean handover: each scope's snapshot says how far a had judged the partition, so the new owner starts
    where a stopped, not at pump-1's last record. Should it re-read records anyway (a start before the commit),
    those duplicates are scored, not learned, and must leave the scopes' state as it was: a snapshot written for
    them would be newer than the one handed over while holding nothing more (integration test_scaleout's
    `manifests[scope].snapshot_id` failed that way on a loaded box)."""
    topic = MemorySnapshotTopic(partitions=1)
    a, a_clients = make(tmp_path / "a", snapshots=topic, scopes=ASSET)
    for scope in ("pump-1", "pump-2"):
        a.scopes.models[scope] = ModelState(scope, fitted(), lineage=f"lin-{scope}")
    rng = np.random.default_rng(0)
    both = [r for pair in zip(records(rng, 30, "pump-1"), records(rng, 30, "pump-2", start_ts=1)) for r in pair]
    tail = records(rng, 10, "pump-2", start_ts=100)  # offsets 60-69: after pump-1's last record (59)
    a_clients.source_client.feed(both + tail)
    a.run(max_records=70, timeout_s=60)  # its shutdown snapshots both scopes, then it leaves the group
    handed = {key: value for key, value, _ in topic.logs[0] if key in ("pump-1", "pump-2")}
    assert len(handed) == 2 and len(topic.logs[0]) == 4, "one manifest and one chunk per scope"

    b, b_clients = make(tmp_path / "b", snapshots=topic, scopes=ASSET)
    starts = b.rebalance.assigned([("input", 0)])
    assert starts == {("input", 0): 70}, "a judged the partition to 70: pump-1, quiet since 59, must not pull it back"
    b_clients.source_client.next_offset[0] = 59  # read again anyway: offsets 59-69, all pump-2's
    b_clients.source_client.feed((both + tail)[59:])
    b.run(max_records=11, timeout_s=60)  # its shutdown snapshots every scope whose state moved since the restore
    assert b.summary.records_in == 11
    assert len(topic.logs[0]) == 4, "the new owner wrote no snapshot of scopes that learned nothing"


def test_a_quiet_scope_moves_on_with_its_partition_and_its_record_after_its_snapshot_is_still_learned(
    tmp_path: Path,
) -> None:
    """a snapshots pump-1 and pump-2 at offset 40; pump-1 says nothing while 40-59 are judged, so the next snapshot
    tick only moves pump-1's position on to 60 (a manifest, no model); then pump-1's record 60 is learned and a
    crashes before snapshotting it. The next owner starts at 60, not at pump-1's last record (38), and learns
    record 60 once: its models end where a's did."""
    topic = MemorySnapshotTopic(partitions=1)
    a, a_clients = make(tmp_path / "a", snapshots=topic, scopes=ASSET, batching={"pipeline": False})
    for scope in ("pump-1", "pump-2"):
        a.scopes.models[scope] = ModelState(scope, fitted(), lineage=f"lin-{scope}")
    rng = np.random.default_rng(1)
    first = [r for pair in zip(records(rng, 20, "pump-1"), records(rng, 20, "pump-2", start_ts=1)) for r in pair]
    quiet = records(rng, 20, "pump-2", start_ts=50)  # offsets 40-59
    late = records(rng, 1, "pump-1", start_ts=100) + records(rng, 9, "pump-2", start_ts=101)  # 60: pump-1's
    source, at_crash = a_clients.source_client, MemorySnapshotTopic(partitions=1)

    def tick_then_feed(more: list[bytes], crash: bool = False) -> None:  # between batches, as the loop's tick runs
        a.scopes.snapshot_changed()
        if crash:
            at_crash.logs = [list(log) for log in topic.logs]
        source.feed(more)

    source.feed(first)
    source.at_poll(2, lambda: tick_then_feed(quiet))
    source.at_poll(3, lambda: tick_then_feed(late, crash=True))
    a.run(max_records=70, timeout_s=60)
    pump_1 = [read for key, read, _ in at_crash.logs[0] if key == "pump-1"]
    assert len(pump_1) == 2 and len(at_crash.logs[0]) == 7, "2 x 2 snapshots (manifest, chunk) + pump-1's manifest"
    assert Manifest.from_bytes(pump_1[0]).snapshot_id == Manifest.from_bytes(pump_1[1]).snapshot_id

    b, b_clients = make(tmp_path / "b", snapshots=at_crash, scopes=ASSET)
    assert b.rebalance.assigned([("input", 0)]) == {("input", 0): 60}, "a had judged 0-59 into both models"
    assert b.models["pump-1"].learned_offsets["input"] == {0: 60}
    b_clients.source_client.next_offset[0] = 60  # the committed position after the crash, say
    b_clients.source_client.feed(late)
    b.run(max_records=10, timeout_s=60)
    a_end, _ = read_latest(topic, CHANNELS)  # a's shutdown snapshots, after it learned offset 60
    b_end, _ = read_latest(at_crash, CHANNELS)
    for scope in ("pump-1", "pump-2"):
        assert b_end[scope].version == a_end[scope].version, f"{scope} learned 60-69 once, as a had"
        assert b_end[scope].learned_offsets["input"] == {0: 70}
