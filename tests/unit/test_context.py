"""The time context (streammoe/context/): per-asset windows against a record-by-record reference, gaps and
order, eviction, its features, W=1 as before, and the context as learned state (checkpoint, snapshot, restart)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from streammoe.config import CheckpointSettings
from streammoe.context.features import feature_names, split_name, window_features
from streammoe.context.settings import ContextConfig
from streammoe.context.store import ContextStore
from streammoe.context.timeline import parse_times, series_axis
from streammoe.model.config import ModelConfig
from streammoe.model.detector import MixtureDetector
from streammoe.state.checkpoint import Checkpointer, ModelState
from streammoe.state.persistence import load_detector, save_detector

CHANNELS = ["flow", "temp"]
DATA = Path(__file__).resolve().parent.parent / "data"


def reference(records: list[tuple[str, float, np.ndarray]], w: int, gap: float) -> np.ndarray:
    """Windows the slow way: one record at a time, each asset's list cut on a gap or a step back."""
    past: dict[str, list[tuple[float, np.ndarray]]] = {}
    out = []
    for asset, t, x in records:
        h = past.get(asset, [])
        if h and (t - h[-1][0] > gap or t < h[-1][0]):
            h = []
        past[asset] = (h + [(t, x)])[-w:]
        win = np.full((w, len(x)), np.nan)
        for i, (_, v) in enumerate(reversed(past[asset])):
            win[w - 1 - i] = v
        out.append(win)
    return np.array(out)


def stream(n: int, seed: int) -> list[tuple[str, float, np.ndarray]]:
    rng = np.random.default_rng(seed)
    clock = {"a": 0.0, "b": 100.0, "c": 5.0}
    out = []
    for _ in range(n):
        asset = str(rng.choice(list(clock)))
        clock[asset] += float(rng.choice([1, 1, 1, 1, 7, -3]))  # now and then a gap (7 > 3) or a step back
        out.append((asset, clock[asset], rng.normal(size=2)))
    return out


def assemble(store: ContextStore, records, batch: int, gap: float) -> np.ndarray:
    got = []
    for s in range(0, len(records), batch):
        part = records[s : s + batch]
        x = torch.tensor(np.array([r[2] for r in part]), dtype=torch.float32)
        t = torch.tensor([r[1] for r in part], dtype=torch.float64)
        got.append(store.windows(x, [r[0] for r in part], t, gap).numpy())
    return np.concatenate(got)


@pytest.mark.parametrize("batch", [1, 7, 64, 400])
def test_batched_windows_are_what_one_record_at_a_time_gives(batch: int) -> None:
    """Several assets interleaved in one batch, gaps and steps back: any batching gives the reference's windows."""
    records = stream(400, 0)
    got = assemble(ContextStore(5, 2, 100), records, batch, gap=3.0)
    np.testing.assert_allclose(got, reference(records, 5, 3.0), atol=1e-6)


def test_a_gap_or_a_step_back_starts_the_context_afresh_and_never_raises() -> None:
    store = ContextStore(4, 1, 10)
    x = torch.arange(1.0, 8.0)[:, None]
    t = torch.tensor([0, 1, 2, 50, 51, 10, 11], dtype=torch.float64)  # a 48-step jump, then back in time
    win = store.windows(x, ["p"] * 7, t, max_gap=5.0)
    assert torch.isnan(win[3, :3]).all() and win[3, 3, 0] == 4, "after the gap: the record alone"
    assert win[4, 2, 0] == 4 and torch.isnan(win[4, :2]).all()
    assert torch.isnan(win[5, :3]).all() and win[5, 3, 0] == 6, "a step back: afresh too"
    assert torch.equal(win[2, :, 0].nan_to_num(-1), torch.tensor([-1.0, 1, 2, 3]))
    nan_t = store.windows(x[:2], ["p", "p"], torch.tensor([math.nan, 12.0], dtype=torch.float64), 5.0)
    assert nan_t[1, -1, 0] == 2 and torch.isnan(nan_t[1, :-1]).all(), "a record without a time has no past"


