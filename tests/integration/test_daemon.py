"""The daemon against a real broker: every input offset accounted for, restarts and SIGTERM lose nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter

import jsonschema
import numpy as np
import orjson
import pytest
from conftest import committed_offsets, consume_all, log_ends, produce
from daemon_kit import (
    MALFORMED,
    dead_key,
    env_for,
    make_daemon,
    normal_rows,
    record,
    source_key,
    topics,
    valid_items,
    warmup_env,
)

from streammoe.state.persistence import read_meta
from streammoe.wire.alerts import alert_schema

pytestmark = pytest.mark.integration


def test_every_offset_accounted_alerts_valid_and_planted_anomaly_found(
    broker, topic_name, bootstrap_model, tmp_path, monkeypatch
) -> None:
    t = topics(topic_name)
    rng = np.random.default_rng(1)
    items: list[tuple[bytes | None, bytes | None]] = list(valid_items(rng, 3000))
    bad = list(MALFORMED)
    for i, raw in enumerate(bad):
        items.insert(100 + i * 150, (b"bad", raw))
    planted = normal_rows(rng, 1)[0]
    planted[3] += 40.0
    items.insert(2500, (b"planted", record("planted-1", 99, planted)))
    items.insert(2600, (None, None))  # a tombstone: no value at all
    delivered = produce(broker, t["input"], items)
    n = len(items)

    daemon = make_daemon(monkeypatch, env_for(broker, t, topic_name("group"), tmp_path / "ckpt", bootstrap_model))
    summary = daemon.run(max_records=n, timeout_s=60)

    assert summary.records_in == n
    assert summary.alerts + summary.non_alerts + summary.dead_letters == n
    everything = set(delivered)
    assert len(everything) == n
    alerts = consume_all(broker, t["alerts"], summary.alerts)
    dead = consume_all(broker, t["dead"], summary.dead_letters)
    scores = consume_all(broker, t["scores"])
    alert_keys = [source_key(m) for m in alerts]
    dead_keys = [dead_key(m) for m in dead]
    score_keys = [source_key(m) for m in scores]
    assert len(set(alert_keys)) == len(alert_keys) == summary.alerts
    assert len(set(dead_keys)) == len(dead_keys) == len(bad) + 1
    assert len(set(score_keys)) == len(score_keys)
    assert set(score_keys).isdisjoint(dead_keys) and set(score_keys) | set(dead_keys) == everything
    flagged = {source_key(m) for m in scores if orjson.loads(m.value)["is_anomaly"]}
    assert flagged == set(alert_keys)
    non_alerts = everything - set(alert_keys) - set(dead_keys)
    assert len(non_alerts) == summary.non_alerts

    reasons = Counter(m.headers["reason"].decode() for m in dead)
    assert reasons == Counter([*MALFORMED.values(), "tombstone"])
    for m in dead:
        if m.value:
            assert MALFORMED[m.value] == m.headers["reason"].decode()
        assert m.headers["source_topic"].decode() == t["input"]

    validator = jsonschema.Draft202012Validator(alert_schema())
    for m in alerts:
        validator.validate(orjson.loads(m.value))
        assert m.key == orjson.loads(m.value)["asset"].encode()
    planted_alerts = [orjson.loads(m.value) for m in alerts if orjson.loads(m.value)["asset"] == "planted-1"]
    assert len(planted_alerts) == 1
    assert planted_alerts[0]["top_channels"][0]["channel"] == "c3"
    assert planted_alerts[0]["severity"] == "critical" and planted_alerts[0]["reason"] == "score"
    assert summary.alerts < 0.02 * n, "a model fitted on the same distribution raises few false alerts"

    assert committed_offsets(broker, topic_name("group"), t["input"]) == log_ends(delivered)
    meta = read_meta(tmp_path / "ckpt" / "global")
    assert {int(p): o for p, o in meta["learned_offsets"][t["input"]].items()} == log_ends(delivered)


def test_restart_resumes_from_checkpoint_and_commits_without_gaps(
    broker, topic_name, bootstrap_model, tmp_path, monkeypatch
) -> None:
    t = topics(topic_name)
    delivered = produce(broker, t["input"], valid_items(np.random.default_rng(2), 2000))
    env = env_for(broker, t, topic_name("group"), tmp_path / "ckpt", bootstrap_model)

    first = make_daemon(monkeypatch, env)
    assert first.state.origin == "bootstrap"
    s1 = first.run(max_records=800, timeout_s=60)
    assert 800 <= s1.records_in < 2000
    learned_first = first.state.detector.counters["records_learned"]
    committed = committed_offsets(broker, topic_name("group"), t["input"])
    assert sum(committed.values()) == s1.records_in

    second = make_daemon(monkeypatch, env)
    assert second.state.origin == "checkpoint" and second.state.lineage == first.state.lineage
    assert second.state.detector.counters["records_learned"] == learned_first
    s2 = second.run(max_records=2000 - s1.records_in, timeout_s=60)
    assert s1.records_in + s2.records_in == 2000

    keys = [source_key(m) for m in consume_all(broker, t["scores"])]
    assert len(keys) == len(set(keys)) == 2000, "each record scored once across the restart"
    assert set(keys) == set(delivered)
    assert committed_offsets(broker, topic_name("group"), t["input"]) == log_ends(delivered)
    assert second.state.detector.counters["records_learned"] > learned_first

    # As after a crash between a checkpoint and the next commit: the group re-reads records the checkpoint
    # has learned. They are scored and published again (at-least-once) but not learned twice.
    rewind(broker, topic_name("group"), t["input"], log_ends(delivered))
    learned = second.state.detector.counters["records_learned"]
    third = make_daemon(monkeypatch, env)
    assert third.run(max_records=2000, timeout_s=60).records_in == 2000
    assert third.state.detector.counters["records_learned"] == learned
    assert len(consume_all(broker, t["scores"], 4000)) == 4000


def rewind(broker: str, group: str, topic: str, partitions: dict[int, int]) -> None:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": broker, "group.id": group, "enable.auto.commit": False})
    try:
        c.commit(offsets=[TopicPartition(topic, p, 0) for p in partitions], asynchronous=False)
    finally:
        c.close()


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_sigterm_mid_stream_exits_zero_and_loses_nothing(
    broker, topic_name, bootstrap_model, tmp_path, monkeypatch
) -> None:
    from streammoe.testing.broker import free_port as _free_port

    t = topics(topic_name)
    group = topic_name("group")
    port = _free_port()
    env = env_for(broker, t, group, tmp_path / "ckpt", bootstrap_model, STREAMMOE_HTTP__PORT=str(port))
    stop_producing = threading.Event()
    delivered: list[tuple[int, int]] = []

    def keep_producing() -> None:
        rng, ts = np.random.default_rng(3), 0
        while not stop_producing.is_set():
            delivered.extend(produce(broker, t["input"], valid_items(rng, 200, ts)))
            ts += 200
            time.sleep(0.05)

    producer = threading.Thread(target=keep_producing, daemon=True)
    producer.start()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streammoe.cli", "run"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and proc.poll() is None:
            if sum(committed_offsets(broker, group, t["input"]).values()) >= 500:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert _get(f"http://127.0.0.1:{port}/healthz") == 200
        assert _get(f"http://127.0.0.1:{port}/readyz") == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            assert b"streammoe_records_in_total" in r.read()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        stop_producing.set()
        producer.join(timeout=30)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()[-3000:]
    assert b"daemon_stopped" in err

    committed = committed_offsets(broker, group, t["input"])
    scored_before = [source_key(m) for m in consume_all(broker, t["scores"])]
    assert len(scored_before) == len(set(scored_before))
    assert set(scored_before) == {(p, o) for p, c in committed.items() for o in range(c)}, (
        "a graceful stop commits exactly what it published"
    )
    assert sum(committed.values()) < len(delivered), "stopped mid-stream"

    rest = make_daemon(monkeypatch, env | {"STREAMMOE_HTTP__ENABLED": "false"})
    assert rest.state.origin == "checkpoint"
    rest.run(max_records=len(delivered) - len(scored_before), timeout_s=60)
    keys = [source_key(m) for m in consume_all(broker, t["scores"], len(delivered))]
    assert len(keys) == len(set(keys)) and set(keys) == set(delivered)
    assert committed_offsets(broker, group, t["input"]) == log_ends(delivered)


def test_warm_up_learns_first_records_without_alerting_then_scores(broker, topic_name, tmp_path, monkeypatch) -> None:
    t = topics(topic_name)
    delivered = produce(broker, t["input"], valid_items(np.random.default_rng(4), 1200))
    env = warmup_env(broker, t, topic_name("group"), tmp_path / "ckpt", 500)
    daemon = make_daemon(monkeypatch, env)
    assert daemon.state.origin == "warmup" and daemon.state.detector is None
    summary = daemon.run(max_records=1200, timeout_s=90)
    assert summary.records_in == 1200 and 500 <= summary.warmup < 1200
    assert summary.alerts + summary.non_alerts == 1200
    scores = consume_all(broker, t["scores"], 1200 - summary.warmup)
    assert len(scores) == 1200 - summary.warmup, "warm-up records are learned, not scored"
    assert committed_offsets(broker, topic_name("group"), t["input"]) == log_ends(delivered)
    assert read_meta(tmp_path / "ckpt" / "global")["lineage"] == daemon.state.lineage
