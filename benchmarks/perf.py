"""`streammoe bench --perf`: where the time goes, from the broker to the alert, measured in one run.

On one embedded Tansu broker (memory storage) and one topic of synthetic 38-channel records from 16 operating
modes, for every K (experts) and S (importance samples) asked for:

- raw consume: the daemon's consumer settings, `consume()` only;
- consume + decode: the same plus `RecordDecoder.decode` (the ceiling for the daemon);
- score: `MixtureDetector.score_many` alone on decoded batches (median of repeats);
- learn: `learn_many` alone on those scored batches;
- end to end: the whole daemon (`Daemon.run`: consume, decode, score, learn, publish alerts, acknowledge,
  commit) from a fresh consumer group, timed from its first batch to its last acknowledgement;
- cascade (S > 1): score, learn and end to end again with `ModelConfig.cascade` on (model/cascade.py), the
  end-to-end run right after the plain one, and the share of records it gave the full pass;
- river HalfSpaceTrees (the quality bench's peer, score then learn each row) on the same records.

Consume and consume + decode run before and after the grid; the table shows the median of those runs so
every ratio divides rates measured in the same run. `--latency` adds produce -> alert latency: records are
produced at a fixed rate (default 10k/s) with the send time as `ts`, 1 % of them far off every mode, and a
reader on the alerts topic takes receive time - `ts` for every alert; then the same paced stream goes through
a relay that does no work (the daemon's consumer and producer settings, every 100th record forwarded): the
floor that the broker and the clients set on this machine, in the same run.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson

from streammoe.config import Settings
from streammoe.kafka.sink import produce as produce_message
from streammoe.testing.broker import EmbeddedBroker
from streammoe.testing.machine import Machine
from streammoe.testing.records import keyed_records
from streammoe.testing.settings import daemon_settings as kit_settings
from streammoe.testing.settings import topics_for

if TYPE_CHECKING:
    from streammoe.model.detector import MixtureDetector

N_MODES = 16
ANOMALY_SHIFT = 60.0  # added to one channel of an injected anomaly (the modes' spread is a few units)


def synthetic(n: int, modes: int, c: int, seed: int = 0) -> np.ndarray:
    """Rows of the benchmarks' machine: `modes` 3-factor operating modes in `c` channels, the same modes for every
    `seed` (the fit data and the stream come from one machine), the rows differ."""
    return Machine(c, modes, factors=3, spread=4.0, shape_seed=12345).rows(seed, n)


def produce(bootstrap: str, topic: str, rows: np.ndarray, channels: list[str]) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
    for key, value in keyed_records(rows, channels):
        produce_message(p, topic, value, key)
    assert p.flush(60) == 0


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


@dataclass
class PerfOptions:
    ks: tuple[int, ...] = (1, 4, 8, 16)
    samples: tuple[int, ...] = (1, 8)
    channels: int = 38
    records: int = 60_000
    max_batch: int = 1024
    fit_steps: int = 200
    repeats: int = 3
    torch_threads: int = 1
    hst_records: int = 3000
    latency: bool = False
    latency_rate: int = 10_000
    latency_seconds: float = 20.0
    latency_k: int = 8
    latency_s: int = 8
    latency_max_wait_ms: int = 20
    latency_pipeline: bool = True
    latency_reader_wait_s: float = 0.005
    latency_cascade: bool = False  # the latency run's model with `ModelConfig.cascade` on
    pipeline: tuple[bool, ...] = (True,)
    variants_k: int = 8
    variants_s: int = 8
    compile: bool = False
    cascade: bool = True  # also every S > 1 point with the cascade on (scoring, learning, end to end)


def daemon_settings(
    bootstrap: str,
    topic: str,
    channels: list[str],
    tmp: Path,
    group: str,
    max_batch: int,
    max_wait_ms: int,
    threads: int,
    pipeline: bool = True,
    model: str = "model",
) -> Settings:
    return kit_settings(
        bootstrap,
        topics_for(topic),
        channels,
        group=group,
        checkpoint_dir=tmp / f"ckpt-{group}",
        model_dir=tmp / model,
        kafka__commit_interval_s=1.0,
        kafka__extra={"heartbeat.interval.ms": "2000"},
        batching__max_batch=max_batch,
        batching__max_wait_ms=max_wait_ms,
        batching__pipeline=pipeline,
        torch_threads=threads,
    )


def fitted(k: int, s: int, channels: list[str], fit_steps: int, device: str = "cpu") -> MixtureDetector:
    from streammoe.model.config import ModelConfig
    from streammoe.model.detector import MixtureDetector

    # Plain: every record on the full pass; the cascade column turns it on for its own runs.
    config = ModelConfig(k_max=k, n_samples=s, fit_steps=fit_steps, min_expert_weight=0.0, cascade={"enabled": False})
    detector = MixtureDetector(len(channels), config, channels, device=device)
    detector.fit(synthetic(20_000, N_MODES, len(channels), seed=1), k=k)
    return detector


def _prepare(opts: PerfOptions) -> tuple[list[str], float]:
    """The process as the daemon sets it up (quiet logs, its allocator, its torch threads): the channels, and the
    clock's start."""
    import torch

    from streammoe.daemon import tune_allocator
    from streammoe.logs import configure_logging

    configure_logging("WARNING", "console")
    tune_allocator()
    if opts.torch_threads:
        torch.set_num_threads(opts.torch_threads)
    return [f"ch{i:02d}" for i in range(opts.channels)], time.monotonic()