def test_records_that_teach_nothing_take_their_place_but_give_no_values() -> None:
    store = ContextStore(3, 1, 10)
    x = torch.tensor([[1.0], [1e30], [3.0]])
    win = store.windows(x, ["p"] * 3, torch.arange(3.0, dtype=torch.float64), 5.0, keep=torch.tensor([1, 0, 1]) > 0)
    assert win[1, -1, 0] == 1e30, "a poison record is judged with its own value"
    assert torch.isnan(win[2, 1]) and win[2, 0, 0] == 1 and win[2, 2, 0] == 3


def test_reading_without_update_leaves_the_store_as_it_was() -> None:
    store = ContextStore(3, 1, 10)
    t = torch.arange(4.0, dtype=torch.float64)
    store.windows(torch.arange(4.0)[:, None], ["p"] * 4, t, 5.0)
    before = store.state()
    again = store.windows(torch.tensor([[9.0]]), ["p"], torch.tensor([4.0], dtype=torch.float64), 5.0, update=False)
    assert torch.equal(again[0, :, 0], torch.tensor([2.0, 3.0, 9.0]))
    assert torch.equal(store.state()["values"], before["values"]) and store.tick == before["tick"]
    unknown = store.windows(torch.tensor([[1.0]]), ["q"], torch.tensor([0.0], dtype=torch.float64), 5.0, update=False)
    assert torch.isnan(unknown[0, :2]).all() and "q" not in store.slots


def test_the_least_recently_seen_assets_are_evicted_and_counted() -> None:
    store = ContextStore(3, 1, max_assets=2)
    one = torch.ones(1, 1)
    for i, asset in enumerate(["a", "b", "a", "c"]):
        store.windows(one, [asset], torch.tensor([float(i)], dtype=torch.float64), 5.0)
    assert set(store.slots) == {"a", "c"} and store.evicted == 1, "b was seen least recently"
    store.windows(torch.ones(3, 1), ["x", "y", "z"], torch.zeros(3, dtype=torch.float64), 5.0)
    assert len(store) == 2 and store.evicted == 4, "one batch with more assets than fit: bounded all the same"
    back = store.windows(one, ["b"], torch.tensor([9.0], dtype=torch.float64), 5.0)
    assert torch.isnan(back[0, :2]).all(), "an evicted asset comes back without a past"


