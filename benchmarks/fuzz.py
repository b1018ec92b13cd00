"""`streammoe bench --fuzz`: a seeded mix of hostile and good records through a real broker and `streammoe run`.

Every input offset must come out exactly once as a score (with an alert if anomalous) or as a dead letter with
a reason, the daemon process must still be running when the last one is out and must exit 0 on SIGTERM. The
report counts records in, scored, alerts (by reason), dead letters by reason, unaccounted and duplicated
offsets, outcomes that differ from what each kind of record should get, and the daemon's peak RSS.

The embedded Tansu broker (memory storage) runs on loopback; the daemon is a child process with the same
settings an operator would give it, bootstrapped from a small model fitted on the good records' distribution.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson

from benchmarks.probe import rss_mb, samples, start_daemon
from streammoe.testing.machine import Machine

if TYPE_CHECKING:
    from confluent_kafka import KafkaError, Message

CHANNELS = [f"c{i}" for i in range(6)]
MACHINE = Machine(len(CHANNELS), modes=1, factors=2)
MAX_RECORD_BYTES = 65_536
SCORED = "scored"  # expected outcome of a valid record (an alert or not)
ANY_DEAD = "dead"  # random bytes: dead-lettered, whatever the reason


@dataclass
class Item:
    key: bytes | None
    value: bytes | None
    kind: str
    expect: str  # SCORED, ANY_DEAD, a dead-letter reason, or "alert:<reason>"


def normal_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    """The distribution the bootstrap model is fitted on: the test kit's six-channel, two-factor machine."""
    return MACHINE.rows(rng, n)


def _record(asset: object, ts: object, values: object, **extra: object) -> dict:
    return {"asset_id": asset, "ts": ts, "values": values, **extra}


def _dump(obj: object) -> bytes:
    """As a careless producer writes it: stdlib json, NaN and Infinity literals allowed."""
    return json.dumps(obj, allow_nan=True).encode()


