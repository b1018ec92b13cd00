"""SIGKILL at random points of the loop, again and again: nothing lost, checkpoints whole, the last good model back.

Each trial starts `streammoe run` (tests/integration/crash_worker.py) against the real broker and kills it at
a chosen point: after scoring, after learning, after the broker acknowledged the outputs but before the offsets
moved, just before a commit, in the middle of writing a checkpoint, or between a checkpoint's two renames.
A last clean run drains the topic. Then every input offset must have a score or a dead letter, a record may be
published twice only if it was past the committed position when a worker died, and each restart must have
restored exactly the last checkpoint a worker completed.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import committed_offsets, consume_all, produce
from daemon_kit import (
    CHANNELS,
    MALFORMED,
    dead_key,
    drain_with_crash_worker,
    env_for,
    source_key,
    start_crash_worker,
    topics,
    valid_items,
)

from streammoe.state.persistence import load_detector

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POINTS = {  # where to die -> the occurrences to pick from
    "score": (1, 6),
    "learn": (1, 6),
    "outputs_acked": (1, 6),
    "commit": (1, 4),
    "checkpoint_write": (1, 16),  # a save writes 8 files: within the first two saves
    "checkpoint_swap": (1, 2),
}
TRIALS = 2 * len(POINTS)  # each point twice, at occurrences drawn at random: the test is ~15 s per trial


def read_ledger(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_sigkill_at_random_points_loses_nothing_and_restores_the_last_good_checkpoint(
    broker, topic_name, bootstrap_model, tmp_path
) -> None:
    t = topics(topic_name)
    group = topic_name("group")
    rng = np.random.default_rng(11)
    items: list[tuple[bytes | None, bytes | None]] = list(valid_items(rng, 40_000))
    for i, raw in enumerate(list(MALFORMED) * 3):
        items.insert(500 + i * 997, (b"bad", raw))
    delivered = produce(broker, t["input"], items)
    everything = set(delivered)
    ledger = tmp_path / "ledger.jsonl"
    env = env_for(
        broker,
        t,
        group,
        tmp_path / "ckpt",
        bootstrap_model,
        CRASH_LEDGER=str(ledger),
        CRASH_PACE_S="0.03",
        STREAMMOE_BATCHING__MAX_BATCH="128",
        STREAMMOE_CHECKPOINT__INTERVAL_S="0.3",
        STREAMMOE_KAFKA__SESSION_TIMEOUT_MS="3000",
        STREAMMOE_KAFKA__MAX_POLL_INTERVAL_MS="10000",
        STREAMMOE_KAFKA__EXTRA='{"heartbeat.interval.ms": "500", "topic.metadata.refresh.interval.ms": "1000"}',
        STREAMMOE_HTTP__ENABLED="false",
    )

    pick = random.Random(5)
    plan = [list(POINTS)[i % len(POINTS)] for i in range(TRIALS)]
    pick.shuffle(plan)
    uncommitted_at_kill: set[tuple[int, int]] = set()
    kills: Counter[str] = Counter()
    for point in plan:
        lo, hi = POINTS[point]
        proc = start_crash_worker(env, CRASH_POINT=point, CRASH_AFTER=str(pick.randint(lo, hi)))
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"the worker never reached {point!r}: {proc.stderr.read().decode()[-2000:]}")
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-3000:]
        kills[point] += 1

        committed = committed_offsets(broker, group, t["input"])
        published = {source_key(m) for m in consume_all(broker, t["scores"])}
        published |= {dead_key(m) for m in consume_all(broker, t["dead"])}
        uncommitted_at_kill |= {(p, o) for p, o in published if o >= committed.get(p, 0)}
        assert all((p, o) in published for p, c in committed.items() for o in range(c)), (
            "a committed offset whose outputs were never published"
        )

        # The checkpoint on disk is whole: it loads (the model itself, or the one it replaced if the kill came
        # between the renames), and it is the last one a worker completed.
        saves = [e for e in read_ledger(ledger) if e["event"] == "saved"]
        if saves:
            detector = load_detector(tmp_path / "ckpt" / "global", channels=CHANNELS)
            assert detector.counters["records_learned"] == int(saves[-1]["version"].split(".")[1])
            assert all(torch_finite(p) for p in detector.model.parameters())

    drain_with_crash_worker(broker, group, t["input"], delivered, env)
    assert kills == Counter(plan)

    scores = [source_key(m) for m in consume_all(broker, t["scores"])]
    dead = [dead_key(m) for m in consume_all(broker, t["dead"])]
    published = Counter(scores) + Counter(dead)
    assert set(published) == everything, f"lost: {sorted(everything - set(published))[:10]}"
    assert set(scores).isdisjoint(dead)
    duplicated = {k for k, n in published.items() if n > 1}
    assert duplicated <= uncommitted_at_kill, "only records past the committed position may be published twice"
    assert len(set(dead)) == 3 * len(MALFORMED)

    # Every restart came back to the last checkpoint completed before it (or the bootstrap model before any).
    last_saved = None
    restores = 0
    for e in read_ledger(ledger):
        if e["event"] == "saved":
            last_saved = e
        elif e["event"] == "restored":
            restores += 1
            if last_saved is None:
                assert e["origin"] == "bootstrap"
            else:
                assert e["origin"] == "checkpoint"
                assert (e["version"], e["learned_offsets"]) == (last_saved["version"], last_saved["learned_offsets"])
    assert restores == TRIALS + 1


def torch_finite(p) -> bool:  # type: ignore[no-untyped-def]
    return bool(p.isfinite().all())
