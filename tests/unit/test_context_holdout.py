"""The fit's held-out rows with a time context (context/holdout.py): no held-out row's window shares a record with
a training row's, checked against windows listed the slow way; short fits and short assets; the fit uses it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streammoe.context.holdout import block_split
from streammoe.context.settings import ContextConfig
from streammoe.model.config import ModelConfig
from streammoe.model.detector import MixtureDetector, context_split


def windows(assets: np.ndarray, w: int) -> list[set[int]]:
    """Row i's window: the rows of its asset up to w - 1 before it, and itself."""
    past: dict[str, list[int]] = {}
    out = []
    for i, a in enumerate(assets):
        past[a] = (past.get(a, []) + [i])[-w:]
        out.append(set(past[a]))
    return out


@pytest.mark.parametrize(("n", "short"), [(5000, False), (900, True)])
def test_no_held_out_window_shares_a_record_with_a_training_window(n: int, short: bool) -> None:
    rng = np.random.default_rng(0)
    assets = rng.choice(["a", "b", "c"], n, p=[0.5, 0.3, 0.2])
    w = 6
    hold, guard = block_split(assets, n, w, short)
    train = ~hold & ~guard
    win = windows(assets, w)
    held = set().union(*(win[i] for i in np.flatnonzero(hold)))
    trained = set().union(*(win[i] for i in np.flatnonzero(train)))
    assert not held & trained
    assert 0.05 < hold.mean() < 0.3 and guard.mean() < 0.05
    for a in "abc":  # every asset is held out somewhere, and (short) at its end
        assert hold[assets == a].any()
        if short:
            assert hold[np.flatnonzero(assets == a)[-1]]


def test_assets_too_short_for_blocks_are_held_out_whole() -> None:
    """A warm-up of many assets, few rows each: one asset in ten is held out whole (its rows span the fit's whole
    time, and windows never cross assets), none guarded."""
    assets = np.tile([f"p{i:03d}" for i in range(100)], 30)  # 3000 rows, interleaved, 30 per asset
    hold, guard = block_split(assets, len(assets), 10, short=False)
    assert hold.mean() == pytest.approx(0.1) and not guard.any()
    assert len(set(assets[hold])) == 10 and hold[:100].sum() == 10 and hold[-100:].sum() == 10


def test_a_fit_with_context_calibrates_on_blocks_and_without_context_as_before() -> None:
    x = np.random.default_rng(1).normal(size=(2400, 2)).astype(np.float32)
    det = MixtureDetector(2, ModelConfig(k_max=2, hidden=8, latent=2, fit_steps=60, context=ContextConfig(window=5)))
    rows = np.ones(2400, bool)
    rows[:4] = False  # the first rows have no whole context
    split = context_split(det.config, None, torch.from_numpy(rows))
    assert split is not None and context_split(ModelConfig(), None, torch.from_numpy(rows)) is None
    hold, train = split
    assert len(hold) == 200 and len(np.intersect1d(hold, train)) == 0 and len(hold) + len(train) < 2396
    assert int((np.diff(hold.numpy()) > 1).sum()) == 1, "two blocks of 100 rows (blocks 9 and 19 of 24)"
    det.fit(x)
    assert int(det.model.calibration.count[-1]) == 200, "the pooled buffer holds the held-out rows' scores"
