"""`streammoe replay`: push a series file (the evaluation layout) through Kafka as the daemon's JSON records.

Each row becomes ``{"asset_id": A, "ts": T, "values": {channel: number}}`` keyed by the asset. `label` is
dropped (a model must never see it). `ts` is the `timestamp` column when it is numeric (passed through as an
integer) or ISO 8601 (epoch milliseconds, UTC when no zone is given), else the row index. An empty cell is
sent as `null`, a missing channel, as a real sensor gap would be: the daemon scores the record on the others
(up to `RECORDS__MAX_MISSING_SHARE` missing; more are dead-lettered as `missing_value`).

The file is streamed (never loaded whole) at `--rate` records/s through a token bucket (0 = as fast as the
broker takes them); every delivery report is counted and a final count printed. Exit status 0 when every
record was acknowledged, 1 when some were not, 2 for a missing/bad file or an unreachable broker.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from streammoe.files.series import RESERVED, csv_rows
from streammoe.kafka.sink import produce


class ReplayError(Exception):
    """The file or the broker cannot be used; the message says which."""


@dataclass
class ReplayReport:
    rows: int = 0
    delivered: int = 0
    failed: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "rows": self.rows,
            "delivered": self.delivered,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
            "errors": self.errors[:5],
        }


def parse_ts(text: str, index: int) -> int:
    """The timestamp cell as an integer `ts`: numeric as is, ISO 8601 as epoch ms; anything else the row index."""
    s = text.strip()
    if not s:
        return index
    try:
        return int(s)
    except ValueError:
        pass
    try:
        f = float(s)
        return round(f) if math.isfinite(f) else index
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00") if s.endswith("Z") else s)
    except ValueError:
        return index
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return round(dt.timestamp() * 1000)


def _number(cell: str) -> float | None:
    cell = cell.strip()
    if cell == "":
        return None
    f = float(cell)
    return f if math.isfinite(f) else None


def iter_records(path: str | Path, asset_id: str = "asset-1") -> Iterator[dict]:
    """The file's rows as record objects, streamed; ReplayError for a missing file or a bad layout."""
    path = Path(path)
    with csv_rows(path, ReplayError) as (header, reader):
        has_ts = bool(header) and header[0] == "timestamp"
        cols = [(i, h) for i, h in enumerate(header) if h not in RESERVED]
        if not cols:
            raise ReplayError(f"{path}: no channel columns besides timestamp/label")
        for index, row in enumerate(reader):
            if not row:
                continue
            try:
                values = {name: _number(row[i]) for i, name in cols}
            except (ValueError, IndexError) as e:
                raise ReplayError(
                    f"{path}: row {index + 1}: a channel value is not a number or the row is short ({e})"
                ) from None
            ts = parse_ts(row[0], index) if has_ts else index
            yield {"asset_id": asset_id, "ts": ts, "values": values}


class TokenBucket:
    """`rate` tokens per second, bursts up to `burst`; rate 0 never waits."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate / 20)
        self.tokens = self.burst
        self.last = time.monotonic()

    def take(self, n: float = 1.0) -> float:
        """Block until `n` tokens are available; return the seconds waited."""
        if self.rate <= 0:
            return 0.0
        waited = 0.0
        while True:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens >= n:
                self.tokens -= n
                return waited
            pause = (n - self.tokens) / self.rate
            time.sleep(pause)
            waited += pause


def check_broker(bootstrap: str, timeout: float = 5.0) -> None:
    """ReplayError unless a broker answers a metadata request at `bootstrap` within `timeout`."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.connection.setup.timeout.ms": int(timeout * 1000)})
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException as e:
        raise ReplayError(f"broker {bootstrap} is unreachable: {e.args[0] if e.args else e}") from None


def replay(
    path: str | Path,
    topic: str,
    bootstrap: str,
    *,
    rate: float = 0.0,
    asset_id: str = "asset-1",
    extra: dict | None = None,
    progress: Callable[[ReplayReport], None] | None = None,
    delivery_timeout_s: float = 30.0,
    connect_timeout_s: float = 5.0,
) -> ReplayReport:
    """Produce every row of `path` to `topic`; return the delivery counts."""
    import orjson
    from confluent_kafka import KafkaError, Message, Producer

    records = iter_records(path, asset_id)
    first = next(records, None)  # surface a bad file before touching the broker
    check_broker(bootstrap, connect_timeout_s)
    report = ReplayReport()

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            report.failed += 1
            if len(report.errors) < 5:
                report.errors.append(str(err))
        else:
            report.delivered += 1

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "acks": "all",
            "message.timeout.ms": int(delivery_timeout_s * 1000),
            **(extra or {}),
        }
    )
    bucket = TokenBucket(rate)
    key = asset_id.encode()
    started = time.monotonic()

    def all_records() -> Iterator[dict]:
        if first is not None:
            yield first
            yield from records

    try:
        for rec in all_records():
            bucket.take()
            value = orjson.dumps(rec)
            produce(producer, topic, value, key, on_delivery=on_delivery)
            report.rows += 1
            producer.poll(0)
            if progress is not None:
                progress(report)
    finally:
        left = producer.flush(delivery_timeout_s)
        report.failed += left  # still queued after the timeout: not acknowledged
        report.seconds = time.monotonic() - started
    if report.rows and report.delivered == 0 and report.failed:
        raise ReplayError(f"nothing was delivered to {bootstrap}: {report.errors[:1] or 'timed out'}")
    return report


def cmd_replay(args: argparse.Namespace) -> int:
    import orjson

    last = [time.monotonic()]

    def progress(r: ReplayReport) -> None:
        now = time.monotonic()
        if now - last[0] >= 1.0:
            last[0] = now
            print(f"replay: {r.rows} sent, {r.delivered} acknowledged, {r.failed} failed", file=sys.stderr)

    try:
        report = replay(
            args.data, args.topic, args.bootstrap_servers, rate=args.rate, asset_id=args.asset_id, progress=progress
        )
    except ReplayError as e:
        print(f"streammoe replay: error: {e}", file=sys.stderr)
        return 2
    print(orjson.dumps({"replay": str(args.data), "topic": args.topic, **report.as_dict()}).decode())
    return 0 if report.failed == 0 else 1


def add_options(p: argparse.ArgumentParser) -> None:
    """`streammoe replay`'s options (its help line is in cli.EXTRA_COMMANDS)."""
    p.add_argument("--data", required=True, type=Path, help="series CSV or CSV.gz (timestamp, channels, [label])")
    p.add_argument("--topic", required=True)
    p.add_argument("--rate", type=float, default=0.0, help="records per second (0 = as fast as possible)")
    p.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    p.add_argument("--asset-id", default="asset-1", help="asset_id (and message key) of every record")
    p.set_defaults(func=cmd_replay)
