"""The scale-out capacity model of docs/scaleout.md, pure arithmetic: calls per batch over S scopes, a worker's rate
from the measured per-call seconds, and a deployment's plan (rates, memory, snapshot traffic, handover times)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def line_fit(rows: list[int], seconds: list[float]) -> tuple[float, float]:
    """Least-squares `seconds = fixed + per_row * rows`; returns (fixed, per_row)."""
    per_row, fixed = np.polyfit(np.asarray(rows, float), np.asarray(seconds, float), 1)
    return float(fixed), float(per_row)


def scopes_in_batch(batch: int, scopes: int) -> float:
    """Expected number of distinct scopes in a batch of `batch` records spread uniformly over `scopes` scopes
    (each distinct scope is one score_many + learn_many call)."""
    if scopes <= 1:
        return 1.0
    return scopes * (1.0 - (1.0 - 1.0 / scopes) ** batch)


def call_seconds(points: dict[int, float], rows: float) -> float:
    """Seconds of one score_many + learn_many call on `rows` rows, interpolated between measured (rows, seconds)
    points; below the smallest measured size it is that size's time (the fixed cost dominates there), above
    the largest it extends the last segment."""
    xs = sorted(points)
    ys = [points[x] for x in xs]
    if rows > xs[-1] and len(xs) > 1:
        return ys[-1] + (rows - xs[-1]) * (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return float(np.interp(rows, xs, ys))


def worker_rate(points: dict[int, float], batch: int, scopes: int) -> float:
    """Records/s of one worker's model stage when each `batch`-record batch spreads uniformly over `scopes`
    scopes: one call per distinct scope in the batch, each on batch / calls rows."""
    calls = scopes_in_batch(batch, scopes)
    return batch / (calls * call_seconds(points, batch / calls))


@dataclass
class Plan:
    workers: int
    scopes: int
    partitions: int
    batch: int
    interval_s: float
    scopes_per_worker: float
    scopes_per_partition: float
    rows_per_scope_per_batch: float
    worker_records_s: float  # model stage only, with every scope of the worker in every batch's mix
    batch_s: float  # model-stage time of one full batch: the least delay a record sees at that load
    worker_records_s_net: float  # minus the share of time spent writing interval snapshots
    cluster_records_s: float
    worker_mb: float  # scopes only, on top of one scope-less worker process
    snapshot_mb_s_cluster: float
    snapshot_mb_s_worker: float
    snapshot_busy_share: float  # share of a worker's time spent writing its snapshots each interval
    handover_write_s: float  # per partition: the revoking worker writes its scopes
    handover_read_s: float  # the new owner reads them back (log holding one snapshot per scope)
    handover_s_per_partition: float


@dataclass(frozen=True)
class Deployment:
    """What an operator chooses: workers, scopes (one model each), input partitions, batch size, snapshot interval."""

    workers: int
    scopes: int
    partitions: int
    batch: int
    interval_s: float


@dataclass(frozen=True)
class Figures:
    """What scaleout.json measured for one K: seconds of a call by rows per call (`call_points`), and per scope its
    memory, snapshot size, write and read seconds (pack + produce; fetch + unpack), plus the reader's start-up per
    partition (`read_fixed_s`)."""

    call_points: dict[int, float]
    mb_per_scope: float
    snapshot_bytes: float
    write_s: float
    read_fixed_s: float
    read_s: float


def capacity(d: Deployment, f: Figures) -> Plan:
    """The capacity model of docs/scaleout.md, for scopes spread evenly over workers and partitions and records
    evenly over scopes; every scope changes, so each is snapshotted once per `interval_s`."""
    spw = d.scopes / d.workers
    spp = d.scopes / d.partitions
    calls = scopes_in_batch(d.batch, max(1, round(spw)))
    rate = worker_rate(f.call_points, d.batch, max(1, round(spw)))
    busy = spw * f.write_s / d.interval_s
    return Plan(
        **asdict(d),
        scopes_per_worker=spw,
        scopes_per_partition=spp,
        rows_per_scope_per_batch=d.batch / calls,
        worker_records_s=rate,
        batch_s=d.batch / rate,
        worker_records_s_net=rate * (1 - busy),
        cluster_records_s=rate * (1 - busy) * d.workers,
        worker_mb=spw * f.mb_per_scope,
        snapshot_mb_s_cluster=d.scopes * f.snapshot_bytes / 1e6 / d.interval_s,
        snapshot_mb_s_worker=spw * f.snapshot_bytes / 1e6 / d.interval_s,
        snapshot_busy_share=busy,
        handover_write_s=spp * f.write_s,
        handover_read_s=f.read_fixed_s + spp * f.read_s,
        handover_s_per_partition=spp * f.write_s + f.read_fixed_s + spp * f.read_s,
    )


def figures_from(result: dict, k: int) -> Figures:
    """The figures measured for K experts in a scaleout.json."""
    r = result["k"][str(k)]
    scopes = r["broker"]["scopes"]
    read_fixed, read_per = line_fit([s["scopes"] for s in scopes], [s["read_s"] for s in scopes])
    _write_fixed, write_per = line_fit([s["scopes"] for s in scopes], [s["write_s"] for s in scopes])
    return Figures(
        call_points={int(b): c["total_ms"] / 1e3 for b, c in r["calls"].items()},
        mb_per_scope=r["memory"]["mb_per_scope"],
        snapshot_bytes=r["snapshot"]["bytes"],
        write_s=write_per,
        read_fixed_s=max(0.0, read_fixed),
        read_s=read_per,
    )
