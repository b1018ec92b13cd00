"""`streammoe replay` into the real embedded broker: exactly the file's rows arrive, as JSON, label dropped."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import orjson
import pytest
from conftest import consume_all

from streammoe.cli import main
from streammoe.files.replay import ReplayError, TokenBucket, iter_records, parse_ts, replay
from streammoe.testing.broker import free_port

CSV = """timestamp,flow,temp,label
1000,1.5,20.25,0
1001,-2,21,1
1002,3.125,,0
1003,1e-3,22.5,0
"""


def test_parse_ts() -> None:
    assert parse_ts("1732000000123", 0) == 1732000000123
    assert parse_ts("12.6", 0) == 13
    assert parse_ts("2024-01-01T00:00:01Z", 0) == 1704067201000
    assert parse_ts("2024-01-01 00:00:01", 0) == 1704067201000  # no zone: UTC
    assert parse_ts("2024-01-01T01:00:01+01:00", 0) == 1704067201000
    assert parse_ts("step-7", 7) == 7


def test_rows_without_timestamp_column_use_the_row_index(tmp_path: Path) -> None:
    f = tmp_path / "s.csv"
    f.write_text("flow,label\n1,0\n2,1\n")
    assert list(iter_records(f, "p")) == [
        {"asset_id": "p", "ts": 0, "values": {"flow": 1.0}},
        {"asset_id": "p", "ts": 1, "values": {"flow": 2.0}},
    ]


def test_token_bucket_paces() -> None:
    bucket, t0 = TokenBucket(200.0, burst=1), time.monotonic()
    for _ in range(41):
        bucket.take()
    assert 0.17 <= time.monotonic() - t0 < 1.0


@pytest.mark.integration
@pytest.mark.parametrize("gz", [False, True])
def test_replay_delivers_exactly_the_rows(broker: str, topic_name, tmp_path: Path, gz: bool) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / ("s.csv.gz" if gz else "s.csv")
    path.write_bytes(gzip.compress(CSV.encode()) if gz else CSV.encode())
    topic = topic_name("in")
    report = replay(path, topic, broker, rate=0, asset_id="pump-9")
    assert (report.rows, report.delivered, report.failed) == (4, 4, 0)
    got = consume_all(broker, topic, expected=4)
    assert len(got) == 4 and {m.key for m in got} == {b"pump-9"}
    records = sorted((orjson.loads(m.value) for m in got), key=lambda r: r["ts"])
    assert records == [
        {"asset_id": "pump-9", "ts": 1000, "values": {"flow": 1.5, "temp": 20.25}},
        {"asset_id": "pump-9", "ts": 1001, "values": {"flow": -2.0, "temp": 21.0}},
        {
            "asset_id": "pump-9",
            "ts": 1002,
            "values": {"flow": 3.125, "temp": None},
        },  # a gap: the daemon dead-letters it
        {"asset_id": "pump-9", "ts": 1003, "values": {"flow": 0.001, "temp": 22.5}},
    ]


@pytest.mark.integration
def test_cli_replay_counts_and_rate(broker: str, topic_name, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "s.csv"
    path.write_text("timestamp,a\n" + "".join(f"{i},{i}\n" for i in range(30)))
    topic = topic_name("in")
    t0 = time.monotonic()
    assert main(["replay", "--data", str(path), "--topic", topic, "--bootstrap-servers", broker, "--rate", "100"]) == 0
    assert time.monotonic() - t0 >= 0.2  # 30 rows at 100/s, less the initial burst
    out = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["rows"], out["delivered"], out["failed"]) == (30, 30, 0)
    assert sorted(orjson.loads(m.value)["values"]["a"] for m in consume_all(broker, topic, expected=30)) == list(
        range(30)
    )


def test_missing_file_is_a_clear_error(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["replay", "--data", str(tmp_path / "nope.csv"), "--topic", "t"]) == 2
    assert "nope.csv: no such file" in capsys.readouterr().err


def test_unreachable_broker_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text(CSV)
    with pytest.raises(ReplayError, match="unreachable"):
        replay(path, "t", f"127.0.0.1:{free_port()}", connect_timeout_s=1.0)
