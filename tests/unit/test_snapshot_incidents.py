"""A scope snapshot carries the scope's incident state (in the chunked blob since manifest version 4; inline in the
manifest in versions 2 and 3); a version-1 manifest has none."""

from __future__ import annotations

import orjson
from clients_kit import CHANNELS, MemorySnapshotTopic, fitted

from streammoe.state.checkpoint import ModelState
from streammoe.state.snapshot import Manifest, SnapshotWriter, read_latest

INCIDENTS = {"version": 1, "next_offsets": {"in": {"0": 10}}, "assets": {}}


def test_the_incident_state_travels_with_the_snapshot() -> None:
    topic = MemorySnapshotTopic(partitions=1)
    state = ModelState("s", fitted(), lineage="lin", learned_offsets={"in": {0: 10}}, incidents=INCIDENTS)
    manifest = SnapshotWriter(topic).write(state, partition=0)
    assert manifest.version == 4 and manifest.incidents is None, "the state is in the chunks, not the manifest"
    states, _ = read_latest(topic, CHANNELS)
    assert states["s"].incidents == INCIDENTS


def test_a_version_1_manifest_reads_as_one_without_incidents_and_a_newer_one_is_left_out() -> None:
    new = Manifest("s", "id", 0, 1, 10, "x", "lin", {"in": {0: 5}}, incidents=INCIDENTS)
    old = orjson.loads(new.to_bytes())
    del old["version"], old["incidents"]
    read = Manifest.from_bytes(orjson.dumps(old))
    assert read.version == 1 and read.incidents is None and read.learned_offsets == {"in": {0: 5}}
    topic = MemorySnapshotTopic(partitions=1)
    topic.send("s", orjson.dumps({**orjson.loads(new.to_bytes()), "version": 9}), None, 0)
    assert read_latest(topic, CHANNELS)[0] == {}  # logged as unreadable, not loaded


def test_mutes_and_acknowledgements_travel_with_the_snapshot() -> None:
    """Incident state version 2 (operator commands): a handed-over scope keeps its mutes and what operators said."""
    from streammoe.incidents import IncidentSettings, IncidentTracker
    from streammoe.incidents.mutes import Mute
    from streammoe.incidents.operator import acknowledge, mute
    from tests.unit.test_incidents import batch

    tracker = IncidentTracker("s", IncidentSettings(open_k=3, open_n=5), CHANNELS)
    [opened] = tracker.observe(batch([1, 1, 1]))
    by = {"operator": "alice", "note": None, "control_source": {"topic": "control", "partition": 0, "offset": 3}}
    acknowledge(tracker, opened.body["incident_id"], by)
    mute(tracker, Mute("pump-1", "b", until=10**13, by=by))
    topic = MemorySnapshotTopic(partitions=1)
    state = ModelState("s", fitted(), lineage="lin", learned_offsets={"in": {0: 3}}, incidents=tracker.to_state())
    SnapshotWriter(topic).write(state, partition=0)
    states, _ = read_latest(topic, CHANNELS)
    taken = IncidentTracker("s", IncidentSettings(open_k=3, open_n=5), CHANNELS)
    taken.load_state(states["s"].incidents, now=0.0)  # type: ignore[arg-type]
    assert taken.open_incidents()[0].acknowledged == by
    assert taken.kept.mutes.covers("pump-1", 5, "b") and not taken.kept.mutes.covers("pump-1", 5, "a")


def test_a_large_incident_state_travels_in_chunks_under_the_chunk_size() -> None:
    """Full incidents (2048 record positions each) and 64 resolved ones reach ~1.7 MB: past Kafka's 1 MB message
    limit if the manifest carried them, so every message must stay under the chunk size."""
    records_at = [[i, 1_700_000_000_000 + i] for i in range(2048)]
    big = {
        "version": 2,
        "next_offsets": {"in": {"0": 10}},
        "resolved": [{"incident_id": f"s-{i}", "records_at": records_at} for i in range(65)],
    }
    assert len(orjson.dumps(big)) > 1_000_000
    topic = MemorySnapshotTopic(partitions=1)
    writer = SnapshotWriter(topic, chunk_bytes=256 * 1024)
    state = ModelState("s", fitted(), lineage="lin", learned_offsets={"in": {0: 10}}, incidents=big, born_ms=7)
    manifest = writer.write(state, partition=0)
    sizes = {k: len(v) for k, v, _ in topic.logs[0]}
    assert max(sizes.values()) <= 256 * 1024 and sizes["s"] < 4096, sizes
    states, _ = read_latest(topic, CHANNELS)
    assert states["s"].incidents == big and states["s"].born_ms == 7 and manifest.chunks > 1


def test_a_version_3_manifest_with_the_incident_state_inline_still_loads() -> None:
    topic = MemorySnapshotTopic(partitions=1)
    state = ModelState("s", fitted(), lineage="lin", learned_offsets={"in": {0: 10}}, born_ms=5)
    SnapshotWriter(topic).write(state, partition=0)  # a blob with no incident member, as version 3 wrote it
    v3 = {**orjson.loads(topic.logs[0][-1][1]), "version": 3, "incidents": INCIDENTS}
    topic.send("s", orjson.dumps(v3), None, 0)
    states, manifests = read_latest(topic, CHANNELS)
    assert manifests["s"].version == 3 and states["s"].incidents == INCIDENTS and states["s"].born_ms == 5
