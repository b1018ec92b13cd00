"""Scope snapshots on a real broker: round trip, newest wins, and a half-written snapshot never hides the last whole one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import consume_all

from streammoe.config import KafkaSettings
from streammoe.kafka.snapshots import SnapshotTopic
from streammoe.model.config import ModelConfig
from streammoe.model.detector import MixtureDetector
from streammoe.state.checkpoint import ModelState
from streammoe.state.snapshot import SEP, SnapshotWriter, chunk_key, read_latest

pytestmark = pytest.mark.integration

CHANNELS = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def detector() -> MixtureDetector:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (600, 4)), rng.normal(6, 1, (600, 4))]).astype(np.float32)
    d = MixtureDetector(4, ModelConfig(fit_steps=60, n_samples=2, k_max=3), CHANNELS)
    d.fit(x)
    return d


def state(detector: MixtureDetector, scope: str, offsets: dict[int, int]) -> ModelState:
    return ModelState(scope, detector, lineage=f"lin-{scope}", learned_offsets={"in": dict(offsets)})


def test_round_trip_in_small_chunks_keeps_weights_experts_and_offsets(broker, topic_name, detector) -> None:
    kafka = KafkaSettings(bootstrap_servers=broker)
    topic = SnapshotTopic(kafka, topic_name("snap"))
    writer = SnapshotWriter(topic, chunk_bytes=4096)
    manifest = writer.write(state(detector, "line-1", {0: 120, 3: 7}))
    assert manifest.chunks > 3, "small chunks: the snapshot spans several messages"
    writer.write(state(detector, "line-2", {1: 5}))

    states, manifests = read_latest(topic, CHANNELS)
    assert set(states) == {"line-1", "line-2"} and manifests["line-1"].snapshot_id == manifest.snapshot_id
    got = states["line-1"]
    assert got.origin == "snapshot" and got.lineage == "lin-line-1"
    assert got.learned_offsets == {"in": {0: 120, 3: 7}}
    assert got.detector.model.n_active == detector.model.n_active
    np.testing.assert_allclose(got.detector.mixture_weights(), detector.mixture_weights())
    for name, tensor in detector.model.state_dict().items():
        assert torch.equal(got.detector.model.state_dict()[name], tensor), name
    only, _ = read_latest(topic, CHANNELS, scopes={"line-2"})
    assert set(only) == {"line-2"}


def test_newest_whole_snapshot_wins_and_a_torn_write_falls_back(broker, topic_name, detector) -> None:
    kafka = KafkaSettings(bootstrap_servers=broker)
    topic = SnapshotTopic(kafka, topic_name("snap"))
    writer = SnapshotWriter(topic, chunk_bytes=8192)
    first = writer.write(state(detector, "s", {0: 10}))
    second = writer.write(state(detector, "s", {0: 20}))
    assert first.slot != second.slot
    states, manifests = read_latest(topic, CHANNELS)
    assert manifests["s"].snapshot_id == second.snapshot_id and states["s"].learned_offsets == {"in": {0: 20}}

    # A worker dies while writing the third snapshot: some chunks of the free slot (the first snapshot's) are
    # overwritten, no manifest follows. The second snapshot is still whole and is what a reader gets.
    topic.send(chunk_key("s", first.slot, 0), b"torn", [("snapshot_id", b"third")])
    states, manifests = read_latest(topic, CHANNELS)
    assert manifests["s"].snapshot_id == second.snapshot_id

    # The newest manifest's chunks damaged (a bad copy, a bug): the reader goes back to the older whole one, if any.
    topic.send(chunk_key("s", second.slot, 1), b"garbage", [("snapshot_id", second.snapshot_id.encode())])
    states, manifests = read_latest(topic, CHANNELS)
    assert "s" not in states, "the first snapshot's slot was torn above, the second is now damaged: nothing whole"
    third = writer.write(state(detector, "s", {0: 30}))
    states, manifests = read_latest(topic, CHANNELS)
    assert manifests["s"].snapshot_id == third.snapshot_id and states["s"].learned_offsets == {"in": {0: 30}}

    keys = {m.key.decode() for m in consume_all(broker, topic.topic)}
    assert "s" in keys and all(k == "s" or k.startswith(f"s{SEP}") for k in keys)


def test_a_scope_without_a_model_cannot_be_snapshotted(broker, topic_name) -> None:
    from streammoe.state.snapshot import SnapshotError

    writer = SnapshotWriter(SnapshotTopic(KafkaSettings(bootstrap_servers=broker), topic_name("snap")))
    with pytest.raises(SnapshotError, match="warming up"):
        writer.write(ModelState("s", None))