def test_evictions_are_logged_at_most_once_a_minute_with_the_count_since(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker tracking more assets than it may evicts on most batches: one line a minute, none lost."""
    from structlog.testing import capture_logs

    from streammoe.context import store as store_module

    clock = [1000.0]
    monkeypatch.setattr(store_module.time, "monotonic", lambda: clock[0])
    store = ContextStore(2, 1, max_assets=1)
    t = torch.zeros(1, dtype=torch.float64)
    with capture_logs() as logs:
        for i in range(5):  # each batch a new asset: evicts the one before
            store.windows(torch.ones(1, 1), [f"a{i}"], t, 5.0)
            clock[0] += 10
        clock[0] += 60
        store.windows(torch.ones(1, 1), ["late"], t, 5.0)
    lines = [e for e in logs if e["event"] == "context_assets_evicted"]
    assert [(e["evicted"], e["evicted_total"]) for e in lines] == [(1, 1), (4, 5)]
    assert store.evicted == 5


def test_features_and_their_names() -> None:
    win = torch.tensor([[[1.0], [3.0], [5.0]], [[math.nan], [math.nan], [2.0]]])
    f = window_features(win, ("diff", "mean", "dev", "std", "rough"))
    assert torch.allclose(f[0], torch.tensor([2.0, 3.0, 2.0, math.sqrt(8 / 3), 2.0]))
    assert torch.isnan(f[1, [0, 3, 4]]).all() and f[1, 1] == 2 and f[1, 2] == 0, "no past: undefined, not 0"
    names = feature_names(CHANNELS, ("diff", "std"))
    assert names == ["flow", "temp", "d(flow)", "d(temp)", "sd(flow)", "sd(temp)"]
    assert not any(":" in n or ";" in n for n in names), "SCORES.csv encodes name:share;"
    assert split_name("sd(temp)") == ("temp", "std") and split_name("flow") == ("flow", "value")
    with pytest.raises(ValueError, match="at least one of"):
        ContextConfig(window=3, diff=False, std=False, rough=False)
    assert ContextConfig(window=1).features == ()


def test_a_series_time_axis_is_counted_in_its_own_median_step() -> None:
    stamps = ["2020-03-09 10:00:00", "2020-03-09 10:00:02", "2020-03-09 10:00:04", "2020-03-09 10:01:04", ""]
    axis = series_axis(stamps)
    assert axis is not None and np.allclose(axis[:4], (np.array([0, 2, 4, 64]) + axis[0] * 2) / 2)
    assert np.isnan(axis[4])
    assert np.allclose(np.diff(series_axis(["10", "20", "30"])), 1.0)
    assert parse_times(["yesterday", "today"]) is None and series_axis(["a", "b"]) is None


def two_channel(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return np.stack([np.sin(t / 40), np.cos(t / 60)], 1).astype(np.float32) + rng.normal(0, 0.1, (n, 2)).astype(
        np.float32
    )


def small(window: int, **kw: object) -> ModelConfig:
    return ModelConfig(k_max=3, hidden=16, latent=2, fit_steps=150, context=ContextConfig(window=window, **kw))


def test_window_1_is_the_model_of_before_bit_for_bit() -> None:
    """tests/data/model-v2 was saved by the code before the context (format 2): it loads with window 1 and
    gives the probe's scores exactly; a fresh model at window 1 has the record's channels as its only inputs."""
    det = load_detector(DATA / "model-v2", device="cpu", channels=["flow", "pressure", "temp"])
    assert det.config.context.window == 1 and det.inputs.names == ["flow", "pressure", "temp"]
    probe = np.load(DATA / "model-v2-probe.npz")
    scored = det.score_many(probe["x"])
    np.testing.assert_array_equal(scored.nll, probe["nll"])
    np.testing.assert_array_equal(scored.log_p_value, probe["log_p"])
    np.testing.assert_array_equal(scored.is_anomaly, probe["is_anomaly"])
    assert scored.input_names is None
    a, b = (MixtureDetector(2, cfg, CHANNELS, device="cpu") for cfg in (ModelConfig(), small(1, rough=True)))
    assert a.model.n_channels == b.model.n_channels == 2


def fitted(window: int) -> MixtureDetector:
    det = MixtureDetector(2, small(window), CHANNELS, device="cpu")
    x = two_channel(1200, 0)
    det.fit(x, assets=np.where(np.arange(1200) % 2, "p1", "p2"), times=np.arange(1200.0) // 2, max_gap=3.0)
    return det


def batches(seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    x = two_channel(6 * 64, seed)
    x[100:110, 0] = 0.5  # stuck for a while: the context sees it
    assets = np.where(np.arange(len(x)) % 3 == 0, "p1", "p2")
    times = 600.0 + np.arange(len(x)) // 2
    return [(x[i : i + 64], assets[i : i + 64], times[i : i + 64]) for i in range(0, len(x), 64)]


def run(det: MixtureDetector, parts) -> list:
    out = []
    for x, assets, times in parts:
        scored = det.score_many(x, assets=assets, times=times, max_gap=3.0)
        det.learn_many(scored)
        out.append(scored)
    return out


def test_the_fit_leaves_each_asset_its_latest_records_and_names_features() -> None:
    det = fitted(4)
    assert set(det.inputs.store.slots) == {"p1", "p2"} and det.model.n_channels == 8, "x, d, sd, rd"
    x, assets, times = batches(1)[0]
    scored = det.score_many(x, assets=assets, times=times, max_gap=3.0)
    assert scored.input_share is not None and scored.input_share.shape == (64, 8)
    np.testing.assert_allclose(scored.channel_share, scored.input_share.reshape(64, 4, 2).sum(1), rtol=1e-6)
    assert scored.names(CHANNELS)[scored.top_channels(0, 1)[0][0]] in det.inputs.names


def test_a_restart_mid_stream_scores_as_the_uninterrupted_run(tmp_path: Path) -> None:
    """Checkpointed after three batches and restored, the model and each asset's context go on as if nothing
    happened: the same scores and decisions, at the same batch boundaries."""
    parts = batches(1)
    base = fitted(4)
    save_detector(base, tmp_path / "base")
    straight = run(load_detector(tmp_path / "base"), parts)
    first = load_detector(tmp_path / "base")
    run(first, parts[:3])
    ckpt = Checkpointer(CheckpointSettings(dir=tmp_path / "ckpt"), CHANNELS)
    ckpt.save(ModelState("global", first, learned_offsets={"in": {0: 192}}))
    restored = ckpt.restore("global")
    assert restored.detector is not None and restored.detector.inputs.store.tick == first.inputs.store.tick
    resumed = run(restored.detector, parts[3:])
    for a, b in zip(straight[3:], resumed):
        np.testing.assert_array_equal(a.nll, b.nll)
        np.testing.assert_array_equal(a.is_anomaly, b.is_anomaly)
        np.testing.assert_array_equal(a.input_share, b.input_share)


def test_a_snapshot_carries_the_context() -> None:
    from clients_kit import MemorySnapshotTopic

    from streammoe.state.snapshot import SnapshotWriter, read_latest

    det = fitted(3)
    run(det, batches(2)[:2])
    topic = MemorySnapshotTopic(partitions=1)
    SnapshotWriter(topic).write(ModelState("s", det, learned_offsets={"in": {0: 128}}))
    states, _ = read_latest(topic, CHANNELS)
    twin = states["s"].detector
    assert twin is not None
    a, b = det.inputs.state(), twin.inputs.state()
    assert a["assets"] == b["assets"] and torch.equal(a["values"].nan_to_num(-7), b["values"].nan_to_num(-7))
    x, assets, times = batches(2)[2]
    np.testing.assert_array_equal(
        det.score_many(x, assets=assets, times=times, max_gap=3.0).nll,
        twin.score_many(x, assets=assets, times=times, max_gap=3.0).nll,
    )


def test_a_format_2_model_loads_without_context_and_saves_as_the_current_format(tmp_path: Path) -> None:
    shutil.copytree(DATA / "model-v2", tmp_path / "m")
    det = load_detector(tmp_path / "m", device="cpu")
    save_detector(det, tmp_path / "again")
    again = load_detector(tmp_path / "again")
    assert (tmp_path / "again" / "context.pt").is_file() and again.config.context.window == 1


def test_an_alert_names_the_feature_that_carries_the_misfit_and_validates() -> None:
    import jsonschema

    from streammoe.config import AlertSettings
    from streammoe.wire.alerts import Origin, alert_schema, build_alert

    det = fitted(4)
    x, assets, times = batches(1)[0]
    x[20:30, 0] = x[20, 0] + np.sin(np.arange(10) * 2.5)  # fast swings inside the range: its change misfits
    scored = det.score_many(x, assets=assets, times=times, max_gap=3.0)
    features = set()
    for row in range(len(x)):
        alert = build_alert(
            scored,
            row,
            asset=str(assets[row]),
            ts=row,
            origin=Origin("in", 0, row),
            channels=CHANNELS,
            expert_status=det.expert_status(),
            model_version="v",
            settings=AlertSettings(),
        )
        jsonschema.validate(alert, alert_schema())
        for entry in alert["top_channels"]:
            assert entry["channel"] in CHANNELS
            if "feature" in entry:
                features.add(entry["feature"])
                assert entry["input"] in det.inputs.names and split_name(entry["input"])[1] == entry["feature"]
    assert features, "some misfit is carried by a feature"
