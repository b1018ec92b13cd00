"""What the daemon's integration tests share: a six-channel synthetic machine, its records (good and malformed),
the daemon's environment on the test broker, and keys that tie outputs back to input offsets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from streammoe.config import Settings
from streammoe.daemon import Daemon

CHANNELS = [f"c{i}" for i in range(6)]
MIXING = np.random.default_rng(42).normal(0, 1, (2, 6)).astype(np.float32)


def normal_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    """Two latent factors mixed into six channels plus sensor noise: correlated, like a real machine."""
    z = rng.normal(0, 1, (n, 2)).astype(np.float32)
    return z @ MIXING + rng.normal(0, 0.3, (n, 6)).astype(np.float32)


def record(asset: str, ts: int, row: np.ndarray, as_list: bool = False) -> bytes:
    values = [round(float(v), 4) for v in row]
    return orjson.dumps({"asset_id": asset, "ts": ts, "values": values if as_list else dict(zip(CHANNELS, values))})


def valid_items(rng: np.random.Generator, n: int, start_ts: int = 0) -> list[tuple[bytes, bytes]]:
    rows = normal_rows(rng, n)
    items = []
    for i, row in enumerate(rows):
        asset = f"pump-{i % 7}"
        items.append((asset.encode(), record(asset, start_ts + i, row, as_list=i % 5 == 0)))
    return items


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
    b'{"asset_id": "a", "ts": 1, "values": [1,2,3,4,5,null]}': "missing_value",
    b'{"asset_id": "a", "ts": 1, "values": [1,2,3,4,5,true]}': "bad_value_type",
    b'{"asset_id": "a", "ts": 1, "values": [1,2,3,4,5,"6"]}': "bad_value_type",
    b'{"asset_id": "a", "ts": 2, "values": [1,2,3,4,5]}': "wrong_length",
    b'{"asset_id": "a", "ts": 1, "values": [1,2,3,4,5,1e400]}': "non_finite",
    b'{"asset_id": "a", "ts": 1, "values": [1,2,3,4,5,1e300]}': "non_finite",
    b'{"asset_id": "a", "ts": 1, "values": [1,2,3,4,5,NaN]}': "not_json",
    b'{"asset_id": "a", "ts": 3, "values": [1,2,3,4,5,6], "pad": "' + b"x" * 70_000 + b'"}': "oversized",
}


def topics(topic_name) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {role: topic_name(role) for role in ("input", "alerts", "dead", "scores", "events")}


def env_for(broker: str, t: dict[str, str], group: str, ckpt: Path, boot: Path | None, **extra: str) -> dict[str, str]:
    env = {
        "STREAMMOE_KAFKA__BOOTSTRAP_SERVERS": broker,
        "STREAMMOE_KAFKA__GROUP_ID": group,
        "STREAMMOE_KAFKA__INPUT_TOPIC": t["input"],
        "STREAMMOE_KAFKA__ALERTS_TOPIC": t["alerts"],
        "STREAMMOE_KAFKA__DEAD_LETTER_TOPIC": t["dead"],
        "STREAMMOE_KAFKA__SCORES_TOPIC": t["scores"],
        "STREAMMOE_KAFKA__EVENTS_TOPIC": t["events"],
        "STREAMMOE_KAFKA__SESSION_TIMEOUT_MS": "4000",
        "STREAMMOE_KAFKA__MAX_POLL_INTERVAL_MS": "20000",
        "STREAMMOE_KAFKA__COMMIT_INTERVAL_S": "0.3",
        "STREAMMOE_KAFKA__FETCH_WAIT_MAX_MS": "10",
        "STREAMMOE_KAFKA__EXTRA": '{"heartbeat.interval.ms": "1000", "topic.metadata.refresh.interval.ms": "1000"}',
        "STREAMMOE_RECORDS__CHANNELS": orjson.dumps(CHANNELS).decode(),
        "STREAMMOE_BATCHING__MAX_BATCH": "256",
        "STREAMMOE_BATCHING__MAX_WAIT_MS": "50",
        "STREAMMOE_CHECKPOINT__DIR": str(ckpt),
        "STREAMMOE_CHECKPOINT__INTERVAL_S": "1",
        "STREAMMOE_HTTP__PORT": "0",
        "STREAMMOE_LOG_FORMAT": "json",
    }
    if boot is not None:
        env["STREAMMOE_CHECKPOINT__BOOTSTRAP_MODEL_DIR"] = str(boot)
    env.update(extra)
    return env


def make_daemon(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Daemon:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return Daemon(Settings())  # type: ignore[call-arg]


def source_key(msg) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    src = orjson.loads(msg.value)["source"]
    return src["partition"], src["offset"]


def dead_key(msg) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    return int(msg.headers["source_partition"]), int(msg.headers["source_offset"])
