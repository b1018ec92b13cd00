"""A fresh model reads the control topic from its beginning: a command that names only a slot and was sent
before the model's lineage began is refused, never applied to the expert that now holds the slot. The birth time
travels with checkpoints (version 3) and snapshots (manifest version 3); older ones read as unknown."""

from __future__ import annotations

import json
import time
from pathlib import Path

import orjson
from clients_kit import CHANNELS, FakeMessage, MemorySnapshotTopic, fitted, make

from streammoe.config import CheckpointSettings
from streammoe.state.checkpoint import Checkpointer, ModelState
from streammoe.state.snapshot import Manifest, SnapshotWriter, read_latest


def command(control, value: dict, sent_ms: int) -> None:  # type: ignore[no-untyped-def]
    control.log.append(FakeMessage(control.topic, 0, len(control.log), orjson.dumps(value), None, _timestamp=sent_ms))


def test_an_old_slot_only_verdict_is_refused_by_a_fresh_model_and_a_new_one_applies(tmp_path: Path) -> None:
    daemon, clients = make(tmp_path)
    daemon.state.detector = fitted()  # a fresh model (as from a bootstrap directory): born as the daemon started
    born, lineage = daemon.state.born_ms, daemon.state.lineage
    assert abs(born - time.time() * 1000) < 60_000
    control, sink = clients.control_client, clients.sink_client
    old = born - 3_600_000  # an hour before: a verdict on the slot of an earlier model
    command(control, {"scope": "global", "expert": 0, "status": "fault", "operator": "bob"}, old)
    command(control, {"scope": "global", "expert_id": f"{lineage}:0:fit", "status": "confirmed"}, old)
    command(control, {"scope": "global", "expert": 0, "status": "fault", "operator": "alice"}, born + 1_000)
    daemon.verdicts.apply()
    sink.flush()

    (dead,) = sink.on("dead")
    detail = dict(dead.headers or [])["detail"].decode()
    assert "only slot 0" in detail and f"lineage {lineage}" in detail and "expert_id" in detail
    events = [orjson.loads(e.value or b"") for e in sink.on("events")]
    assert [(e["status"], e["operator"]) for e in events] == [("confirmed", None), ("fault", "alice")]
    assert daemon.state.detector.expert_status()[0] == "fault"
    assert daemon.state.already_learned("control", 0, 2)  # all three read, none to be read again


def test_a_slot_only_verdict_without_a_timestamp_or_a_birth_time_applies_as_before(tmp_path: Path) -> None:
    daemon, clients = make(tmp_path)
    daemon.state.detector = fitted()
    clients.control_client.feed(orjson.dumps({"scope": "global", "expert": 0, "status": "fault"}))  # no timestamp
    daemon.verdicts.apply()
    assert daemon.state.detector.expert_status()[0] == "fault"
    daemon.state.born_ms = 0  # a model restored from a version-2 checkpoint: its birth is unknown
    command(clients.control_client, {"scope": "global", "expert": 0, "status": "learned"}, 1)
    daemon.verdicts.apply()
    assert daemon.state.detector.expert_status()[0] == "learned"


def test_the_birth_time_travels_with_checkpoints_and_snapshots(tmp_path: Path) -> None:
    state = ModelState(
        "global", fitted(), lineage="cafe0001", learned_offsets={"in": {0: 5}}, born_ms=1_700_000_000_000
    )
    ckpt = Checkpointer(CheckpointSettings(dir=tmp_path), CHANNELS)
    ckpt.save(state)
    meta_path = tmp_path / "global" / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert meta["checkpoint_version"] == 3 and meta["born_ms"] == 1_700_000_000_000
    assert Checkpointer(CheckpointSettings(dir=tmp_path), CHANNELS).restore("global").born_ms == 1_700_000_000_000

    # A version-2 checkpoint, as the previous streammoe wrote it: birth unknown (0), everything else as saved.
    del meta["born_ms"]
    meta_path.write_text(json.dumps({**meta, "checkpoint_version": 2}))
    old = Checkpointer(CheckpointSettings(dir=tmp_path), CHANNELS).restore("global")
    assert old.born_ms == 0 and old.lineage == "cafe0001" and old.learned_offsets == {"in": {0: 5}}

    topic = MemorySnapshotTopic(partitions=1)
    manifest = SnapshotWriter(topic).write(state, partition=0)
    assert manifest.version == 4 and manifest.born_ms == 1_700_000_000_000
    states, _ = read_latest(topic, CHANNELS)
    assert states["global"].born_ms == 1_700_000_000_000
    v2 = orjson.loads(manifest.to_bytes())
    del v2["born_ms"]
    read = Manifest.from_bytes(orjson.dumps({**v2, "version": 2}))
    assert read.born_ms == 0 and read.lineage == "cafe0001"
