"""The pipelined daemon (STREAMMOE_BATCHING__PIPELINE): the next batch is fetched and decoded while this one is
judged, yet batches are judged one at a time, offsets are stored in order and every record is accounted for;
a batch that takes long pauses the partitions."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import committed_offsets, log_ends, produce
from daemon_kit import env_for, make_daemon, topics, valid_items

import streammoe.daemon.pipeline as pipeline_module

pytestmark = pytest.mark.integration


def spy_on(daemon):  # type: ignore[no-untyped-def]
    """Record the offsets stored per partition, in order, and how many batches were judged at once."""
    stored: dict[int, list[int]] = {}
    judging = {"now": 0, "most": 0}
    lock = threading.Lock()
    mark_done, judge = daemon.source.mark_done, daemon.pipeline.judge

    def spy_mark_done(msgs, at=None):  # type: ignore[no-untyped-def]
        for m in msgs:
            stored.setdefault(m.partition(), []).append(m.offset())
        return mark_done(msgs, at)

    def spy_judge(msgs, decoded, routes, at):  # type: ignore[no-untyped-def]
        with lock:
            judging["now"] += 1
            judging["most"] = max(judging["most"], judging["now"])
        try:
            return judge(msgs, decoded, routes, at)
        finally:
            with lock:
                judging["now"] -= 1

    daemon.source.mark_done = spy_mark_done
    daemon.pipeline.judge = spy_judge
    return stored, judging


def test_reading_ahead_stores_offsets_in_order_and_accounts_every_record(
    broker, topic_name, bootstrap_model, tmp_path, monkeypatch
) -> None:
    t = topics(topic_name)
    delivered = produce(broker, t["input"], valid_items(np.random.default_rng(5), 4000))
    daemon = make_daemon(
        monkeypatch,
        env_for(
            broker, t, topic_name("group"), tmp_path / "ckpt", bootstrap_model, STREAMMOE_BATCHING__PIPELINE="true"
        ),
    )
    assert daemon.settings.batching.pipeline
    stored, judging = spy_on(daemon)
    summary = daemon.run(max_records=len(delivered), timeout_s=60)

    assert summary.records_in == len(delivered)
    assert summary.alerts + summary.non_alerts + summary.dead_letters == len(delivered)
    assert summary.read_ahead > 0, "the next batch was fetched while one was judged"
    assert judging["most"] == 1, "never two batches judged at once"
    ends = log_ends(delivered)
    for partition, offsets in stored.items():  # each partition's offsets stored exactly once, in order
        assert offsets == list(range(ends[partition])), partition
    assert set(stored) == set(ends)
    assert committed_offsets(broker, topic_name("group"), t["input"]) == ends


def test_a_slow_batch_pauses_the_partitions_and_nothing_is_lost(
    broker, topic_name, bootstrap_model, tmp_path, monkeypatch
) -> None:
    t = topics(topic_name)
    delivered = produce(broker, t["input"], valid_items(np.random.default_rng(6), 2000))
    monkeypatch.setattr(pipeline_module, "PAUSE_AFTER_S", 0.05)
    daemon = make_daemon(
        monkeypatch,
        env_for(
            broker, t, topic_name("group"), tmp_path / "ckpt", bootstrap_model, STREAMMOE_BATCHING__PIPELINE="true"
        ),
    )
    stored, judging = spy_on(daemon)
    paused = threading.Event()
    pause = daemon.source.pause

    def spy_pause() -> None:
        pause()
        paused.set()

    daemon.source.pause = spy_pause
    detector = daemon.state.detector
    score_many = detector.score_many
    calls = {"n": 0, "saw_pause": None}

    def slow_second_batch(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:  # hold this batch until the loop has paused the partitions (or give up)
            calls["saw_pause"] = paused.wait(10)
            calls["paused_flag"] = daemon.source._paused
        return score_many(*args, **kwargs)

    detector.score_many = slow_second_batch
    summary = daemon.run(max_records=len(delivered), timeout_s=60)

    assert calls["saw_pause"] is True and calls["paused_flag"] is True, "a long batch pauses the partitions"
    assert not daemon.source._paused, "and resumes them once it is done"
    assert daemon.metrics.backpressure_pauses._value.get() >= 1
    assert judging["most"] == 1
    assert summary.records_in == len(delivered)
    ends = log_ends(delivered)
    for partition, offsets in stored.items():
        assert offsets == list(range(ends[partition])), partition
    assert committed_offsets(broker, topic_name("group"), t["input"]) == ends


def test_without_pipeline_nothing_is_read_ahead(broker, topic_name, bootstrap_model, tmp_path, monkeypatch) -> None:
    t = topics(topic_name)
    delivered = produce(broker, t["input"], valid_items(np.random.default_rng(7), 1500))
    env = env_for(
        broker, t, topic_name("group"), tmp_path / "ckpt", bootstrap_model, STREAMMOE_BATCHING__PIPELINE="false"
    )
    daemon = make_daemon(monkeypatch, env)
    summary = daemon.run(max_records=len(delivered), timeout_s=60)
    assert summary.read_ahead == 0 and summary.records_in == len(delivered)
    assert committed_offsets(broker, topic_name("group"), t["input"]) == log_ends(delivered)
