"""The capacity model of docs/scaleout.md (benchmarks.scaleout_capacity): its arithmetic, checked by hand."""

from __future__ import annotations

import math

import pytest

from benchmarks.scaleout_capacity import (
    Deployment,
    Figures,
    call_seconds,
    capacity,
    line_fit,
    scopes_in_batch,
    worker_rate,
)

POINTS = {8: 0.007, 32: 0.008, 2048: 0.080}  # seconds per score + learn call, by rows per call


def test_distinct_scopes_in_a_batch() -> None:
    assert scopes_in_batch(1024, 1) == 1.0
    assert scopes_in_batch(2048, 100) == pytest.approx(100 * (1 - 0.99**2048))  # every scope, almost surely
    assert scopes_in_batch(2048, 100) > 99.99
    assert scopes_in_batch(1024, 1_000_000) == pytest.approx(1024, rel=1e-3)  # nearly one call per record
    assert scopes_in_batch(2, 2) == pytest.approx(1.5)  # both records in one scope half the time


def test_call_time_interpolates_clamps_below_and_extends_above() -> None:
    assert call_seconds(POINTS, 20) == pytest.approx(0.0075)
    assert call_seconds(POINTS, 1) == pytest.approx(0.007), "below the smallest size: that size's time"
    slope = (0.080 - 0.008) / (2048 - 32)
    assert call_seconds(POINTS, 4096) == pytest.approx(0.080 + 2048 * slope)


def test_worker_rate_pays_one_call_per_scope_in_the_batch() -> None:
    assert worker_rate(POINTS, 2048, 1) == pytest.approx(2048 / 0.080)
    calls = scopes_in_batch(2048, 100)
    assert worker_rate(POINTS, 2048, 100) == pytest.approx(2048 / (calls * call_seconds(POINTS, 2048 / calls)))
    assert worker_rate(POINTS, 2048, 100) < worker_rate(POINTS, 2048, 1) / 8


def test_line_fit_recovers_a_line() -> None:
    fixed, per_row = line_fit([8, 128, 2048], [0.005 + 3e-5 * r for r in (8, 128, 2048)])
    assert fixed == pytest.approx(0.005) and per_row == pytest.approx(3e-5)


def test_capacity_of_a_worked_example() -> None:
    deployment = Deployment(workers=100, scopes=10_000, partitions=200, batch=2048, interval_s=60.0)
    figures = Figures(POINTS, mb_per_scope=2.0, snapshot_bytes=2_000_000, write_s=0.03, read_fixed_s=0.2, read_s=0.02)
    plan = capacity(deployment, figures)
    assert plan.scopes_per_worker == 100 and plan.scopes_per_partition == 50
    assert plan.worker_mb == 200.0
    assert plan.snapshot_mb_s_cluster == pytest.approx(10_000 * 2.0 / 60)  # every scope once per interval
    assert plan.snapshot_mb_s_worker == pytest.approx(100 * 2.0 / 60)
    assert plan.snapshot_busy_share == pytest.approx(100 * 0.03 / 60)
    assert plan.handover_s_per_partition == pytest.approx(50 * 0.03 + 0.2 + 50 * 0.02)
    assert plan.worker_records_s == pytest.approx(worker_rate(POINTS, 2048, 100))
    assert plan.batch_s == pytest.approx(2048 / plan.worker_records_s)
    assert plan.worker_records_s_net == pytest.approx(plan.worker_records_s * (1 - 0.05))  # 100 x 30 ms per 60 s
    assert plan.cluster_records_s == pytest.approx(100 * plan.worker_records_s_net)
    assert math.isclose(plan.rows_per_scope_per_batch, 20.48, rel_tol=1e-3)
