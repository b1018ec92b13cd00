"""Delivery and the commit cadence on fake clients: offsets move only after the broker holds the outputs, an
outage holds the batch, a stop abandons it, and commit -> checkpoint -> snapshot run in that order."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from clients_kit import fitted, make, records

from streammoe.state.checkpoint import ModelState


def test_a_batch_waits_through_an_outage_and_stores_its_offsets_once_the_broker_takes_its_outputs(
    tmp_path: Path,
) -> None:
    daemon, clients = make(tmp_path, kafka={"scores_topic": "scores"})
    daemon.state.detector = fitted()
    source, sink = clients.source_client, clients.sink_client
    source.feed(records(np.random.default_rng(1), 40))
    sink.unacknowledged(3)
    summary = daemon.run(max_records=40, timeout_s=30)

    j = clients.journal
    assert summary.records_in == 40 and len(sink.on("scores")) == 40
    assert j[j.index("pause") - 1].startswith("flush unacknowledged"), "paused once the first flush failed"
    assert j.index("resume") < j.index("store 0:40"), "offsets stored after the outage ended"
    assert [e for e in j if e.startswith("flush")][:4] == ["flush unacknowledged 40"] * 3 + ["flush 40"]
    assert source.polls["paused"] >= 3, "the consumer was polled (paused) while the batch waited"
    assert not daemon.watch.down, "the outage ended by itself"
    assert daemon.metrics.registry.get_sample_value("streammoe_broker_outages_total") == 1
    assert daemon.metrics.registry.get_sample_value("streammoe_outputs_resent_total") == 120
    assert source.committed == {("input", 0): 40}


def test_a_stop_during_an_outage_abandons_the_batch_and_commits_nothing(tmp_path: Path) -> None:
    daemon, clients = make(tmp_path, kafka={"scores_topic": "scores"})
    daemon.state.detector = fitted()
    source, sink = clients.source_client, clients.sink_client
    source.feed(records(np.random.default_rng(2), 40))
    sink.unacknowledged(10_000)
    flushes = {"n": 0}

    def stop_after_a_few() -> None:
        flushes["n"] += 1
        if flushes["n"] == 3:
            daemon.stop()

    sink.on_flush = stop_after_a_few
    daemon.run(timeout_s=30)

    assert not any(e.startswith("store") for e in clients.journal), "the abandoned batch stores no offset"
    assert source.committed == {} and "commit" not in clients.journal, "nothing is committed during an outage"
    assert sink.sent == [] and sink.pending == 0, "the unacknowledged outputs were dropped at shutdown"
    assert "close" in clients.journal


def test_commit_then_checkpoint_then_snapshot_between_batches_and_at_shutdown(tmp_path: Path) -> None:
    daemon, clients = make(tmp_path)
    daemon.state.detector = fitted()
    source = clients.source_client
    source.feed(records(np.random.default_rng(3), 30))
    save = daemon.checkpointer.save

    def journaled_save(state: ModelState, offsets: dict[str, dict[int, int]] | None = None):  # type: ignore[no-untyped-def]
        clients.journal.append("checkpoint")
        return save(state, offsets)

    def journaled_snapshot() -> int:
        clients.journal.append("snapshot")
        return 0

    daemon.checkpointer.save = journaled_save  # type: ignore[method-assign]
    daemon.checkpointer.due = lambda: True  # type: ignore[method-assign]
    daemon.scopes.snapshot_due = lambda: True  # type: ignore[method-assign]
    daemon.scopes.snapshot_changed = journaled_snapshot  # type: ignore[method-assign]
    daemon.run(max_records=30, timeout_s=30)

    j = clients.journal
    first = j.index("store 0:30")
    assert j[first + 1 : first + 4] == ["commit", "checkpoint", "snapshot"], j
    assert j[-6:] == ["checkpoint", "snapshot", "commit", "close", "revoked [0]", "close_control"], "the shutdown"
    assert source.close_errors == [], "leaving the group revokes on the closing thread, which may not touch the loop"
    assert source.committed == {("input", 0): 30}


def test_lost_partitions_with_a_silent_broker_begin_an_outage(tmp_path: Path) -> None:
    daemon, clients = make(tmp_path)
    clients.sink_client.answers = False
    daemon.outage.partitions_lost()
    assert daemon.watch.down
    clients.sink_client.answers = True
    daemon.outage.probe()
    assert not daemon.watch.down, "the probe ends the outage once the broker answers"


def test_a_loop_that_fails_while_a_batch_is_judged_still_checkpoints_what_it_learned(tmp_path: Path) -> None:
    daemon, clients = make(tmp_path, batching={"pipeline": True})
    daemon.state.detector = fitted()
    source = clients.source_client
    source.feed(records(np.random.default_rng(4), 30))
    judge = daemon.pipeline.judge

    def slow(*args):  # type: ignore[no-untyped-def]
        time.sleep(0.5)
        return judge(*args)

    def broken() -> None:
        raise RuntimeError("the consumer failed")

    daemon.pipeline.judge = slow  # type: ignore[method-assign]
    source.at_poll(2, broken)  # the read ahead, while the first batch is being judged
    with pytest.raises(RuntimeError, match="consumer failed"):
        daemon.run(timeout_s=30)
    meta = orjson.loads((tmp_path / "ckpt" / "global" / "meta.json").read_bytes())
    assert meta["learned_offsets"]["input"] == {"0": 30}, "the checkpoint waited for the judged batch"
