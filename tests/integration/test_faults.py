"""Faults end to end on the real broker: a hostile input stream, and a start from a damaged checkpoint."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest
from conftest import consume_all, produce
from daemon_kit import CHANNELS, env_for, make_daemon, normal_rows, record, topics, valid_items, warmup_env

from benchmarks.fuzz import ANY_DEAD, SCORED, hostile_items, run_fuzz
from streammoe.config import CheckpointSettings
from streammoe.model.config import ModelConfig
from streammoe.model.detector import MixtureDetector
from streammoe.state.checkpoint import Checkpointer, ModelState

pytestmark = pytest.mark.integration

N = 1200


def test_hostile_stream_every_offset_scored_or_dead_lettered_and_the_daemon_lives(broker) -> None:
    """`streammoe run` as a process on a seeded mix of hostile and good records (the fuzz benchmark's, smaller)."""
    report = run_fuzz(N, seed=7, bootstrap=broker, timeout_s=180)
    assert report.daemon_alive and report.exit_code == 0
    assert report.unaccounted == 0 and report.duplicated == 0
    assert report.unexpected == 0, report.unexpected_examples
    items = hostile_items(N, seed=7)
    expected_dead = Counter(i.expect for i in items if i.expect not in (SCORED, ANY_DEAD) and ":" not in i.expect)
    random_dead = sum(i.expect == ANY_DEAD for i in items)
    got = Counter(report.dead_by_reason)
    assert all(got[reason] >= n for reason, n in expected_dead.items()), (got, expected_dead)
    assert report.dead_letters == sum(expected_dead.values()) + random_dead == sum(got.values())
    assert report.scored == sum(i.expect == SCORED or i.expect.startswith("alert:") for i in items)
    extreme = sum(i.expect == "alert:out_of_range" for i in items)
    assert report.alerts_by_reason.get("out_of_range") == extreme > 0
    assert report.poison_metric == {"out_of_range": float(extreme)}
    assert report.rss_mb_at_end - report.rss_mb_after_first_quarter < 100, "memory grows with the hostile input"


def test_daemon_starts_from_the_previous_generation_when_the_checkpoint_is_damaged(
    broker, topic_name, tmp_path, monkeypatch
) -> None:
    rng = np.random.default_rng(0)
    det = MixtureDetector(len(CHANNELS), ModelConfig(fit_steps=60, n_samples=2, k_max=2), CHANNELS, device="cpu")
    det.fit(normal_rows(rng, 1000))
    ckpt = Checkpointer(CheckpointSettings(dir=tmp_path / "ckpt"), CHANNELS)
    state = ModelState("global", det, lineage="feed0001")
    ckpt.save(state)
    old_version = state.version
    det.learn_many(det.score_many(normal_rows(rng, 300)))
    ckpt.save(state)
    experts = tmp_path / "ckpt" / "global" / "experts.pt"
    experts.write_bytes(experts.read_bytes()[:1000])

    t = topics(topic_name)
    produce(broker, t["input"], valid_items(rng, 200))
    daemon = make_daemon(monkeypatch, env_for(broker, t, topic_name("group"), tmp_path / "ckpt", None))
    assert (daemon.state.origin, daemon.state.recovered, daemon.state.version) == ("checkpoint", "damaged", old_version)
    assert b'streammoe_checkpoint_fallbacks_total{reason="damaged"} 1.0' in daemon.metrics.render()
    summary = daemon.run(max_records=200, timeout_s=60)
    assert summary.alerts + summary.non_alerts == 200
    assert (tmp_path / "ckpt" / ".global.damaged").is_dir()
    restarted = Checkpointer(CheckpointSettings(dir=tmp_path / "ckpt"), CHANNELS).restore("global")
    assert restarted.recovered == "" and restarted.lineage == "feed0001"
    assert Path(tmp_path / "ckpt" / ".global.old").is_dir()


def test_absurd_readings_during_warm_up_are_left_out_of_the_first_fit(
    broker, topic_name, tmp_path, monkeypatch
) -> None:
    """Two 1e30 readings among 2000 warm-up records would set channel c2's scale to ~1e28 (blind for good)."""
    rng = np.random.default_rng(5)
    t = topics(topic_name)
    items = valid_items(rng, 2400)
    for i in (100, 1500):
        row = normal_rows(rng, 1)[0]
        row[2] = 1e30
        items[i] = (b"", record("pump-x", i, row))
    late = range(2260, 2400, 10)  # past any warm-up of 2000 records in batches of up to 256
    for i in late:  # planted deviations of 40 on c2, and 1e30 readings
        row = normal_rows(rng, 1)[0]
        row[2] += 40.0 if i % 20 else 1e30
        items[i] = (b"", record(f"late-{i}", i, row))
    produce(broker, t["input"], [(b"one-partition", value) for _, value in items])  # in order: warm-up first
    env = warmup_env(broker, t, topic_name("group"), tmp_path / "ckpt", 2000)
    daemon = make_daemon(monkeypatch, env)
    summary = daemon.run(max_records=2400, timeout_s=90)
    assert summary.records_in == 2400 and 2000 <= summary.warmup < 2260
    assert b'streammoe_poison_records_total{reason="warmup_out_of_range"} 2.0' in daemon.metrics.render()
    assert float(daemon.state.detector.model.scaler.std[2]) < 10
    alerts = [orjson.loads(m.value) for m in consume_all(broker, t["alerts"]) if m.key.startswith(b"late")]
    assert {a["asset"]: a["reason"] for a in alerts} == {
        f"late-{i}": "score" if i % 20 else "out_of_range" for i in late
    }
