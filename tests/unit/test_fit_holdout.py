"""How a fit of 2000 rows or more holds out the rows it calibrates on (model/fitting.py): a random share
(`holdout_share`, at least `holdout_rows` up to twice the share), or blocks in time (`holdout_blocks`) with the
rows within `holdout_guard` of them training nothing (-1: the guard from the data's autocorrelation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streammoe.model.config import ModelConfig
from streammoe.model.detector import MixtureDetector
from streammoe.model.fitting import (
    HOLDOUT_FRACTION,
    block_length,
    correlation_lag,
    guarded_blocks,
    heldout_rows,
)

C = 4
N = 2400


def test_blocks_hold_out_a_tenth_in_contiguous_runs_spread_over_the_fit() -> None:
    hold, train = guarded_blocks(N, 5, 0, torch.device("cpu"))
    assert len(hold) == int(N * HOLDOUT_FRACTION) and len(hold) + len(train) == N
    assert set(hold.tolist()).isdisjoint(train.tolist())
    starts = [int(i) for j, i in enumerate(hold) if j == 0 or int(hold[j - 1]) != int(i) - 1]
    assert starts == [432, 912, 1392, 1872, 2352]  # five runs of 48 rows, from the fit's first part to its end


def marked_rows(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of unit noise, but ten times narrower in the rows that five blocks would hold out; and fresh rows."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (N, C)).astype(np.float32)
    hold, _ = guarded_blocks(N, 5, 0, torch.device("cpu"))
    x[hold.numpy()] *= 0.1
    return x, rng.normal(0, 1, (500, C)).astype(np.float32)


def far_on_fresh(blocks: int) -> float:
    x, fresh = marked_rows(0)
    det = MixtureDetector(
        C,
        ModelConfig(k_max=2, hidden=8, latent=2, fit_steps=200, holdout_blocks=blocks, holdout_share=0.1),
        device="cpu",
    )
    det.fit(x, k=1)
    return float(det.score_many(fresh).is_anomaly.mean())


def test_the_fit_calibrates_on_the_blocks_it_holds_out() -> None:
    """With blocks, the calibration measured exactly the narrow rows, so fresh rows of the rest alarm; a random
    tenth is mostly rows like them, so they pass."""
    assert far_on_fresh(5) > 0.3
    assert far_on_fresh(0) < 0.02


@pytest.mark.parametrize(
    ("n", "blocks", "guard", "share"),
    [(2400, 24, 5, 0.1), (2400, 10, 24, 0.1), (4000, 40, 0, 0.25), (3001, 7, 500, 0.2)],
)
def test_guarded_blocks_hold_the_share_and_keep_every_training_row_a_guard_away(n, blocks, guard, share) -> None:
    hold, train = guarded_blocks(n, blocks, guard, torch.device("cpu"), share)
    length = block_length(n, blocks, share)
    every = round(1 / share)
    assert len(hold) == sum(1 for i in range(n) if (i // length) % every == every - 1)
    assert abs(len(hold) / n - share) < 0.02 or n % (every * length) >= length  # the share, up to the last period
    assert set(hold.tolist()).isdisjoint(train.tolist())
    g = min(guard, length)
    gap = (train[:, None] - hold[None, :]).abs().min()
    assert int(gap) == g + 1  # no training row within the guard, and the rows just past it do train
    assert len(hold) + len(train) <= n - (g > 0)  # the guarded rows are in neither


def ar1(a: float, n: int, channels: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    e = rng.normal(0, 1, (n, channels))
    x = np.zeros_like(e)
    for t in range(1, n):
        x[t] = a * x[t - 1] + e[t]
    return torch.as_tensor(x)


def test_the_guard_from_the_autocorrelation_is_none_for_independent_rows_and_long_for_a_slow_process() -> None:
    rng = np.random.default_rng(0)
    assert correlation_lag(torch.as_tensor(rng.normal(0, 1, (4000, 8))), 200) == 0
    assert 6 <= correlation_lag(ar1(0.9, 4000, 4, 1), 200) <= 13  # -1 / ln 0.9 = 9.5
    assert 60 <= correlation_lag(ar1(0.99, 8000, 4, 2), 500) <= 130  # -1 / ln 0.99 = 99.5
    assert correlation_lag(ar1(0.99, 8000, 4, 2), 40) == 40  # capped (at the block length in a fit)
    constant = torch.cat([ar1(0.9, 4000, 2, 3), torch.ones(4000, 3)], dim=1)
    assert correlation_lag(constant, 200) == correlation_lag(constant[:, :2], 200)  # constant channels ignored


def indexed_rows(n: int) -> np.ndarray:
    """Slow AR(1) rows whose first channel is the row's own index, so a replayed record names its row."""
    x = ar1(0.98, n, C, 4).numpy().astype(np.float32)
    x[:, 0] = np.arange(n)
    return x


