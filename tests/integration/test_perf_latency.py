"""The latency bench's harness (benchmarks/perf_latency.py): paced records through the broker reach the alerts
topic through the daemon and through the do-nothing relay, and the figures describe exactly those records."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.perf_latency import latency
from benchmarks.perf_options import PerfOptions
from streammoe.model.config import ModelConfig


def test_latency_bench_times_the_daemon_and_the_relay_floor_on_one_broker(broker: str, tmp_path: Path) -> None:
    opts = PerfOptions(latency=True, latency_rate=2000, latency_seconds=2.0, latency_k=2, latency_s=1, fit_steps=50)
    res = latency(broker, [f"ch{i:02d}" for i in range(38)], tmp_path, opts, progress=lambda *a: None)
    # The daemon ran the default model: the cascade as ModelConfig has it, in the model it loaded.
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert res["cascade"] is saved["cascade"]["enabled"] is ModelConfig().cascade.enabled
    # 4000 paced records plus the 10 that created the topic, all through the daemon; ~1 % planted far off.
    assert res["records_in"] == 4010
    assert 10 <= res["alerts"] <= 200
    # The offered rate is measured over the paced stretch only (not the producer process's start), so it never
    # passes the rate offered. How close it comes is the box's speed (a loaded 2-core CI box achieved 1,310 of
    # 2,000), which a benchmark reports and a test must not judge.
    for achieved in (res["achieved_produce_rec_s"], res["floor"]["achieved_produce_rec_s"]):
        assert 0 < achieved <= 2000 * 1.05
    # The relay forwards every 100th record it reads: the 10 topic-creating ones are read before the reader
    # starts (and dropped by their ts), so 40 of the 4000 paced records arrive.
    assert res["floor"]["forwarded"] == 40
    # Latencies of this run's records (not a clock mix-up: those read as hours or as negative); how small they
    # are is the box's speed, which the benchmark reports.
    for figures in (res, res["floor"]):
        assert 0 < figures["p50_ms"] <= figures["p90_ms"] <= figures["p99_ms"] <= figures["max_ms"] < 60_000
