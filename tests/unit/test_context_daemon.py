"""The time context in the daemon, on fake clients: filled by the warm-up with each record's asset and ts, kept
per asset, carried by the checkpoint, and never fed twice with records re-read after a restart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import torch
from clients_kit import CHANNELS, make, records

CONTEXT = {"context": {"window": 4, "gap_ms": 5}}


def two_assets(rng: np.random.Generator, n: int, start_ts: int = 0) -> list[bytes]:
    a, b = records(rng, n, "pump-1", start_ts), records(rng, n, "pump-2", start_ts)
    return [r for pair in zip(a, b) for r in pair]


def test_the_warm_up_fills_each_assets_context_and_alerts_name_features(tmp_path: Path) -> None:
    daemon, clients = make(tmp_path, model=CONTEXT, kafka={"scores_topic": "scores"})
    rng = np.random.default_rng(0)
    clients.source_client.feed(two_assets(rng, 150))  # 300 records: the warm-up's 200 and more
    tail = two_assets(rng, 50, start_ts=150)
    clients.source_client.feed(tail)
    summary = daemon.run(max_records=400, timeout_s=60)
    det = daemon.state.detector
    assert summary.records_in == 400 and det is not None
    assert set(det.inputs.store.slots) == {"pump-1", "pump-2"} and det.model.n_channels == 4 * len(CHANNELS)
    last = det.inputs.store.values[det.inputs.store.slots["pump-2"], -1].numpy()
    np.testing.assert_allclose(last, orjson.loads(tail[-1])["values"], rtol=1e-5)
    for alert in clients.sink_client.on("alerts"):
        for entry in orjson.loads(alert.value or b"")["top_channels"]:
            assert entry["channel"] in CHANNELS


def test_records_re_read_after_a_restart_do_not_enter_the_context_again(tmp_path: Path) -> None:
    first, clients = make(tmp_path, model=CONTEXT)
    rng = np.random.default_rng(1)
    batch = two_assets(rng, 150)
    clients.source_client.feed(batch)
    clients.source_client.feed(two_assets(rng, 50, start_ts=150))
    first.run(max_records=400, timeout_s=60)
    assert (tmp_path / "ckpt" / "global" / "context.pt").is_file(), "the shutdown checkpointed the context"
    saved = first.state.detector.inputs.state()  # type: ignore[union-attr]

    again, clients2 = make(tmp_path, model=CONTEXT)
    clients2.source_client.feed(batch)  # offsets 0..299 again: learned already by the checkpoint
    clients2.source_client.feed(two_assets(rng, 50, start_ts=150)[:100])  # 300..399 too
    again.run(max_records=400, timeout_s=60)
    assert again.state.origin == "checkpoint"
    now = again.state.detector.inputs.state()  # type: ignore[union-attr]
    assert now["tick"] == saved["tick"], "no batch of re-read records moved the context"
    assert torch.equal(now["values"].nan_to_num(-9), saved["values"].nan_to_num(-9))