def measure(opts: PerfOptions, progress: Callable[[str], object] = print) -> dict:
    import torch

    from streammoe.daemon import Daemon
    from streammoe.state.persistence import save_detector
    from streammoe.wire.records import RecordDecoder

    channels, started = _prepare(opts)
    result: dict = {"setup": {}, "transport": {}, "grid": [], "latency": None}
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        topic = f"perf-{uuid.uuid4().hex[:6]}"
        rows = synthetic(opts.records, N_MODES, opts.channels)
        t0 = time.monotonic()
        produce(broker.bootstrap, topic, rows, channels)
        produce_rate = opts.records / (time.monotonic() - t0)
        base = daemon_settings(broker.bootstrap, topic, channels, tmp, "perf", opts.max_batch, 50, opts.torch_threads)
        raw, dec = [], []

        def transport() -> None:
            raw.append(consume_rate(base, opts.records, decode=False))
            dec.append(consume_rate(base, opts.records, decode=True))
            progress(f"perf: consume {raw[-1]:.0f} rec/s, consume+decode {dec[-1]:.0f} rec/s")

        transport()
        decoder = RecordDecoder(base.records)
        raws = [value for _, value in keyed_records(rows[: 8 * opts.max_batch], channels)]
        batches = [decoder.decode(raws[i : i + opts.max_batch]).values for i in range(0, len(raws), opts.max_batch)]
        hst, hst_desc = hst_rate(rows, opts.hst_records)
        hst15, hst15_desc = hst_rate(rows, opts.hst_records // 4, height=15)
        progress(f"perf: river HST {hst:.0f} rec/s (height 8), {hst15:.0f} rec/s (height 15)")
        for k in opts.ks:
            for s in opts.samples:
                detector = fitted(k, s, channels, opts.fit_steps)
                save_detector(detector, tmp / "model")
                if opts.cascade and s > 1:  # the same model with the cascade on, for the daemon
                    detector.config.cascade.enabled = True
                    save_detector(detector, tmp / "model-cascade")
                    detector.config.cascade.enabled = False
                score, learn = model_rates(detector, batches, opts.repeats)
                row = {"k": k, "k_active": detector.model.n_active, "s": s, "score_rec_s": score, "learn_rec_s": learn}
                if opts.cascade and s > 1:
                    row.update(cascade_rates(detector, batches, opts.repeats))
                for pipeline in opts.pipeline:
                    group = f"e2e-{k}-{s}-{int(pipeline)}-{uuid.uuid4().hex[:4]}"
                    daemon = Daemon(
                        daemon_settings(
                            broker.bootstrap,
                            topic,
                            channels,
                            tmp,
                            group,
                            opts.max_batch,
                            50,
                            opts.torch_threads,
                            pipeline,
                        )
                    )
                    summary = daemon.run(max_records=opts.records, timeout_s=600)
                    e2e = summary.records_in / summary.busy_seconds if summary.busy_seconds else 0.0
                    key = "e2e_rec_s" if pipeline else "e2e_serial_rec_s"
                    row[key] = e2e
                    row["stage_seconds" if pipeline else "stage_seconds_serial"] = daemon.metrics.stage_totals()
                    if pipeline and "score_cascade_rec_s" in row:  # the same daemon on the cascade's model, next
                        settings = daemon_settings(
                            broker.bootstrap,
                            topic,
                            channels,
                            tmp,
                            group + "-c",
                            opts.max_batch,
                            50,
                            opts.torch_threads,
                            pipeline,
                            "model-cascade",
                        )
                        summary = Daemon(settings).run(max_records=opts.records, timeout_s=600)
                        row["e2e_cascade_rec_s"] = (
                            summary.records_in / summary.busy_seconds if summary.busy_seconds else 0.0
                        )
                progress(
                    f"perf: K={k} S={s} score {score:.0f} learn {learn:.0f} e2e "
                    + ", ".join(
                        f"{key} {row[key]:.0f}"
                        for key in ("e2e_rec_s", "e2e_serial_rec_s", "score_cascade_rec_s", "e2e_cascade_rec_s")
                        if key in row
                    )
                )
                result["grid"].append(row)
        if opts.variants_k:
            detector = fitted(opts.variants_k, opts.variants_s, channels, opts.fit_steps)
            result["variants"] = {
                "k": opts.variants_k,
                "s": opts.variants_s,
                "runs": variants(detector, batches, opts.repeats, opts.compile),
            }
            progress(f"perf: variants {json.dumps(result['variants'])}")
        transport()
        consume = statistics.median(raw)
        consume_decode = statistics.median(dec)
        for row in result["grid"]:
            for key in ("e2e_rec_s", "e2e_serial_rec_s", "e2e_cascade_rec_s"):
                if key in row:
                    row[key.replace("rec_s", "vs_consume_decode")] = row[key] / consume_decode
                    row[key.replace("rec_s", "vs_hst")] = row[key] / hst
                    row[key.replace("rec_s", "vs_hst15")] = row[key] / hst15
        result["transport"] = {
            "produce_rec_s": produce_rate,
            "consume_rec_s": raw,
            "consume_decode_rec_s": dec,
            "consume_median": consume,
            "consume_decode_median": consume_decode,
            "hst_rec_s": hst,
            "hst": hst_desc,
            "hst15_rec_s": hst15,
            "hst15": hst15_desc,
        }
        if opts.latency:
            result["latency"] = latency(broker.bootstrap, channels, tmp, opts, progress)
    result["setup"] = {
        "records": opts.records,
        "channels": opts.channels,
        "modes_in_data": N_MODES,
        "max_batch": opts.max_batch,
        "fit_steps": opts.fit_steps,
        "repeats": opts.repeats,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "device": "cpu",
        "load_average": os.getloadavg(),
        "wall_s": round(time.monotonic() - started, 1),
    }
    return result


# ---- produce -> alert latency -----------------------------------------------------------------------------


def _paced_producer(
    bootstrap: str, topic: str, channels: list[str], rate: int, seconds: float, seed: int, out: mp.Queue
) -> None:
    """Produce at `rate` records/s for `seconds`, `ts` = send time (epoch ms); 1 % far off every mode. Puts the
    paced stretch's own seconds (first send to last delivery) on `out`: the process's start and the payloads'
    preparation are not part of the offered rate."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1, "acks": "all"})
    n = int(rate * seconds)
    rows = synthetic(n, N_MODES, len(channels), seed=seed)
    rng = np.random.default_rng(seed)
    bad = rng.random(n) < 0.01
    rows[bad, 0] += ANOMALY_SHIFT
    # Payloads prepared up front with a placeholder where the send time goes: the pacing loop only splices it in.
    records = keyed_records(rows, channels, step_ts=0)
    parts = [value.split(b'"ts":0', 1) for _, value in records]
    keys = [key for key, _ in records]
    start = time.time()
    tick = 0.005  # send what is due every 5 ms
    i = 0
    while i < n:
        due = min(n, int((time.time() - start) * rate) + 1)
        ts = b'"ts":%d' % int(time.time() * 1000)
        for j in range(i, due):
            produce_message(p, topic, parts[j][0] + ts + parts[j][1], keys[j])
        i = due
        p.poll(0)
        time.sleep(tick)
    p.flush(30)
    out.put(time.time() - start)


def _alert_reader(bootstrap: str, topic: str, produced: threading.Event, out: mp.Queue, wait_s: float = 0.005) -> None:
    """Read alerts as they arrive until 3 s after `produced` (an event) is set; put (receive ms - record ts) for
    each on `out` at the end.

    `consume` returns when it has 1000 messages or its wait ran out; at ~1 % alerts it always waits the full
    wait, which would count as latency: the wait is kept short (5 ms)."""
    from confluent_kafka import Consumer

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"lat-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 5,
            "session.timeout.ms": 6000,
        }
    )
    c.subscribe([topic])
    lat = []
    deadline = float("inf")
    while time.time() < deadline:
        if deadline == float("inf") and produced.is_set():
            deadline = time.time() + 3.0
        for m in c.consume(1000, wait_s):
            if m.error() is None:
                lat.append(time.time() * 1000 - orjson.loads(m.value())["ts"])
    c.close()
    out.put(lat)


def _relay(settings: Settings, ready: threading.Event, stop: threading.Event) -> None:
    """The daemon's transport without its work: consume with the daemon's consumer settings and batching, forward
    every 100th record (its JSON carries `ts`) to the alerts topic with the daemon's producer settings. The
    latency floor that the broker and the clients set on this box."""
    from confluent_kafka import Consumer, Producer

    from streammoe.config import consumer_config, producer_config

    kafka, batching = settings.kafka, settings.batching
    c = Consumer(consumer_config(kafka))
    p = Producer(producer_config(kafka))
    c.subscribe([kafka.input_topic])
    seen = 0
    while not stop.is_set():
        for m in c.consume(batching.max_batch, batching.max_wait_ms / 1000):
            if m.error() is None:
                if seen % 100 == 0:
                    p.produce(kafka.alerts_topic, m.value())
                seen += 1
        if seen >= 10:
            ready.set()
        p.poll(0)
    p.flush(10)
    c.close()


def _paced_run(bootstrap: str, topic: str, channels: list[str], opts: PerfOptions) -> tuple[np.ndarray, float]:
    """Paced records into `topic` while a reader times what reaches `topic`-alerts: (latencies ms, the rate the
    paced stretch achieved in records/s)."""
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    paced: mp.Queue = ctx.Queue()
    produced = ctx.Event()
    reader = ctx.Process(
        target=_alert_reader, args=(bootstrap, f"{topic}-alerts", produced, out, opts.latency_reader_wait_s)
    )
    reader.start()
    time.sleep(3)  # the reader's group join
    producer = ctx.Process(
        target=_paced_producer, args=(bootstrap, topic, channels, opts.latency_rate, opts.latency_seconds, 7, paced)
    )
    producer.start()
    produced_s = paced.get(timeout=opts.latency_seconds + 120)
    producer.join()
    produced.set()
    lat = np.array(out.get(timeout=60))
    reader.join()
    # Alerts of the first pass (the 10 topic-creating records) have ts < 1e6: not part of the paced run.
    return lat[lat < 1e9], int(opts.latency_rate * opts.latency_seconds) / produced_s


def _new_topics(bootstrap: str, channels: list[str]) -> str:
    """Input and alerts topics, so that the reader's subscription finds the alerts topic at once (its first
    message reads as ts 0 and is dropped)."""
    from confluent_kafka import Producer

    topic = f"lat-{uuid.uuid4().hex[:6]}"
    produce(bootstrap, topic, synthetic(10, N_MODES, len(channels), seed=5), channels)
    p = Producer({"bootstrap.servers": bootstrap})
    p.produce(f"{topic}-alerts", orjson.dumps({"ts": 0}))
    p.flush(10)
    return topic


def _percentiles(lat: np.ndarray) -> dict:
    if not lat.size:
        return {}
    return {**{f"p{q}_ms": float(np.percentile(lat, q)) for q in (50, 90, 99)}, "max_ms": float(lat.max())}


def latency(
    bootstrap: str, channels: list[str], tmp: Path, opts: PerfOptions, progress: Callable[[str], object] = print
) -> dict:
    """Produce -> alert latency through the daemon, and through a relay that does no work (the floor), in turn."""
    from streammoe.daemon import Daemon
    from streammoe.state.persistence import save_detector

    detector = fitted(opts.latency_k, opts.latency_s, channels, opts.fit_steps)
    detector.config.cascade.enabled = opts.latency_cascade
    save_detector(detector, tmp / "model")
    topic = _new_topics(bootstrap, channels)
    daemon = Daemon(
        daemon_settings(
            bootstrap,
            topic,
            channels,
            tmp,
            f"lat-{topic}",
            opts.max_batch,
            opts.latency_max_wait_ms,
            opts.torch_threads,
            opts.latency_pipeline,
        )
    )
    runner = threading.Thread(target=daemon.run, kwargs={"timeout_s": opts.latency_seconds + 180}, daemon=True)
    runner.start()
    deadline = time.monotonic() + 60
    while daemon.summary.records_in < 10 and time.monotonic() < deadline:  # joined and past the first batch
        time.sleep(0.1)
    lat, achieved = _paced_run(bootstrap, topic, channels, opts)
    daemon.stop()
    runner.join(30)
    res = {
        "offered_rec_s": opts.latency_rate,
        "achieved_produce_rec_s": achieved,
        "seconds": opts.latency_seconds,
        "k": opts.latency_k,
        "s": opts.latency_s,
        "cascade": opts.latency_cascade,
        "torch_threads": opts.torch_threads,
        "max_wait_ms": opts.latency_max_wait_ms,
        "pipeline": opts.latency_pipeline,
        "reader_wait_ms": opts.latency_reader_wait_s * 1000,
        "alerts": int(lat.size),
        "produced": int(opts.latency_rate * opts.latency_seconds),
        # judged by the time the reader stopped (3 s after the last send): alerts of records judged later were
        # not timed, so a daemon that falls behind reads better than it is; this says by how much
        "records_in": daemon.summary.records_in,
        **_percentiles(lat),
    }

    topic = _new_topics(bootstrap, channels)
    settings = daemon_settings(
        bootstrap,
        topic,
        channels,
        tmp,
        f"relay-{topic}",
        opts.max_batch,
        opts.latency_max_wait_ms,
        opts.torch_threads,
        opts.latency_pipeline,
    )
    ready, stop = threading.Event(), threading.Event()
    relay = threading.Thread(target=_relay, args=(settings, ready, stop), daemon=True)
    relay.start()
    ready.wait(60)  # joined and past the topic-creating records, as the daemon above
    floor, floor_achieved = _paced_run(bootstrap, topic, channels, opts)
    stop.set()
    relay.join(30)
    res["floor"] = {"achieved_produce_rec_s": floor_achieved, "forwarded": int(floor.size), **_percentiles(floor)}
    progress(f"perf: latency {json.dumps(res)}")
    return res


def latency_only(opts: PerfOptions, progress: Callable[[str], object] = print) -> dict:
    """`--perf-latency-only`: produce -> alert latency (the daemon, then the relay floor) on one fresh broker,
    without the throughput grid."""
    import torch

    channels, started = _prepare(opts)
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp_s:
        lat = latency(broker.bootstrap, channels, Path(tmp_s), opts, progress)
    setup = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    setup.update(load_average=os.getloadavg(), wall_s=round(time.monotonic() - started, 1), fit_steps=opts.fit_steps)
    return {"latency": lat, "setup": setup}


# ---- report -------------------------------------------------------------------------------------------------


def markdown(result: dict) -> str:
    t, s = result["transport"], result["setup"]
    lines = [
        "## Fast path (`streammoe bench --perf`)",
        "",
        (
            f"{s['records']} records x {s['channels']} channels from {s['modes_in_data']} modes, batches of "
            f"{s['max_batch']}, torch {s['torch']} with {s['torch_threads']} thread(s), {s['cpu_count']} CPUs, "
            f"load average at the end {', '.join(f'{v:.1f}' for v in s['load_average'])}."
        ),
        "",
        (
            f"- produce: {t['produce_rec_s']:.0f} rec/s; raw consume: {t['consume_median']:.0f} rec/s "
            f"(runs {', '.join(f'{v:.0f}' for v in t['consume_rec_s'])}); consume + decode: "
            f"{t['consume_decode_median']:.0f} rec/s (runs {', '.join(f'{v:.0f}' for v in t['consume_decode_rec_s'])})"
        ),
        f"- {t['hst']}: {t['hst_rec_s']:.0f} rec/s",
        f"- {t['hst15']}: {t['hst15_rec_s']:.0f} rec/s",
        "",
        "| K (active) | S | score rec/s | learn rec/s | end to end rec/s | e2e / consume+decode | e2e / HST h8 | e2e / HST h15 |"
        + (
            " serial e2e rec/s | serial / consume+decode |"
            if any("e2e_serial_rec_s" in r for r in result["grid"])
            else ""
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|"
        + ("---:|---:|" if any("e2e_serial_rec_s" in r for r in result["grid"]) else ""),
    ]
    cascade = any("e2e_cascade_rec_s" in r for r in result["grid"])
    if cascade:
        lines[-2] += " cascade: rescored | score rec/s | end to end rec/s | e2e / consume+decode |"
        lines[-1] += "---:|---:|---:|---:|"
    for r in result["grid"]:
        line = (
            f"| {r['k']} ({r['k_active']}) | {r['s']} | {r['score_rec_s']:.0f} | {r['learn_rec_s']:.0f} | "
            f"{r.get('e2e_rec_s', 0):.0f} | {r.get('e2e_vs_consume_decode', 0):.2f} | {r.get('e2e_vs_hst', 0):.1f}x | "
            f"{r.get('e2e_vs_hst15', 0):.0f}x |"
        )
        if "e2e_serial_rec_s" in r:
            line += f" {r['e2e_serial_rec_s']:.0f} | {r['e2e_serial_vs_consume_decode']:.2f} |"
        if cascade:
            line += (
                f" {r['cascade_rescored']:.3f} | {r['score_cascade_rec_s']:.0f} | {r['e2e_cascade_rec_s']:.0f} | "
                f"{r['e2e_cascade_vs_consume_decode']:.2f} |"
                if "e2e_cascade_rec_s" in r
                else " | | | |"
            )
        lines.append(line)
    var = result.get("variants")
    if var:
        lines += [
            "",
            f"E-step variants, K={var['k']} S={var['s']}, same batches and noise, 1 % planted anomalies:",
            "",
            "| variant | score rec/s | vs float32 | first batch s | same decision as float32 | planted flagged | others flagged |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        f32 = var["runs"][0]["score_rec_s"]
        for v in var["runs"]:
            lines.append(
                f"| {v['variant']} | {v['score_rec_s']:.0f} | {v['score_rec_s'] / f32:.2f} | {v['first_batch_s']:.1f} | "
                f"{v['agree']:.4f} | {v['flagged_planted']:.3f} | {v['flagged_other']:.4f} |"
            )
    lines += latency_markdown(result.get("latency"))
    return "\n".join(lines) + "\n"


def latency_markdown(lat: dict | None) -> list[str]:
    """The produce -> alert lines of the report (none without a latency run)."""
    if not lat:
        return []
    model = f"K={lat['k']} S={lat['s']}" + (", cascade on" if lat.get("cascade") else "")
    lines = [
        "",
        (
            f"Produce -> alert latency at {lat['offered_rec_s']} rec/s offered (achieved "
            f"{lat['achieved_produce_rec_s']:.0f}) for {lat['seconds']:.0f} s, {model}, "
            f"max_wait_ms {lat['max_wait_ms']}: {lat['alerts']} alerts, {_quantiles_text(lat)}"
            + (
                f"; {lat['records_in']} of {lat['produced']} records judged when the reader stopped"
                if "produced" in lat
                else ""
            )
        ),
    ]
    floor = lat.get("floor")
    if floor:
        lines += [
            "",
            (
                f"The same path through a relay that does no work (the daemon's consumer and producer settings, "
                f"every 100th record forwarded; achieved {floor['achieved_produce_rec_s']:.0f} rec/s): "
                f"{_quantiles_text(floor)}; daemon p99 / relay p99 = "
                f"{lat.get('p99_ms', float('nan')) / floor.get('p99_ms', float('nan')):.2f}"
            ),
        ]
    return lines


def _quantiles_text(figures: dict) -> str:
    return ", ".join(
        f"{name} {figures.get(f'{name}_ms', float('nan')):.0f} ms" for name in ("p50", "p90", "p99", "max")
    )


def plot(result: dict, path: Path) -> Path | None:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = result["transport"]
    samples = sorted({r["s"] for r in result["grid"]})
    fig, axes = plt.subplots(1, len(samples), figsize=(6 * len(samples), 4.2), sharey=True, squeeze=False)
    for ax, s in zip(axes[0], samples):
        rows = [r for r in result["grid"] if r["s"] == s]
        ks = [r["k"] for r in rows]
        for key, label, style in (
            ("score_rec_s", "score only", "o-"),
            ("learn_rec_s", "learn only", "s-"),
            ("e2e_rec_s", "end to end", "D-"),
            ("e2e_serial_rec_s", "end to end, serial", "x--"),
        ):
            if all(key in r for r in rows):
                ax.plot(ks, [r[key] for r in rows], style, label=label)
        ax.axhline(t["consume_median"], color="grey", ls=":", label="raw consume")
        ax.axhline(t["consume_decode_median"], color="black", ls="--", label="consume + decode")
        ax.axhline(t["hst_rec_s"], color="tab:red", ls="-.", label="river HST, height 8")
        if "hst15_rec_s" in t:
            ax.axhline(t["hst15_rec_s"], color="tab:red", ls=":", label="river HST, height 15")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_yscale("log")
        ax.set_xlabel("experts K")
        ax.set_title(f"S = {s} importance samples")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("records/s")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(result: dict, out: Path) -> tuple[Path, Path, Path | None]:
    out.mkdir(parents=True, exist_ok=True)
    js = out / "perf.json"
    js.write_text(json.dumps(result, indent=1))
    md = out / "perf.md"
    md.write_text(markdown(result))
    return js, md, plot(result, out / "perf.png")
