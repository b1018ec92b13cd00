"""`python -m benchmarks.scaleout_model`: the figures behind docs/scaleout.md (the scale-out capacity model).

Measured in one run, on one torch thread (as the daemon runs), for K experts (k_max = K, all K active after a fit on
K-mode synthetic data, 38 channels, every other ModelConfig field at its default):

1. cost   - seconds per `score_many` + `learn_many` call against rows per call (8 .. 2048), with a straight line
            fixed + per_row * rows fitted to the medians as a summary; then one 2048-record batch split evenly
            over S scopes, run on S detectors and on one detector called S times, against `worker_rate`'s
            prediction; and, for the largest K, the per-call cost with learn_every 4 and with n_samples 1.
2. memory - RSS growth of a fresh process that holds N detectors (loaded from a model directory as a restore
            does, then one score + learn each, so Adam's state and the scoring buffers exist), MB per scope.
3. snapshot - `snapshot.pack` / `unpack` size and time per scope; with `--broker`, on an embedded Tansu broker,
            `SnapshotWriter.write` and `read_latest` times for N scopes in a one-partition topic, and the read
            time of one partition whose log holds several rounds of snapshots (Tansu never compacts).

`capacity()` is the model itself (pure arithmetic on those figures); `--plan` prints it for a deployment.
The table goes to stdout; everything measured to <out>/scaleout.json.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from streammoe.model.detector import MixtureDetector

CHANNELS = [f"c{i}" for i in range(38)]


# --- the model: pure arithmetic --------------------------------------------------------------------------------


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


# --- measurements -----------------------------------------------------------------------------------------------


def fitted(k: int, fit_steps: int, rows: int = 20_000) -> MixtureDetector:
    from benchmarks.perf import synthetic
    from streammoe.model.config import ModelConfig
    from streammoe.model.detector import MixtureDetector

    # Plain (the full pass), so a scope's fixed cost is measured against the same model whatever the default.
    config = ModelConfig(k_max=k, fit_steps=fit_steps, min_expert_weight=0.0, cascade={"enabled": False})
    detector = MixtureDetector(len(CHANNELS), config, CHANNELS, device="cpu")
    detector.fit(synthetic(rows, k, len(CHANNELS), seed=1), k=k)
    assert detector.model.n_active == k, (k, detector.model.n_active)
    return detector


def stream(k: int, n: int = 16_384) -> np.ndarray:
    """Records from the same K modes the detector was fitted on (new rows): a well-fitted scope, so learning
    runs its normal path and no candidate expert is trained during the timing."""
    from benchmarks.perf import synthetic

    return synthetic(n, k, len(CHANNELS), seed=2)


def time_calls(detector: MixtureDetector, x: np.ndarray, sizes: list[int], repeats: int) -> dict[int, dict]:
    """Per rows-per-call: median seconds of score_many, learn_many and both, over interleaved repeats."""
    times: dict[int, list[tuple[float, float]]] = {b: [] for b in sizes}
    pos, extra = 0, {"events": 0, "candidates": 0, "steps": 0}

    def rows(b: int) -> np.ndarray:
        nonlocal pos
        if pos + b > len(x):
            pos = 0
        pos += b
        return x[pos - b : pos]

    for b in sizes:  # warm-up: first calls of each shape allocate
        for _ in range(2):
            detector.learn_many(detector.score_many(rows(b)))
    for _ in range(repeats):
        for b in sizes:
            for _ in range(max(3, min(40, 2048 // b))):
                t0 = time.perf_counter()
                scored = detector.score_many(rows(b))
                t1 = time.perf_counter()
                report = detector.learn_many(scored)
                t2 = time.perf_counter()
                times[b].append((t1 - t0, t2 - t1))
                extra["events"] += len(report.events)
                extra["candidates"] += bool(report.candidate)
                extra["steps"] += report.stepped
    out = {}
    for b, ts in times.items():
        score = statistics.median(t[0] for t in ts)
        learn = statistics.median(t[1] for t in ts)
        total = statistics.median(t[0] + t[1] for t in ts)
        out[b] = {
            "calls": len(ts),
            "score_ms": score * 1e3,
            "learn_ms": learn * 1e3,
            "total_ms": total * 1e3,
            "mean_total_ms": statistics.fmean(t[0] + t[1] for t in ts) * 1e3,
            "records_s": b / total,
        }
    out["during_timing"] = extra  # type: ignore[index]
    return out


def score_learn_split(detectors: list[MixtureDetector], rows: np.ndarray, scope: np.ndarray) -> None:
    """A worker's model stage for one batch: the rows of scope i (`scope`, one index per row) scored and learned by
    `detectors[i]`, in arrival order within each scope."""
    order = np.argsort(scope, kind="stable")
    bounds = np.searchsorted(scope[order], np.arange(len(detectors) + 1))
    for i, det in enumerate(detectors):
        idx = order[bounds[i] : bounds[i + 1]]
        if len(idx):
            det.learn_many(det.score_many(rows[idx]))


def split_check(
    model_dir: Path, detector: MixtureDetector, x: np.ndarray, batch: int, scope_counts: list[int], repeats: int
) -> list[dict]:
    """A worker's model stage for one `batch`-record batch split evenly over S scopes: group the rows by scope,
    then score + learn each scope's rows. Run with S detectors ("many", as a worker holds them) and, interleaved
    with it, with one detector called S times ("one"): the difference is what holding many models costs beyond
    the calls themselves. Median records/s over `repeats` batches (after one warm-up batch)."""
    from streammoe.state.persistence import load_detector

    sets = {s: [load_detector(model_dir, channels=CHANNELS) for _ in range(s)] for s in scope_counts}
    rates: dict[int, dict[str, list[float]]] = {s: {"many": [], "one": []} for s in scope_counts}
    rng = np.random.default_rng(0)
    for r in range(repeats + 1):
        for s in scope_counts:
            rows = x[(r * batch) % (len(x) - batch) :][:batch]
            scope = rng.permutation(np.arange(batch) % s)  # an even split, in arrival order
            for label, detectors in (("many", sets[s]), ("one", [detector] * s)):
                t0 = time.perf_counter()
                score_learn_split(detectors, rows, scope)
                if r:
                    rates[s][label].append(batch / (time.perf_counter() - t0))
    del sets
    gc.collect()
    return [
        {
            "scopes": s,
            "rows_per_scope": batch / s,
            "records_s": statistics.median(rates[s]["many"]),
            "one_detector_records_s": statistics.median(rates[s]["one"]),
        }
        for s in scope_counts
    ]


def levers(detector: MixtureDetector, x: np.ndarray, sizes: list[int], repeats: int) -> dict:
    """Per-call cost at small sizes with the settings that cut it (STREAMMOE_MODEL__LEARN_EVERY=4,
    STREAMMOE_MODEL__N_SAMPLES=1), interleaved with the defaults on the same detector."""
    cfg = detector.config
    base = (cfg.learn_every, cfg.n_samples)
    variants = {"default": base, "learn_every=4": (4, base[1]), "n_samples=1": (base[0], 1)}
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    try:
        for _ in range(repeats):
            for name, (every, samples) in variants.items():
                cfg.learn_every, cfg.n_samples = every, samples
                detector.cadence.batches = min(detector.cadence.batches, every)
                runs[name].append(time_calls(detector, x, sizes, 1))
    finally:
        cfg.learn_every, cfg.n_samples = base
    out = {}
    for name, got in runs.items():
        # the mean per call, not the median: with learn_every=4 three calls in four skip the gradient step
        out[name] = {b: statistics.median(g[b]["mean_total_ms"] for g in got) for b in sizes}
    return out


def _rss_mb() -> float:
    from benchmarks.probe import rss_mb

    return rss_mb(os.getpid())


def _memory_child(model_dir: str, counts: list[int], queue: mp.Queue) -> None:
    import torch

    torch.set_num_threads(1)
    from streammoe.state.persistence import load_detector

    x = np.load(Path(model_dir) / "rows.npy")
    warm = load_detector(model_dir, channels=CHANNELS)  # imports, first-call allocations: not per scope
    warm.learn_many(warm.score_many(x))
    del warm
    gc.collect()
    base = _rss_mb()
    held, rss = [], {}
    for n in range(1, max(counts) + 1):
        d = load_detector(model_dir, channels=CHANNELS)
        d.learn_many(d.score_many(x))
        held.append(d)
        if n in counts:
            gc.collect()
            rss[n] = _rss_mb()
    d = held[0]
    tensors = sum(t.nelement() * t.element_size() for t in d.model.state_dict().values())
    adam = sum(
        v.nelement() * v.element_size()
        for s in d.learner.optimizer.state.values()
        for v in s.values()
        if torch.is_tensor(v)
    )
    queue.put({"base_mb": base, "rss_mb": rss, "model_tensor_mb": tensors / 1e6, "adam_tensor_mb": adam / 1e6})


def memory(model_dir: Path, counts: list[int]) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=_memory_child, args=(str(model_dir), counts, queue))
    p.start()
    got = queue.get(timeout=600)
    p.join()
    rss = got["rss_mb"]
    lo, hi = min(counts), max(counts)
    got["mb_per_scope"] = (rss[hi] - rss[lo]) / (hi - lo) if hi > lo else rss[hi] - got["base_mb"]
    got["growth_mb"] = {n: v - got["base_mb"] for n, v in rss.items()}
    return got


def pack_unpack(detector: MixtureDetector, repeats: int) -> dict:
    from streammoe.state.checkpoint import ModelState
    from streammoe.state.snapshot import DEFAULT_CHUNK_BYTES, Manifest, pack, unpack

    state = ModelState("bench", detector)
    packs, unpacks = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        blob = pack(state)
        packs.append(time.perf_counter() - t0)
    no_fsync, fsync = [], os.fsync
    os.fsync = lambda fd: None  # what pack costs without save_detector's fsyncs (a throw-away temp dir)
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            pack(state)
            no_fsync.append(time.perf_counter() - t0)
    finally:
        os.fsync = fsync
    manifest = Manifest("bench", "x", 0, 1, len(blob), hashlib.sha256(blob).hexdigest(), state.lineage, {})
    for _ in range(repeats):
        t0 = time.perf_counter()
        unpack(blob, manifest, CHANNELS)
        unpacks.append(time.perf_counter() - t0)
    return {
        "bytes": len(blob),
        "chunks": -(-len(blob) // DEFAULT_CHUNK_BYTES),
        "pack_ms": statistics.median(packs) * 1e3,
        "pack_ms_without_fsync": statistics.median(no_fsync) * 1e3,
        "unpack_ms": statistics.median(unpacks) * 1e3,
    }


def one_partition_topic(bootstrap: str, name: str) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])[name].result(30)
    return name


def broker_snapshots(
    bootstrap: str, detector: MixtureDetector, k: int, scope_counts: list[int], rounds: int, rounds_scopes: int
) -> dict:
    """Write N scopes' snapshots into a one-partition topic and read them back; then, on the `rounds_scopes` topic,
    write further rounds and read again: the read of an uncompacted log grows with every round written."""
    from streammoe.config import KafkaSettings
    from streammoe.kafka.snapshots import SnapshotTopic
    from streammoe.state.checkpoint import ModelState
    from streammoe.state.snapshot import SnapshotWriter, pack, read_latest

    kafka = KafkaSettings(bootstrap_servers=bootstrap, group_id=f"bench-{uuid.uuid4().hex[:6]}")
    out: dict = {"scopes": [], "rounds": []}
    for n in scope_counts:
        topic = one_partition_topic(bootstrap, f"snap-k{k}-n{n}-{uuid.uuid4().hex[:6]}")
        snap = SnapshotTopic(kafka, topic)
        writer = SnapshotWriter(snap)
        states = [ModelState(f"asset-{i:05d}", detector, learned_offsets={"in": {0: i}}) for i in range(n)]
        t0 = time.perf_counter()
        for s in states:
            writer.write(s)
        write = time.perf_counter() - t0
        t0 = time.perf_counter()
        got, _ = read_latest(snap, CHANNELS)
        read = time.perf_counter() - t0
        assert len(got) == n, (len(got), n)
        out["scopes"].append(
            {
                "scopes": n,
                "write_s": write,
                "read_s": read,
                "write_ms_per_scope": write / n * 1e3,
                "read_ms_per_scope": read / n * 1e3,
            }
        )
        if n == rounds_scopes and rounds > 1:
            log_mb = n * len(pack(states[0])) / 1e6  # one round's bytes (chunks; manifests are ~300 B)
            out["rounds"].append({"rounds": 1, "scopes": n, "log_mb": log_mb, "read_s": read})
            for r in range(2, rounds + 1):
                for s in states:
                    writer.write(s)
                t0 = time.perf_counter()
                got, _ = read_latest(snap, CHANNELS)
                out["rounds"].append(
                    {"rounds": r, "scopes": n, "log_mb": r * log_mb, "read_s": time.perf_counter() - t0}
                )
                assert len(got) == n
        snap.producer.flush(10)
    return out


# --- the run ----------------------------------------------------------------------------------------------------


def run(opts: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(opts.torch_threads)
    from streammoe.logs import configure_logging
    from streammoe.state.persistence import save_detector

    configure_logging("WARNING", "json")
    result: dict = {
        "setup": {
            "channels": len(CHANNELS),
            "ks": opts.ks,
            "sizes": opts.sizes,
            "repeats": opts.repeats,
            "fit_steps": opts.fit_steps,
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "split_batch": opts.split_batch,
            "split_scopes": opts.split_scopes,
            "memory_scopes": opts.memory_scopes,
            "broker_scopes": opts.broker_scopes if opts.broker else None,
            "rounds": opts.rounds,
            "model": "k_max=K, all K experts active, other ModelConfig fields at their defaults (n_samples=8, "
            "learn_every=1, learn_batch=256, novelty on)",
        },
        "k": {},
    }
    broker = None
    if opts.broker:
        from streammoe.testing.broker import EmbeddedBroker

        broker = EmbeddedBroker().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for k in opts.ks:
                r: dict = {}
                t0 = time.perf_counter()
                detector = fitted(k, opts.fit_steps)
                r["fit_s"] = time.perf_counter() - t0
                x = stream(k)
                model_dir = save_detector(detector, Path(tmp) / f"k{k}")
                np.save(model_dir / "rows.npy", x[:64])
                calls = time_calls(detector, x, opts.sizes, opts.repeats)
                r["during_timing"] = calls.pop("during_timing")
                r["calls"] = calls
                fixed, per_row = line_fit(list(calls), [c["total_ms"] / 1e3 for c in calls.values()])
                r["line"] = {"fixed_ms": fixed * 1e3, "per_row_us": per_row * 1e6}
                points = {b: c["total_ms"] / 1e3 for b, c in calls.items()}
                split = split_check(model_dir, detector, x, opts.split_batch, opts.split_scopes, opts.split_repeats)
                for s in split:
                    s["predicted_records_s"] = worker_rate(points, opts.split_batch, s["scopes"])
                if k == max(opts.ks):
                    r["levers"] = levers(detector, x, opts.lever_sizes, opts.repeats)
                r["split"] = split
                r["memory"] = memory(model_dir, opts.memory_scopes)
                r["snapshot"] = pack_unpack(detector, opts.pack_repeats)
                if broker is not None:
                    r["broker"] = broker_snapshots(
                        broker.bootstrap,
                        detector,
                        k,
                        opts.broker_scopes,
                        opts.rounds if k == max(opts.ks) else 1,
                        opts.rounds_scopes,
                    )
                result["k"][k] = r
                print(f"K={k} measured", flush=True)
    finally:
        if broker is not None:
            broker.stop()
    return result


def table(result: dict) -> str:
    lines = []
    ks = list(result["k"])
    sizes = list(next(iter(result["k"].values()))["calls"])
    lines.append("score_many + learn_many per call (median ms; records/s):")
    lines.append("| rows per call | " + " | ".join(f"K={k} ms | K={k} rec/s" for k in ks) + " |")
    lines.append("|---:|" + "---:|---:|" * len(ks))
    for b in sizes:
        cells = []
        for k in ks:
            c = result["k"][k]["calls"][b]
            cells += [f"{c['total_ms']:.2f} ({c['score_ms']:.2f} + {c['learn_ms']:.2f})", f"{c['records_s']:,.0f}"]
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    lines.append(
        "| line: fixed ms + µs/row | "
        + " | ".join(
            f"{result['k'][k]['line']['fixed_ms']:.2f} + {result['k'][k]['line']['per_row_us']:.1f} µs/row | "
            for k in ks
        )
        + " |"
    )
    lines.append("")
    batch = result["setup"]["split_batch"]
    lines.append(
        f"one {batch}-record batch split evenly over S scopes, records/s: S detectors / one detector "
        "called S times / predicted from the per-call medians"
    )
    lines.append("| S | rows/scope | " + " | ".join(f"K={k}" for k in ks) + " |")
    lines.append("|---:|---:|" + "---:|" * len(ks))
    for i, s in enumerate(result["k"][ks[0]]["split"]):
        cells = []
        for k in ks:
            sp = result["k"][k]["split"][i]
            cells.append(
                f"{sp['records_s']:,.0f} / {sp['one_detector_records_s']:,.0f} / {sp['predicted_records_s']:,.0f}"
            )
        lines.append(f"| {s['scopes']} | {s['rows_per_scope']:.1f} | " + " | ".join(cells) + " |")
    for k in ks:
        lev = result["k"][k].get("levers")
        if lev:
            sizes_l = list(next(iter(lev.values())))
            lines.append("")
            lines.append(
                f"K={k}, mean ms per score + learn call with the settings that cut the fixed cost (interleaved):"
            )
            lines.append("| setting | " + " | ".join(f"{b} rows" for b in sizes_l) + " |")
            lines.append("|---|" + "---:|" * len(sizes_l))
            for name, got in lev.items():
                lines.append(f"| {name} | " + " | ".join(f"{got[b]:.2f}" for b in sizes_l) + " |")
    lines.append("")
    lines.append("memory and snapshot per scope:")
    lines.append(
        "| K | RSS growth N="
        + "/".join(str(n) for n in result["setup"]["memory_scopes"])
        + " (MB) | MB/scope (slope) | tensors MB (model + Adam) | snapshot bytes | chunks | pack ms "
        "(without fsync) | unpack ms |"
    )
    lines.append("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k in ks:
        m, s = result["k"][k]["memory"], result["k"][k]["snapshot"]
        growth = "/".join(f"{v:.1f}" for v in m["growth_mb"].values())
        lines.append(
            f"| {k} | {growth} | {m['mb_per_scope']:.2f} | {m['model_tensor_mb']:.2f} + {m['adam_tensor_mb']:.2f}"
            f" | {s['bytes']:,} | {s['chunks']} | {s['pack_ms']:.1f} ({s['pack_ms_without_fsync']:.1f}) | {s['unpack_ms']:.1f} |"
        )
    if "broker" in result["k"][ks[0]]:
        lines.append("")
        lines.append("snapshot topic on Tansu, N scopes in one partition (SnapshotWriter.write of all N; read_latest):")
        lines.append("| K | N | write s | write ms/scope | read s | read ms/scope |")
        lines.append("|---:|---:|---:|---:|---:|---:|")
        for k in ks:
            for s in result["k"][k]["broker"]["scopes"]:
                lines.append(
                    f"| {k} | {s['scopes']} | {s['write_s']:.2f} | {s['write_ms_per_scope']:.1f} | "
                    f"{s['read_s']:.2f} | {s['read_ms_per_scope']:.1f} |"
                )
        for k in ks:
            sc = result["k"][k]["broker"]["scopes"]
            wf, wp = line_fit([x["scopes"] for x in sc], [x["write_s"] for x in sc])
            rf, rp = line_fit([x["scopes"] for x in sc], [x["read_s"] for x in sc])
            lines.append(
                f"K={k} lines over N: write {wf * 1e3:.0f} ms + {wp * 1e3:.1f} ms/scope; "
                f"read {rf * 1e3:.0f} ms + {rp * 1e3:.1f} ms/scope"
            )
        for k in ks:
            rounds = result["k"][k]["broker"]["rounds"]
            if rounds:
                lines.append("")
                lines.append(
                    f"uncompacted log, K={k}, {rounds[0]['scopes']} scopes: read_latest after R rounds of snapshots"
                )
                lines.append("| R | log MB | read s |")
                lines.append("|---:|---:|---:|")
                lines += [f"| {r['rounds']} | {r['log_mb']:.0f} | {r['read_s']:.2f} |" for r in rounds]
                rf, rp = line_fit([r["log_mb"] for r in rounds], [r["read_s"] for r in rounds])
                lines.append(f"line: {rf:.2f} s + {rp * 1e3:.1f} ms per MB of log")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaleout_model", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("results/scaleout"))
    p.add_argument("--ks", type=_ints, default=[1, 4, 8], help="experts K (k_max = K, all active)")
    p.add_argument("--sizes", type=_ints, default=[8, 32, 128, 512, 2048], help="rows per score+learn call")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds over the sizes")
    p.add_argument("--fit-steps", type=int, default=200)
    p.add_argument("--split-batch", type=int, default=2048)
    p.add_argument("--split-scopes", type=_ints, default=[1, 16, 100])
    p.add_argument("--split-repeats", type=int, default=5)
    p.add_argument("--memory-scopes", type=_ints, default=[1, 10, 50])
    p.add_argument("--pack-repeats", type=int, default=7)
    p.add_argument(
        "--broker",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time SnapshotWriter.write / read_latest on an embedded Tansu broker",
    )
    p.add_argument("--broker-scopes", type=_ints, default=[1, 10, 50])
    p.add_argument("--lever-sizes", type=_ints, default=[8, 32, 128], help="rows per call for the settings levers")
    p.add_argument(
        "--rounds", type=int, default=8, help="snapshot rounds written for the uncompacted-log read (largest K)"
    )
    p.add_argument("--rounds-scopes", type=int, default=10, help="scopes in the uncompacted-log read")
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--table", type=Path, default=None, help="only print the table of an earlier scaleout.json")
    plan = p.add_argument_group("--plan: the capacity model on the figures of --table FILE")
    plan.add_argument("--plan", action="store_true")
    plan.add_argument("--plan-k", type=int, default=8)
    plan.add_argument("--workers", type=int, default=100)
    plan.add_argument("--scopes", type=int, default=10_000)
    plan.add_argument("--partitions", type=_ints, default=[100, 200])
    plan.add_argument("--batch", type=_ints, default=[1024, 2048])
    plan.add_argument("--interval-s", type=float, default=60.0)
    opts = p.parse_args(argv)
    if opts.table is not None:
        result = json.loads(opts.table.read_text())
        if not opts.plan:
            print(table(result))
            return 0
        figures = figures_from(result, opts.plan_k)
        for parts in opts.partitions:
            for batch in opts.batch:
                got = capacity(Deployment(opts.workers, opts.scopes, parts, batch, opts.interval_s), figures)
                print(json.dumps(asdict(got)))
        return 0
    t0, load = time.perf_counter(), os.getloadavg()[0]
    result = run(opts)
    result["setup"]["wall_s"] = time.perf_counter() - t0
    result["setup"]["load_average_1min"] = [load, os.getloadavg()[0]]  # start, end: the box is shared
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "scaleout.json").write_text(json.dumps(result, indent=2))
    print(table(json.loads(json.dumps(result))))
    print(
        f"\nwritten {opts.out / 'scaleout.json'} ({result['setup']['wall_s']:.0f} s, load average "
        f"{result['setup']['load_average_1min'][0]:.1f} -> {result['setup']['load_average_1min'][1]:.1f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
