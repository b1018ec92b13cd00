"""Produce -> alert latency (`streammoe bench --perf --perf-latency`): records paced at a fixed rate with the send time
as `ts`, 1 % far off every mode, through the daemon and then through a relay that does no work (the floor that the
broker and the clients set on this machine), each timed by a reader on the alerts topic. The daemon's model is the
default model (the cascade as ModelConfig has it) unless the run asks for the full pass or the cascade."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson

from benchmarks.perf_options import PerfOptions, daemon_settings, prepare
from benchmarks.workload import ANOMALY_SHIFT, N_MODES, fitted, produce, synthetic
from streammoe.config import Settings
from streammoe.kafka.sink import produce as produce_message
from streammoe.testing.broker import EmbeddedBroker
from streammoe.testing.records import keyed_records


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
    cascade = opts.latency_model_cascade()
    detector.config.cascade.enabled = cascade  # fitted() builds the model with the cascade off
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
        "cascade": cascade,
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

    channels, started = prepare(opts)
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp_s:
        lat = latency(broker.bootstrap, channels, Path(tmp_s), opts, progress)
    setup = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    setup.update(load_average=os.getloadavg(), wall_s=round(time.monotonic() - started, 1), fit_steps=opts.fit_steps)
    return {"latency": lat, "setup": setup}
