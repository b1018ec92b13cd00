"""Rebalances on fake clients: a revoked scope is snapshotted and dropped, its next owner restores it before
scoring, a lost one is dropped without writing anything, and the inbox loses only the released partitions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from clients_kit import FakeMessage, MemorySnapshotTopic, fitted, make

from streammoe.state.checkpoint import ModelState

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
    a.rebalance.released([("input", 1)], lost=False)
    assert "pump-1" not in a.models
    assert [(m.partition(), m.offset()) for m in a.inbox.take()[0]] == [(0, 7)], "only partition 1 was dropped"
    assert any(key == "pump-1" for key, _, _ in topic.logs[1]), "the manifest went to snapshot partition 1"
    assert a.metrics.registry.get_sample_value("streammoe_snapshots_total") == 1

    b, b_clients = make(tmp_path / "b", partitions=2, snapshots=topic, scopes=ASSET)
    starts = b.rebalance.assigned([("input", 0), ("input", 1)])
    restored = b.models["pump-1"]
    assert restored.origin == "snapshot" and restored.lineage == "lin-1"
    assert starts == {("input", 1): 300}, "the next owner may have to start where the model learned up to"
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