def _kinds(rng: np.random.Generator) -> dict[str, tuple[float, Callable[[int, list[float]], tuple[bytes | None, str]]]]:
    """kind -> (share of the mix, make(ts, row) -> (value, expected outcome))."""
    ch = CHANNELS

    def as_dict(row: list[float]) -> dict:
        return dict(zip(ch, row))

    def with_value(row: list[float], v: object) -> list:
        out: list = list(row)
        out[int(rng.integers(len(out)))] = v
        return out

    def one_of(options: list) -> object:
        return options[int(rng.integers(len(options)))]

    return {
        "good_dict": (0.30, lambda t, r: (_dump(_record(f"pump-{t % 9}", t, as_dict(r))), SCORED)),
        "good_list": (0.15, lambda t, r: (_dump(_record(f"pump-{t % 9}", t, r)), SCORED)),
        "ts_out_of_order": (0.04, lambda t, r: (_dump(_record("pump-1", int(t - rng.integers(1, 10**6)), r)), SCORED)),
        "ts_duplicate": (0.04, lambda t, r: (_dump(_record("pump-1", 1_732_000_000_000, r)), SCORED)),
        "extra_channels": (
            0.03,
            lambda t, r: (_dump(_record("pump-2", t, {**as_dict(r), "new": 1.0, "x": [1]})), SCORED),
        ),
        "extra_fields": (0.02, lambda t, r: (_dump(_record("pump-2", t, r, note={"a": [None, True, "é"]})), SCORED)),
        "unicode_asset": (0.01, lambda t, r: (_dump(_record("насос-7 💧", t, r)), SCORED)),
        "near_limit": (0.01, lambda t, r: (_dump(_record("pump-3", t, r, pad="x" * (MAX_RECORD_BYTES - 400))), SCORED)),
        "extreme_finite": (
            0.05,
            lambda t, r: (
                _dump(_record("pump-4", t, with_value(r, one_of([1e30, -1e30, 3.4e38, -3.4e38, -9999.0])))),
                "alert:out_of_range",
            ),
        ),
        "nan_literal": (0.02, lambda t, r: (_dump(_record("pump-5", t, with_value(r, float("nan")))), "not_json")),
        "inf_literal": (0.02, lambda t, r: (_dump(_record("pump-5", t, with_value(r, float("-inf")))), "not_json")),
        "beyond_float64": (
            0.02,
            lambda t, r: (_dump(_record("pump-5", t, with_value(r, 0.125))).replace(b"0.125", b"1e400"), "non_finite"),
        ),
        "beyond_float32": (0.02, lambda t, r: (_dump(_record("pump-5", t, with_value(r, 1e39))), "non_finite")),
        "huge_int": (0.01, lambda t, r: (_dump(_record("pump-5", t, with_value(r, 10**60))), "non_finite")),
        "random_bytes": (0.04, lambda t, r: (rng.bytes(int(rng.integers(1, 200))), ANY_DEAD)),
        "deep_nesting": (0.02, lambda t, r: (b"[" * int(rng.integers(2000, 60_000)), "not_json")),
        "deep_field": (
            0.01,
            lambda t, r: (_dump(_record("p", t, r))[:-1] + b', "x": ' + b"[" * 5000 + b"}", "not_json"),
        ),
        "oversized": (
            0.02,
            lambda t, r: (
                _dump(_record("pump-6", t, r, pad="y" * int(rng.integers(MAX_RECORD_BYTES, 4 * MAX_RECORD_BYTES)))),
                "oversized",
            ),
        ),
        "empty": (0.01, lambda t, r: (b"", "empty")),
        "tombstone": (0.01, lambda t, r: (None, "tombstone")),
        "not_object": (0.01, lambda t, r: (_dump(r), "not_object")),
        "missing_asset": (0.01, lambda t, r: (_dump({"ts": t, "values": r}), "missing_asset")),
        "bad_asset": (0.01, lambda t, r: (_dump(_record(7, t, r)), "bad_asset")),
        "missing_ts": (0.01, lambda t, r: (_dump({"asset_id": "a", "values": r}), "missing_ts")),
        "bad_ts": (0.02, lambda t, r: (_dump(_record("a", one_of(["yesterday", 1.5, True, 2**64]), r)), "bad_ts")),
        "missing_values": (0.01, lambda t, r: (_dump({"asset_id": "a", "ts": t}), "missing_values")),
        "bad_values": (0.01, lambda t, r: (_dump(_record("a", t, "1,2,3")), "bad_values")),
        # Up to half the channels may be missing (RECORDS__MAX_MISSING_SHARE): scored on the rest; more: dead.
        "one_channel_absent": (
            0.01,
            lambda t, r: (_dump(_record("pump-8", t, dict(list(as_dict(r).items())[1:]))), SCORED),
        ),
        "one_null": (0.01, lambda t, r: (_dump(_record("pump-8", t, with_value(r, None))), SCORED)),
        "missing_channel": (
            0.02,
            lambda t, r: (_dump(_record("a", t, dict(list(as_dict(r).items())[: len(r) // 2 - 1]))), "missing_channel"),
        ),
        "null_value": (
            0.01,
            lambda t, r: (_dump(_record("a", t, [None] * (len(r) // 2 + 1) + r[len(r) // 2 + 1 :])), "missing_value"),
        ),
        "wrong_type": (
            0.02,
            lambda t, r: (_dump(_record("a", t, with_value(r, one_of(["6", True, [1], {"v": 1}])))), "bad_value_type"),
        ),
        "wrong_length": (
            0.02,
            lambda t, r: (_dump(_record("a", t, r[: int(rng.integers(0, len(r)))])), "wrong_length"),
        ),
    }


def hostile_items(n: int, seed: int = 0) -> list[Item]:
    """`n` records: about 60 % valid (some odd but usable), the rest hostile, in a seeded random order."""
    rng = np.random.default_rng(seed)
    kinds = _kinds(rng)
    names = list(kinds)
    share = np.array([kinds[k][0] for k in names])
    picks = rng.choice(len(names), n, p=share / share.sum())
    rows = normal_rows(rng, n).round(4).tolist()
    items = []
    for i, (k, row) in enumerate(zip(picks, rows)):
        name = names[k]
        value, expect = kinds[name][1](1_732_000_000_000 + i, row)
        items.append(Item(f"k{i % 13}".encode() if i % 17 else None, value, name, expect))
    return items


@dataclass
class FuzzReport:
    records_in: int = 0
    scored: int = 0
    alerts: int = 0
    alerts_by_reason: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    dead_by_reason: dict[str, int] = field(default_factory=dict)
    unaccounted: int = 0
    duplicated: int = 0
    unexpected: int = 0  # records whose outcome differs from what their kind should get
    unexpected_examples: list[str] = field(default_factory=list)
    daemon_alive: bool = False
    exit_code: int | None = None
    peak_rss_mb: float = 0.0
    rss_mb_after_first_quarter: float = 0.0
    rss_mb_at_end: float = 0.0
    poison_metric: dict[str, float] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            self.unaccounted == 0
            and self.duplicated == 0
            and self.unexpected == 0
            and self.daemon_alive
            and self.exit_code == 0
        )


class TopicReader:
    """Reads one output topic from the start without joining a group; `drain()` adds what has arrived since."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import Consumer

        self.topic = topic
        self.messages: list = []
        self._assigned = False
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"fuzz-reader-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )

    def drain(self, idle_s: float = 0.3) -> list:
        from confluent_kafka import TopicPartition

        if not self._assigned:
            meta = self._consumer.list_topics(self.topic, timeout=10).topics[self.topic]
            if meta.error is not None or not meta.partitions:
                return self.messages  # not created yet: nothing published to it
            self._consumer.assign([TopicPartition(self.topic, p, 0) for p in meta.partitions])
            self._assigned = True
        while True:
            got = [m for m in self._consumer.consume(num_messages=5000, timeout=idle_s) if m.error() is None]
            if not got:
                return self.messages
            self.messages += got

    def close(self) -> None:
        self._consumer.close()


def _outcome(item: Item, scored: dict | None, alert: dict | None, dead: str | None) -> str | None:
    """None if the outcome is what the item's kind should get, else a short description."""
    got = f"dead:{dead}" if dead else ("alert:" + alert["reason"] if alert else SCORED if scored else "nothing")
    if item.expect == SCORED:
        ok = scored is not None and dead is None and (alert is None or alert["reason"] == "score")
    elif item.expect == ANY_DEAD:
        ok = dead is not None
    elif item.expect.startswith("alert:"):
        ok = alert is not None and got == item.expect
    else:
        ok = dead == item.expect
    return None if ok else f"{item.kind}: expected {item.expect}, got {got}"


def run_fuzz(
    n: int = 10_000, seed: int = 0, bootstrap: str | None = None, timeout_s: float = 300.0, max_batch: int = 512
) -> FuzzReport:
    """Produce `n` seeded hostile and good records, run `streammoe run` on them, account for every offset."""
    from streammoe.testing.broker import EmbeddedBroker

    if bootstrap is None:
        with EmbeddedBroker() as broker:
            return run_fuzz(n, seed, broker.bootstrap, timeout_s, max_batch)
    import torch
    from confluent_kafka import Producer

    from streammoe.kafka.sink import produce
    from streammoe.model.config import ModelConfig, PoisonConfig
    from streammoe.model.detector import MixtureDetector
    from streammoe.state.persistence import save_detector

    started = time.monotonic()
    items = hostile_items(n, seed)
    topic = f"fuzz-{uuid.uuid4().hex[:8]}"
    t = {r: f"{topic}-{r}" for r in ("alerts", "dead", "scores", "events", "control")}
    delivered: dict[tuple[int, int], Item] = {}
    errors: list[str] = []

    def on_delivery(item: Item) -> Callable:
        def done(err: KafkaError | None, msg: Message) -> None:
            if err:
                errors.append(str(err))
            else:
                delivered[(msg.partition(), msg.offset())] = item

        return done

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all", "message.max.bytes": 1_000_000})
    for item in items:
        produce(p, topic, item.value, item.key, on_delivery=on_delivery(item))
    if p.flush(60) != 0 or errors or len(delivered) != n:
        raise RuntimeError(f"producing the fuzz records failed: {errors[:3]} ({len(delivered)} of {n} delivered)")

    report = FuzzReport(records_in=n, kinds=dict(Counter(i.kind for i in items)))
    with tempfile.TemporaryDirectory(prefix="streammoe-fuzz-") as tmp:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as the daemon does: OpenMP threads spin-wait on a shared CPU
        try:
            # -9999 is what some historians write for "no reading": configured as a sentinel, it is poison like 1e30
            config = ModelConfig(k_max=2, n_samples=2, fit_steps=200, poison=PoisonConfig(sentinel_values=[-9999.0]))
            detector = MixtureDetector(len(CHANNELS), config, CHANNELS)
            detector.fit(normal_rows(np.random.default_rng(seed + 1), 4000))
        finally:
            torch.set_num_threads(threads)
        save_detector(detector, Path(tmp) / "model")
        log_path = Path(tmp) / "daemon.log"
        with open(log_path, "wb") as log:
            proc, port = start_daemon(
                bootstrap,
                {"input": topic, **t},
                CHANNELS,
                Path(tmp),
                log,
                records__max_record_bytes=MAX_RECORD_BYTES,
                batching__max_batch=max_batch,
                checkpoint__interval_s=None,
            )
            readers = {r: TopicReader(bootstrap, t[r]) for r in ("scores", "dead", "alerts")}
            try:
                _wait_for_all(readers, n, proc, report, timeout_s)
                report.daemon_alive = proc.poll() is None
                report.peak_rss_mb = round(rss_mb(proc.pid, "VmHWM"), 1)
                report.rss_mb_at_end = round(rss_mb(proc.pid), 1)
                report.poison_metric = {
                    labels[0]: v for labels, v in samples(port, "streammoe_poison_records_total", timeout=5).items()
                }
                proc.send_signal(signal.SIGTERM)
                report.exit_code = proc.wait(timeout=60)
                out = {r: reader.drain(idle_s=1.0) for r, reader in readers.items()}
            finally:
                for reader in readers.values():
                    reader.close()
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        if report.exit_code != 0:
            sys.stderr.write(log_path.read_text()[-3000:])
    _account(report, delivered, out["scores"], out["dead"], out["alerts"])
    report.seconds = round(time.monotonic() - started, 1)
    return report


def _wait_for_all(
    readers: dict[str, TopicReader], n: int, proc: subprocess.Popen, report: FuzzReport, timeout_s: float
) -> None:
    """Until every input is out (scores + dead letters), the daemon dies, or time is up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        out = len(readers["scores"].drain()) + len(readers["dead"].drain())
        if not report.rss_mb_after_first_quarter and out >= n // 4:
            report.rss_mb_after_first_quarter = round(rss_mb(proc.pid), 1)
        if out >= n:
            return
        time.sleep(0.2)


def _account(
    report: FuzzReport, delivered: dict[tuple[int, int], Item], scores: list, dead: list, alerts: list
) -> None:
    def src(m: Message) -> tuple[int, int]:
        s = orjson.loads(m.value())["source"]
        return s["partition"], s["offset"]

    def dsrc(m: Message) -> tuple[int, int]:
        h = dict(m.headers() or [])
        return int(h["source_partition"]), int(h["source_offset"])

    scored = {src(m): orjson.loads(m.value()) for m in scores}
    alerted = {src(m): orjson.loads(m.value()) for m in alerts}
    dead_reason = {dsrc(m): dict(m.headers() or [])["reason"].decode() for m in dead}
    published = Counter([src(m) for m in scores]) + Counter([dsrc(m) for m in dead])
    report.scored = len(scored)
    report.alerts = len(alerted)
    report.alerts_by_reason = dict(Counter(a["reason"] for a in alerted.values()))
    report.dead_letters = len(dead_reason)
    report.dead_by_reason = dict(sorted(Counter(dead_reason.values()).items()))
    report.unaccounted = len(set(delivered) - set(published))
    report.duplicated = sum(1 for k, c in published.items() if c > 1 or (k in scored and k in dead_reason))
    for key, item in delivered.items():
        problem = _outcome(item, scored.get(key), alerted.get(key), dead_reason.get(key))
        if problem is not None:
            report.unexpected += 1
            if len(report.unexpected_examples) < 10:
                report.unexpected_examples.append(f"{key}: {problem}")


def markdown(report: FuzzReport) -> str:
    rows = [
        ("records in", report.records_in),
        ("scored", report.scored),
        ("alerts", f"{report.alerts} {report.alerts_by_reason}"),
        ("dead letters", report.dead_letters),
        *((f"  dead: {k}", v) for k, v in report.dead_by_reason.items()),
        ("unaccounted", report.unaccounted),
        ("published twice", report.duplicated),
        ("outcome not as expected", report.unexpected),
        ("poison metric", report.poison_metric),
        ("daemon alive at the end", report.daemon_alive),
        ("exit code on SIGTERM", report.exit_code),
        (
            "RSS MB after 1/4, at end, peak",
            f"{report.rss_mb_after_first_quarter}, {report.rss_mb_at_end}, {report.peak_rss_mb}",
        ),
        ("wall seconds", report.seconds),
    ]
    lines = ["| fuzz | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    lines += [f"- {e}" for e in report.unexpected_examples]
    return "\n".join(lines)
