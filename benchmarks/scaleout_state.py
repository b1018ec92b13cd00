"""What one scope holds and moves (`python -m benchmarks.scaleout_model`, parts 2 and 3): a process's memory growth
per detector held, snapshot pack / unpack, and snapshot writes and reads on a Tansu topic."""

from __future__ import annotations

import gc
import hashlib
import multiprocessing as mp
import os
import statistics
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from benchmarks.scaleout_calls import CHANNELS

if TYPE_CHECKING:
    from streammoe.model.detector import MixtureDetector


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