@pytest.mark.parametrize("guard", [0, 7, -1])
def test_a_fit_trains_on_no_row_within_the_guard_of_a_held_out_row(guard: int) -> None:
    n, blocks = 2400, 24
    det = MixtureDetector(
        C,
        ModelConfig(
            k_max=2, hidden=8, latent=2, fit_steps=50, holdout_blocks=blocks, holdout_guard=guard, holdout_share=0.1
        ),
        device="cpu",
    )
    x = indexed_rows(n)
    det.fit(x, k=1)
    hold, _ = guarded_blocks(n, blocks, 0, torch.device("cpu"))
    replayed = det.model.replay.records[0, : int(det.model.replay.seen[0].clamp(max=det.model.replay.size))]
    rows = replayed[:, 0].round().long()
    gap = int((rows[:, None] - hold[None, :]).abs().min())
    g = correlation_lag(det.model.scaler.transform(torch.as_tensor(x)), block_length(n, blocks)) if guard < 0 else guard
    if guard < 0:
        assert g >= 5  # a slow process gets a guard of its own
    assert gap == g + 1  # no replayed (training) row within the guard, and rows just past it do train
    assert int(det.model.calibration.count[-1]) == len(hold)


def test_a_long_fit_holds_out_a_share_but_at_least_holdout_rows_up_to_twice_the_share() -> None:
    assert [heldout_rows(n, 0.1, 800) for n in (2000, 2400, 4000, 6000, 8640, 23694)] == [400, 480, 800, 800, 864, 2369]
    assert [heldout_rows(n, 0.1, 0) for n in (2400, 23694)] == [240, 2369]  # 0: the share alone


def test_the_rows_held_out_are_the_settings_and_the_split_is_the_same_for_a_seed() -> None:
    x = indexed_rows(2400)
    counts, anchors = [], []
    for share, rows in ((0.1, 0), (0.1, 800), (0.25, 0), (0.25, 0)):
        cfg = ModelConfig(k_max=2, hidden=8, latent=2, fit_steps=50, holdout_share=share, holdout_rows=rows)
        det = MixtureDetector(C, cfg, device="cpu")
        det.fit(x, k=1)
        counts.append(int(det.model.calibration.count[-1]))
        anchors.append(det.model.calibration.anchor[-1].clone())
    assert counts == [240, 480, 600, 600]
    assert torch.equal(anchors[2], anchors[3])


def test_a_model_saved_before_the_holdout_settings_loads_with_a_tenth_held_out_unguarded(tmp_path) -> None:
    """tests/data/model-v2's config.json predates the holdout settings: a refit from its config holds
    out a random tenth as it did, whatever the defaults; a save writes both, so a later model keeps its own."""
    import json
    from pathlib import Path

    from streammoe.state.persistence import load_detector, save_detector

    v2 = Path(__file__).resolve().parent.parent / "data" / "model-v2"
    fields = {"holdout_share", "holdout_rows", "holdout_guard"}
    assert not fields & set(json.loads((v2 / "config.json").read_text()))
    old = load_detector(v2, device="cpu", channels=["flow", "pressure", "temp"]).config
    assert (old.holdout_share, old.holdout_rows, old.holdout_guard, old.holdout_blocks) == (0.1, 0, 0, 0)
    assert ModelConfig().holdout_rows > 0  # the default differs: without the migration a refit would change
    save_detector(load_detector(v2, device="cpu"), tmp_path / "m", durable=False)
    written = json.loads((tmp_path / "m" / "config.json").read_text())
    assert (written["holdout_share"], written["holdout_rows"], written["holdout_guard"]) == (0.1, 0, 0)
