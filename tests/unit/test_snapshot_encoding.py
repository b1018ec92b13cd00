"""The snapshot encoding without a broker: chunks, slots, manifests and the fallback to the last whole snapshot,
over an in-memory snapshot topic (the Kafka one moves the same bytes: tests/integration/test_snapshot.py)."""

from __future__ import annotations

import numpy as np
import pytest
from clients_kit import CHANNELS, MemorySnapshotTopic, fitted

from streammoe.state.checkpoint import ModelState
from streammoe.state.snapshot import SEP, SnapshotError, SnapshotWriter, chunk_key, read_latest


def state(scope: str, offsets: dict[int, int], seed: int = 0) -> ModelState:
    return ModelState(scope, fitted(seed), lineage=f"lin-{scope}", learned_offsets={"in": dict(offsets)})


def test_round_trip_newest_wins_and_a_torn_write_falls_back_to_the_last_whole_snapshot() -> None:
    topic = MemorySnapshotTopic(partitions=2)
    writer = SnapshotWriter(topic, chunk_bytes=4096)
    first = writer.write(state("s", {0: 10}), partition=1)
    second = writer.write(state("s", {0: 20}, seed=1), partition=1)
    assert first.chunks > 1 and first.slot != second.slot
    assert topic.logs[0] == [], "a scope living on input partition 1 goes to snapshot partition 1"
    states, manifests = read_latest(topic, CHANNELS)
    assert manifests["s"].snapshot_id == second.snapshot_id and states["s"].learned_offsets == {"in": {0: 20}}
    np.testing.assert_allclose(states["s"].detector.mixture_weights(), fitted(1).mixture_weights())

    topic.send(chunk_key("s", first.slot, 0), b"torn", [("snapshot_id", b"third")], 1)  # a writer died here
    assert read_latest(topic, CHANNELS)[1]["s"].snapshot_id == second.snapshot_id
    topic.send(chunk_key("s", second.slot, 1), b"garbage", [("snapshot_id", second.snapshot_id.encode())], 1)
    assert "s" not in read_latest(topic, CHANNELS)[0], "no whole snapshot left"
    assert all(k == "s" or k.startswith(f"s{SEP}") for log in topic.logs for k, _, _ in log)


def test_a_reader_of_some_input_partitions_gets_only_the_scopes_that_live_on_them() -> None:
    topic = MemorySnapshotTopic(partitions=4)
    writer = SnapshotWriter(topic)
    writer.write(state("a", {0: 1}), partition=0)
    writer.write(state("b", {2: 1}), partition=2)
    states, _ = read_latest(topic, CHANNELS, partitions={2})
    assert set(states) == {"b"}
    assert set(read_latest(topic, CHANNELS, scopes={"a"})[0]) == {"a"}


def test_a_scope_without_a_model_cannot_be_snapshotted() -> None:
    with pytest.raises(SnapshotError, match="warming up"):
        SnapshotWriter(MemorySnapshotTopic()).write(ModelState("s", None))


def test_a_reposition_is_a_manifest_for_the_same_chunks_and_a_new_owner_writes_the_other_slot() -> None:
    """A scope that learned nothing while its partition was judged on gets a new position without a new model; the
    next owner's first snapshot must not overwrite the chunks its restored manifest still points to."""
    topic = MemorySnapshotTopic(partitions=1)
    first = SnapshotWriter(topic).write(state("s", {0: 10}), partition=0)
    _, manifests = read_latest(topic, CHANNELS)
    writer = SnapshotWriter(topic)  # the next owner, which restored `first`
    assert writer.reposition("s", {"in": {0: 30}}, 0) is None, "it knows no snapshot of the scope yet"
    writer.restored(manifests["s"])
    assert writer.reposition("s", {"in": {0: 10}}, 0) is None, "nothing moved: nothing sent"
    sent = len(topic.logs[0])
    moved = writer.reposition("s", {"in": {0: 30}}, 0)
    assert moved is not None and len(topic.logs[0]) == sent + 1, "one manifest, no chunk"
    states, manifests = read_latest(topic, CHANNELS)
    assert manifests["s"].snapshot_id == first.snapshot_id and states["s"].learned_offsets == {"in": {0: 30}}

    torn = writer.write(state("s", {0: 40}, seed=1), partition=0)
    assert torn.slot != first.slot
    topic.logs[0].pop()  # its manifest never made it: the repositioned one still finds its chunks whole
    states, manifests = read_latest(topic, CHANNELS)
    assert manifests["s"].snapshot_id == first.snapshot_id and states["s"].learned_offsets == {"in": {0: 30}}
