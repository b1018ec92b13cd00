"""The latency bench's harness (benchmarks/perf.py): paced records through the broker reach the alerts topic
through the daemon and through the do-nothing relay, and the figures describe exactly those records."""

from __future__ import annotations

from pathlib import Path

from benchmarks import perf


def test_latency_bench_times_the_daemon_and_the_relay_floor_on_one_broker(broker: str, tmp_path: Path) -> None:
    opts = perf.PerfOptions(
        latency=True, latency_rate=2000, latency_seconds=2.0, latency_k=2, latency_s=1, fit_steps=50
    )
    res = perf.latency(broker, [f"ch{i:02d}" for i in range(38)], tmp_path, opts, progress=lambda *a: None)
    # 4000 paced records plus the 10 that created the topic, all through the daemon; ~1 % planted far off.
    assert res["records_in"] == 4010
    assert 10 <= res["alerts"] <= 200
    # The offered rate is measured over the paced stretch only (not the producer process's start).
    assert 1500 < res["achieved_produce_rec_s"] < 2500 and 1500 < res["floor"]["achieved_produce_rec_s"] < 2500
    # The relay forwards every 100th record it reads: the 10 topic-creating ones are read before the reader
    # starts (and dropped by their ts), so 40 of the 4000 paced records arrive.
    assert res["floor"]["forwarded"] == 40
    for figures in (res, res["floor"]):
        assert 0 < figures["p50_ms"] <= figures["p90_ms"] <= figures["p99_ms"] <= figures["max_ms"] < 5000
