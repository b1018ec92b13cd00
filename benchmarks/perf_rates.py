"""The fast-path bench's rates without the daemon: consume (and decode) with the daemon's consumer settings,
`score_many` and `learn_many` alone (plain and with the cascade), the E-step variants, river HalfSpaceTrees."""

from __future__ import annotations

import statistics
import time
import uuid
from typing import TYPE_CHECKING

import numpy as np

from benchmarks.workload import ANOMALY_SHIFT
from streammoe.config import Settings

if TYPE_CHECKING:
    from streammoe.model.detector import MixtureDetector


def consume_rate(settings: Settings, n: int, decode: bool) -> float:
    """Consume (and decode) `n` records with the daemon's consumer settings from a fresh group; records/s
    from the first batch to the last, so the group join does not count."""
    from confluent_kafka import Consumer

    from streammoe.config import consumer_config
    from streammoe.wire.records import RecordDecoder

    kafka = settings.kafka.model_copy(update={"group_id": f"perf-{uuid.uuid4().hex[:8]}"})
    consumer = Consumer(consumer_config(kafka))
    consumer.subscribe([kafka.input_topic])
    decoder = RecordDecoder(settings.records)
    seen, start = 0, None
    deadline = time.monotonic() + 300
    while seen < n and time.monotonic() < deadline:
        msgs = consumer.consume(settings.batching.max_batch, settings.batching.max_wait_ms / 1000)
        if msgs and start is None:
            start = time.monotonic()
        good = [m for m in msgs if m.error() is None]
        if decode:
            decoded = decoder.decode([m.value() for m in good])
            seen += len(decoded) + len(decoded.dead)
        else:
            seen += len(good)
    elapsed = time.monotonic() - (start or time.monotonic())
    consumer.close()
    return seen / elapsed if elapsed > 0 else 0.0


def model_rates(detector: MixtureDetector, batches: list[np.ndarray], repeats: int) -> tuple[float, float]:
    """Median records/s of score_many alone and of learn_many alone over the decoded batches."""
    score, learn = [], []
    detector.score_many(batches[0])  # first call: allocations (and compilation, if on)
    for r in range(repeats):
        for b in batches:
            t0 = time.perf_counter()
            scored = detector.score_many(b)
            t1 = time.perf_counter()
            detector.learn_many(scored)
            t2 = time.perf_counter()
            score.append(len(b) / (t1 - t0))
            learn.append(len(b) / (t2 - t1))
    return statistics.median(score), statistics.median(learn)


def cascade_rates(detector: MixtureDetector, batches: list[np.ndarray], repeats: int) -> dict:
    """Scoring and learning rates with the cascade on (model/cascade.py) and the share of records it gave the
    full pass; the cascade is off again afterwards."""
    detector.config.cascade.enabled = True
    try:
        score, learn = model_rates(detector, batches, repeats)
        rescored = [float(detector.score_many(b).rescored.float().mean()) for b in batches]  # type: ignore[union-attr]
    finally:
        detector.config.cascade.enabled = False
    return {"score_cascade_rec_s": score, "learn_cascade_rec_s": learn, "cascade_rescored": statistics.mean(rescored)}


def variants(detector: MixtureDetector, batches: list[np.ndarray], repeats: int, compile: bool) -> list[dict]:
    """Scoring rate and decisions of the E-step variants against plain float32 on the same batches and noise.

    1 % of each batch is pushed far off every mode, so the anomalies are known; `agree` is the share of records
    with the same decision as float32, `flagged_planted` the share of planted anomalies each variant flags."""
    rng = np.random.default_rng(3)
    planted = [rng.random(len(b)) < 0.01 for b in batches]
    data = [b.copy() for b in batches]
    for x, p in zip(data, planted):
        x[p, 0] += ANOMALY_SHIFT
    wanted = [("float32", False, "float32"), ("bfloat16", False, "bfloat16")] + (
        [("compiled", True, "float32")] if compile else []
    )
    out, base = [], None
    for name, comp, precision in wanted:
        detector.accelerate(comp, precision)
        t0 = time.perf_counter()
        detector.score_many(data[0])  # compilation, if any
        first_s = time.perf_counter() - t0
        rates, decisions = [], []
        for r in range(repeats):
            for i, x in enumerate(data):
                detector.generator.manual_seed(100 + i)
                t0 = time.perf_counter()
                scored = detector.score_many(x)
                rates.append(len(x) / (time.perf_counter() - t0))
                if r == 0:
                    decisions.append(scored.is_anomaly)
        d = np.concatenate(decisions)
        base = d if base is None else base
        p = np.concatenate(planted)
        out.append(
            {
                "variant": name,
                "score_rec_s": statistics.median(rates),
                "first_batch_s": first_s,
                "agree": float((d == base).mean()),
                "flagged_planted": float(d[p].mean()),
                "flagged_other": float(d[~p].mean()),
            }
        )
    detector.accelerate()
    return out


def hst_rate(rows: np.ndarray, n: int, height: int = 8) -> tuple[float, str]:
    """river HalfSpaceTrees as the quality bench's peer (25 trees; height 8 there, 15 in docs/platform.md): fit on
    2000 rows, then score + learn `n` rows."""
    from benchmarks.peers import HalfSpaceTreesPeer

    peer = HalfSpaceTreesPeer(height=height)
    peer.fit(rows[:2000])
    t0 = time.perf_counter()
    peer.score_many(rows[2000 : 2000 + n])
    return n / (time.perf_counter() - t0), peer.describe()
