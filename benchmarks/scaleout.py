"""`python -m benchmarks.scaleout`: throughput of one and of two workers in a consumer group, and how long a
scope handover takes (issue 7), on an embedded broker with one model per asset.

Each round drains the same records with a fresh group: one worker, then two started together (their group join
includes one handover: the first to join gives half its partitions to the second). Rounds alternate so that a
change in the machine's load shows as spread, not as a difference. After the last two-worker round, one worker
is stopped with SIGTERM and the other takes its scopes over; the handover is timed from the signal to the moment
the survivor has read their snapshots, with the stopping worker's shutdown and the group's rebalance apart.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from benchmarks.workload import fitted_on_k_modes, synthetic
from streammoe.kafka.sink import produce as produce_message
from streammoe.testing.broker import EmbeddedBroker
from streammoe.testing.records import keyed_records
from streammoe.testing.settings import daemon_env, topics_for

if TYPE_CHECKING:
    from confluent_kafka import KafkaError, Message


class WorkerProcess:
    """`streammoe run` in its own process, logging JSON lines to a file that is read back as events."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.started = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streammoe.cli", "run"],
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def events(self, kind: str | None = None) -> list[dict]:
        out = []
        for line in self.log_path.read_bytes().splitlines():
            if line.startswith(b"{"):
                try:
                    e = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue  # a line cut by a kill
                if kind is None or e.get("event") == kind:
                    out.append(e)
        return out

    def held_partitions(self) -> set[int]:
        """Input partitions assigned and not since revoked or lost, from the log."""
        held: set[int] = set()
        for e in self.events():
            parts = {int(p.rsplit("[", 1)[1].rstrip("]")) for p in e.get("partitions", []) if isinstance(p, str)}
            if e.get("event") == "partitions_assigned":
                held |= parts
            elif e.get("event") in ("partitions_revoked", "partitions_lost"):
                held -= parts
        return held

    def stop(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def tail(self) -> str:
        return self.log_path.read_text()[-4000:]


def wait_for(what: str, check: Callable[[], bool], timeout: float, *workers: WorkerProcess) -> None:
    """Poll `check` until true; fail with the workers' log tails if one exits or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while not check():
        for w in workers:
            if w.proc.poll() is not None:
                raise RuntimeError(f"{w.name} exited {w.proc.returncode} while waiting for {what}:\n{w.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}:\n" + "\n".join(w.tail() for w in workers))
        time.sleep(0.2)


def log_time(event: dict) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return {
            tp.partition: tp.offset
            for tp in c.committed([TopicPartition(topic, p) for p in parts], timeout=10)
            if tp.offset >= 0
        }
    finally:
        c.close()


@dataclass
class Round:
    workers: int
    seconds: float  # from the first partition assigned to every offset committed
    records_per_s: float
    settled_records_per_s: float | None  # after the group's last rebalance; None if < 1/4 of the records were left
    per_worker_records: list[int]  # records each worker read (from its `daemon_stopped` log)


@dataclass
class Handover:
    scopes: int
    total_s: float  # SIGTERM of the leaving worker -> the survivor has read the snapshots of its new partitions
    leaving_shutdown_s: float  # SIGTERM -> the leaving worker has written its snapshots and left the group
    rebalance_s: float  # the leaving worker stopped -> the survivor is assigned the partitions
    restore_s: float  # reading and loading the snapshots of those partitions


@dataclass
class ScaleoutResult:
    records: int
    channels: int
    k: int
    n_samples: int
    assets: int
    partitions: int
    load_before: float
    rounds: list[Round] = field(default_factory=list)
    handover: Handover | None = None


def run(args: argparse.Namespace) -> ScaleoutResult:
    from confluent_kafka import Producer

    from streammoe.state.persistence import save_detector

    channels = [f"ch{i:02d}" for i in range(args.channels)]
    result = ScaleoutResult(args.records, args.channels, args.k, args.n_samples, args.assets, 4, os.getloadavg()[0])
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        save_detector(fitted_on_k_modes(args.k, args.n_samples, channels), tmp / "model")
        topic = f"scaleout-{uuid.uuid4().hex[:6]}"
        rows = synthetic(args.records, args.k, args.channels, seed=2)
        p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5, "acks": "all"})
        ends: dict[int, int] = {}

        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)

        for key, value in keyed_records(rows, channels, assets=args.assets):
            produce_message(p, topic, value, key, on_delivery=delivered)
        assert p.flush(60) == 0
        result.partitions = len(ends)

        def env(group: str, name: str) -> dict[str, str]:
            return daemon_env(
                broker.bootstrap,
                topics_for(topic),
                channels,
                group=group,
                checkpoint_dir=tmp / f"ckpt-{group}-{name}",
                model_dir=tmp / "model",
                kafka__extra=None,
                batching__max_batch=args.max_batch,
                batching__max_wait_ms=None,
                scopes__mode="asset",
                snapshot__topic=f"{group}-snapshots",
                snapshot__interval_s=3600,
            )

        for r in range(args.rounds):
            for n in (1, 2):
                group = f"{topic}-g{r}-{n}"
                workers = [WorkerProcess(f"{group}-w{i}", env(group, f"w{i}"), tmp) for i in range(n)]
                try:
                    progress: list[tuple[float, int]] = []  # (time, records committed)

                    def drained(group: str = group, progress: list[tuple[float, int]] = progress) -> bool:
                        done = committed(broker.bootstrap, group, topic)
                        progress.append((time.time(), sum(done.values())))
                        return done == ends

                    wait_for(f"{n} worker(s) to drain {args.records} records", drained, 900, *workers)
                    done = time.time()
                    assigned = [
                        log_time(e) for w in workers for e in w.events("partitions_assigned") if e["partitions"]
                    ]
                    seconds = done - min(assigned)
                    settled = max(assigned)  # the group's last rebalance: from here on every worker has its share
                    at_settle = max((c for t, c in progress if t <= settled), default=0)
                    steady = (
                        (args.records - at_settle) / (done - settled)
                        if args.records - at_settle > args.records / 4
                        else None
                    )
                    if r == args.rounds - 1 and n == 2:
                        result.handover = handover(workers)
                        print(f"handover: {result.handover}", flush=True)
                    for w in workers:
                        if w.proc.poll() is None and w.stop() != 0:
                            raise RuntimeError(f"{w.name} did not stop cleanly:\n{w.tail()}")
                    read = [w.events("daemon_stopped")[-1]["records"] for w in workers]
                    result.rounds.append(
                        Round(
                            n,
                            round(seconds, 2),
                            round(args.records / seconds, 1),
                            round(steady, 1) if steady else None,
                            read,
                        )
                    )
                    print(
                        f"round {r} workers {n}: {args.records / seconds:,.0f} rec/s ({seconds:.1f} s), after the "
                        f"last rebalance {steady or float('nan'):,.0f} rec/s, records per worker {read}",
                        flush=True,
                    )
                finally:
                    for w in workers:
                        w.kill()
    return result


def handover(workers: list[WorkerProcess]) -> Handover:
    """Stop the worker holding fewer partitions; time until the other has restored the scopes it takes over."""
    leaving, staying = sorted(workers, key=lambda w: len(w.held_partitions()))
    moving = leaving.held_partitions()
    before = len(staying.events("snapshots_read"))
    t0 = time.time()
    if leaving.stop() != 0:
        raise RuntimeError(f"{leaving.name} did not stop cleanly:\n{leaving.tail()}")
    wait_for(
        "the survivor to restore the moved scopes",
        lambda: len(staying.events("snapshots_read")) > before and staying.held_partitions() >= moving,
        120,
        staying,
    )
    read = staying.events("snapshots_read")[-1]
    stopped = log_time(leaving.events("daemon_stopped")[-1])
    assigned = max(log_time(e) for e in staying.events("partitions_assigned") if e["partitions"])
    return Handover(
        scopes=read["scopes"],
        total_s=round(log_time(read) - t0, 3),
        leaving_shutdown_s=round(stopped - t0, 3),
        rebalance_s=round(assigned - stopped, 3),
        restore_s=read["seconds"],
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scaleout", description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=60_000)
    ap.add_argument("--channels", type=int, default=38)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--n-samples", type=int, default=8)
    ap.add_argument("--assets", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("results/scaleout"))
    args = ap.parse_args(argv)
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaleout.json").write_text(json.dumps(asdict(result), indent=2))
    print(json.dumps(asdict(result), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
