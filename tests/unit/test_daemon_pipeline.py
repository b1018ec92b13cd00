"""The daemon's pipeline on fake clients: warm-up, scoring, reading ahead, the inbox, and the thread rules."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import orjson
import pytest
from clients_kit import FakeMessage, fitted, make, records

from streammoe.daemon.inbox import Inbox, InboxError
from streammoe.daemon.pipeline import Judged, ThreadRuleBroken


def test_warm_up_then_score_every_record_accounted_and_offsets_stored_after_outputs(tmp_path: Path) -> None:
    daemon, clients = make(tmp_path)
    source, sink = clients.source_client, clients.sink_client
    rng = np.random.default_rng(1)
    source.feed(records(rng, 256))  # the first batch: all of it collected for the fit (warmup_records=200)
    source.feed(records(rng, 100, start_ts=256))
    wild = source.feed(records(rng, 4, start_ts=356, shift=40.0))
    source.feed([b"{not json", b'{"asset_id": "a", "ts": 1}'])
    total = 362
    store = source.mark_done

    def stored_after_outputs(msgs, at=None):  # type: ignore[no-untyped-def]
        assert not sink.unacked, "offsets are stored only once every output is acknowledged"
        store(msgs, at)

    source.mark_done = stored_after_outputs  # type: ignore[method-assign]
    summary = daemon.run(max_records=total, timeout_s=60)

    assert summary.records_in == total and summary.warmup == 256
    assert summary.alerts + summary.non_alerts + summary.dead_letters == total
    assert summary.dead_letters == 2
    reasons = sorted(dict(d.headers or [])["reason"].decode() for d in sink.on("dead"))
    assert reasons == ["missing_values", "not_json"]
    alerted = {orjson.loads(a.value or b"")["source"]["offset"] for a in sink.on("alerts")}
    assert {m.offset() for m in wild} <= alerted, "readings 40 sigma out alert"
    assert daemon.state.detector is not None and daemon.state.origin == "warmup"
    assert source.committed == {("input", 0): total}, "the shutdown commits what was acknowledged"
    first_fit = clients.journal.index("pause")
    assert clients.journal[first_fit + 1] == "resume", "the consumer is paused around the warm-up fit"


def test_reading_ahead_judges_one_batch_at_a_time_and_stores_offsets_in_order(tmp_path: Path) -> None:
    daemon, clients = make(tmp_path, batching={"pipeline": True})
    daemon.state.detector = fitted()
    source = clients.source_client
    source.max_batch = 50
    source.feed(records(np.random.default_rng(2), 300))
    judging = {"now": 0, "most": 0}
    lock = threading.Lock()
    judge = daemon.pipeline.judge

    def counted(*args):  # type: ignore[no-untyped-def]
        with lock:
            judging["now"] += 1
            judging["most"] = max(judging["most"], judging["now"])
        try:
            return judge(*args)
        finally:
            with lock:
                judging["now"] -= 1

    daemon.pipeline.judge = counted  # type: ignore[method-assign]
    summary = daemon.run(max_records=300, timeout_s=60)

    assert summary.records_in == 300 and summary.read_ahead > 0
    assert judging["most"] == 1
    stores = [e for e in clients.journal if e.startswith("store")]
    assert stores == [f"store 0:{n}" for n in range(50, 301, 50)]


def test_a_rebalance_while_a_batch_waits_drops_only_the_released_partitions_from_the_inbox(tmp_path: Path) -> None:
    daemon, clients = make(tmp_path, partitions=2, batching={"pipeline": True}, kafka={"scores_topic": "scores"})
    daemon.state.detector = fitted()
    source, sink = clients.source_client, clients.sink_client
    source.max_batch = 50
    rng = np.random.default_rng(3)
    source.feed(records(rng, 50), partition=0)
    source.feed(records(rng, 50), partition=1)  # read ahead while the first batch is judged
    source.feed(records(rng, 50), partition=0)
    sink.unacknowledged(1)  # the first batch waits for the broker, polling the consumer paused
    # polls: 1 the first fetch (and the assignment), 2 the read ahead, 3 the wait for the broker
    source.at_poll(3, lambda: source.revoke([("input", 1)]))
    summary = daemon.run(max_records=100, timeout_s=30)

    assert summary.records_in == 100, "the read-ahead batch of partition 1 was dropped, not handled"
    assert source.committed == {("input", 0): 100}
    assert {orjson.loads(m.value or b"")["source"]["partition"] for m in sink.on("scores")} == {0}
    assert clients.journal.index("revoked [1]") < clients.journal.index("resume"), "revoked during the wait"


def test_a_warm_up_on_the_judge_thread_raises(tmp_path: Path) -> None:
    daemon, _ = make(tmp_path)
    state = daemon.state
    assert state.detector is None
    future = daemon.judge_thread.submit(daemon.pipeline._warm_up, state, np.zeros((5, 3), np.float32))
    with pytest.raises(ThreadRuleBroken, match="judge thread"):
        future.result(timeout=10)


def test_checkpoints_and_verdicts_refuse_to_run_while_a_batch_is_judged(tmp_path: Path) -> None:
    daemon, clients = make(tmp_path)
    release = threading.Event()
    future = daemon.judge_thread.submit(lambda: (release.wait(10), Judged())[1])
    clients.control_client.feed(b'{"expert": 0, "status": "fault"}')
    try:
        with pytest.raises(ThreadRuleBroken):
            daemon.commits.checkpoint()
        with pytest.raises(ThreadRuleBroken):
            daemon.verdicts.apply()
        with pytest.raises(ThreadRuleBroken):
            daemon.judge_thread.submit(Judged)
    finally:
        release.set()
    daemon.judge_thread.result(future, 10)
    daemon.commits.checkpoint()  # idle again


def msg(partition: int, offset: int) -> FakeMessage:
    return FakeMessage("input", partition, offset, b"{}")


def test_the_inbox_keeps_order_drops_partitions_and_forgets_a_stale_decode() -> None:
    inbox = Inbox()
    early = object()
    inbox.read_ahead([msg(0, 0), msg(1, 0)], early)  # type: ignore[list-item, arg-type]
    with pytest.raises(InboxError, match="one batch"):
        inbox.read_ahead([msg(0, 1)], early)  # type: ignore[list-item, arg-type]
    inbox.add([msg(0, 1)])  # fetched while paused: the early decode no longer covers the inbox
    assert inbox.drop_partitions([("input", 1)]) == 1
    msgs, decoded = inbox.take()
    assert [(m.partition(), m.offset()) for m in msgs] == [(0, 0), (0, 1)] and decoded is None
    assert len(inbox) == 0

    inbox.read_ahead([msg(0, 2)], early)  # type: ignore[list-item, arg-type]
    assert inbox.drop_partitions([("input", 1)]) == 0
    assert inbox.take()[1] is early, "nothing dropped or added: the batch read ahead keeps its decode"


def test_only_the_loop_thread_touches_the_inbox() -> None:
    inbox = Inbox()
    inbox.claim()
    errors: list[BaseException] = []

    def other() -> None:
        try:
            inbox.drop_partitions([("input", 0)])
        except InboxError as e:
            errors.append(e)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert len(errors) == 1
