"""What the daemon's integration tests share: a six-channel synthetic machine, its records (good and malformed),
the daemon's environment on the test broker, and keys that tie outputs back to input offsets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Self

import numpy as np
import orjson
import pytest
from conftest import committed_offsets, log_ends

from streammoe.config import Settings
from streammoe.daemon import Daemon
from streammoe.testing.machine import Machine
from streammoe.testing.records import encode, keyed_records
from streammoe.testing.settings import daemon_env

if TYPE_CHECKING:
    from conftest import Consumed

    from benchmarks.scaleout import WorkerProcess

CHANNELS = [f"c{i}" for i in range(6)]
MACHINE = Machine(len(CHANNELS), modes=1, factors=2)  # two latent factors mixed into six channels plus noise


def normal_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    """The machine's normal records: correlated channels, like a real machine."""
    return MACHINE.rows(rng, n)


def record(asset: str, ts: int, row: np.ndarray, as_list: bool = False) -> bytes:
    return encode(asset, ts, row, None if as_list else CHANNELS)


def valid_items(rng: np.random.Generator, n: int, start_ts: int = 0) -> list[tuple[bytes, bytes]]:
    """Seven pumps; every fifth record writes its values as a list (the configured order) instead of by name."""
    return keyed_records(
        normal_rows(rng, n),
        CHANNELS,
        assets=[f"pump-{a}" for a in range(7)],
        start_ts=start_ts,
        as_list=lambda i: i % 5 == 0,
    )


MALFORMED = {
    b"": "empty",
    b"{not json": "not_json",
    b"[1, 2, 3]": "not_object",
    b'{"ts": 1, "values": [1,2,3,4,5,6]}': "missing_asset",
    b'{"asset_id": 7, "ts": 1, "values": [1,2,3,4,5,6]}': "bad_asset",
    b'{"asset_id": "a", "values": [1,2,3,4,5,6]}': "missing_ts",
    b'{"asset_id": "a", "ts": "yesterday", "values": [1,2,3,4,5,6]}': "bad_ts",
    b'{"asset_id": "a", "ts": 1}': "missing_values",
    b'{"asset_id": "a", "ts": 1, "values": "1,2,3"}': "bad_values",
    b'{"asset_id": "a", "ts": 1, "values": {"c0": 1, "c1": 2}}': "missing_channel",
    b'{"asset_id": "a", "ts": 1, "values": [1,2,null,null,null,null]}': "missing_value",
    b'{"asset_id": "a", "ts": 1, "values": [1,2,3,4,5,true]}': "bad_value_type",
    b'{"asset_id": "a", "ts": 1, "values": [1,2,3,4,5,"6"]}': "bad_value_type",
    b'{"asset_id": "a", "ts": 2, "values": [1,2,3,4,5]}': "wrong_length",
    b'{"asset_id": "a", "ts": 1, "values": [1,2,3,4,5,1e400]}': "non_finite",
    b'{"asset_id": "a", "ts": 1, "values": [1,2,3,4,5,1e300]}': "non_finite",
    b'{"asset_id": "a", "ts": 1, "values": [1,2,3,4,5,NaN]}': "not_json",
    b'{"asset_id": "a", "ts": 3, "values": [1,2,3,4,5,6], "pad": "' + b"x" * 70_000 + b'"}': "oversized",
}


def topics(topic_name: Callable[[str], str]) -> dict[str, str]:
    return {role: topic_name(role) for role in ("input", "alerts", "dead", "scores", "events")}


def env_for(broker: str, t: dict[str, str], group: str, ckpt: Path, boot: Path | None, **extra: str) -> dict[str, str]:
    """The daemon of these tests: quick group timeouts and metadata refresh, a checkpoint every second, the HTTP
    server on a free port; `extra` are more STREAMMOE_* variables."""
    env = daemon_env(
        broker,
        t,
        CHANNELS,
        group=group,
        checkpoint_dir=ckpt,
        model_dir=boot,
        kafka__session_timeout_ms=4000,
        kafka__max_poll_interval_ms=20000,
        kafka__commit_interval_s=0.3,
        kafka__extra={"heartbeat.interval.ms": "1000", "topic.metadata.refresh.interval.ms": "1000"},
        checkpoint__interval_s=1,
        http__enabled=None,
        http__port=0,
    )
    env.update(extra)
    return env


def warmup_env(broker: str, t: dict[str, str], group: str, ckpt: Path, records: int) -> dict[str, str]:
    """`env_for` with no bootstrap model: the daemon fits a small one (2 experts, 100 steps, 2 samples) on its
    first `records` records."""
    return env_for(
        broker,
        t,
        group,
        ckpt,
        None,
        STREAMMOE_CHECKPOINT__WARMUP_RECORDS=str(records),
        STREAMMOE_MODEL__FIT_STEPS="100",
        STREAMMOE_MODEL__K_MAX="2",
        STREAMMOE_MODEL__N_SAMPLES="2",
    )


CRASH_WORKER = Path(__file__).parent / "integration" / "crash_worker.py"


def start_crash_worker(env: dict[str, str], **crash: str) -> subprocess.Popen:
    """`streammoe run` under tests/integration/crash_worker.py; `crash` (CRASH_POINT, CRASH_AFTER) says where it dies."""
    return subprocess.Popen(
        [sys.executable, str(CRASH_WORKER)],
        env={**os.environ, **env, **crash},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def drain_with_crash_worker(
    broker: str, group: str, input_topic: str, delivered: list[tuple[int, int]], env: dict[str, str]
) -> None:
    """The last clean run after the kills: the crash worker reads to the end of the input, then stops on SIGTERM."""
    final = start_crash_worker(env)
    try:
        deadline = time.monotonic() + 120
        while committed_offsets(broker, group, input_topic) != log_ends(delivered):
            assert time.monotonic() < deadline and final.poll() is None, final.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
            time.sleep(0.3)
        final.send_signal(signal.SIGTERM)
        _, err = final.communicate(timeout=30)
    finally:
        if final.poll() is None:
            final.kill()
    assert final.returncode == 0, err.decode()[-3000:]


def asset_scope_env(
    broker: str,
    t: dict[str, str],
    group: str,
    ckpt: Path,
    boot: Path | None,
    snapshots: str,
    interval_s: str = "2",
    **extra: str,
) -> dict[str, str]:
    """The daemon of the two-worker tests: one model per asset, handed over through `snapshots` (written every
    `interval_s`), no HTTP server, and a 6 s session timeout so that the group notices a worker that leaves."""
    return env_for(
        broker,
        t,
        group,
        ckpt,
        boot,
        STREAMMOE_SCOPES__MODE="asset",
        STREAMMOE_SNAPSHOT__TOPIC=snapshots,
        STREAMMOE_SNAPSHOT__INTERVAL_S=interval_s,
        STREAMMOE_HTTP__ENABLED="false",
        STREAMMOE_KAFKA__SESSION_TIMEOUT_MS="6000",
        **extra,
    )


class Workers:
    """The `streammoe run` processes of one test, each logging under tmp_path with its own checkpoint folder, all in
    `group` reading `topic`; leaving the block kills whichever still runs."""

    def __init__(self, env: dict[str, str], tmp_path: Path, broker: str, group: str, topic: str) -> None:
        self.env, self.tmp_path = env, tmp_path
        self.broker, self.group, self.topic = broker, group, topic
        self.started: list[WorkerProcess] = []

    def start(self, name: str, ckpt: str | None = None) -> WorkerProcess:
        """Worker `name`, its checkpoints in tmp_path / ckpt-<ckpt or name>."""
        from benchmarks.scaleout import WorkerProcess

        folder = str(self.tmp_path / f"ckpt-{ckpt or name}")
        worker = WorkerProcess(name, {**self.env, "STREAMMOE_CHECKPOINT__DIR": folder}, self.tmp_path)
        self.started.append(worker)
        return worker

    def wait_for_commits(
        self, what: str, delivered: list[tuple[int, int]], timeout: float, *workers: WorkerProcess
    ) -> None:
        """Until the group has committed the end of every partition that `delivered` wrote to."""
        from benchmarks.scaleout import wait_for

        ends = log_ends(delivered)
        wait_for(what, lambda: committed_offsets(self.broker, self.group, self.topic) == ends, timeout, *workers)

    def a_then_b(self, delivered_first: list[tuple[int, int]]) -> tuple[WorkerProcess, WorkerProcess]:
        """Worker a alone reads the first records; then worker b joins and the group splits the partitions."""
        a = self.start("a")
        self.wait_for_commits("worker a to process the first records", delivered_first, 120, a)
        b = self.start("b")
        wait_for_split(a, b)
        return a, b

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        for w in self.started:
            w.kill()


def wait_for_split(a: WorkerProcess, b: WorkerProcess) -> None:
    """Until the group has given each of the two workers some of the four partitions, and all of them between them."""
    from benchmarks.scaleout import wait_for

    wait_for(
        "the group to split the partitions",
        lambda: (
            bool(a.held_partitions() and b.held_partitions())
            and a.held_partitions() | b.held_partitions() == {0, 1, 2, 3}
        ),
        90,
        a,
        b,
    )


def make_daemon(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Daemon:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return Daemon(Settings())  # type: ignore[call-arg]


def source_key(msg: Consumed) -> tuple[int, int]:
    src = orjson.loads(msg.value)["source"]
    return src["partition"], src["offset"]


def dead_key(msg: Consumed) -> tuple[int, int]:
    return int(msg.headers["source_partition"]), int(msg.headers["source_offset"])
