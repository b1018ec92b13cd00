"""ModelConfig.holdout_blocks: a long fit may calibrate on blocks in time (model/fitting.py, holdout_blocks)
instead of a random tenth of its rows; off (0) by default."""

from __future__ import annotations

import numpy as np
import torch

from streammoe.model.config import ModelConfig
from streammoe.model.detector import MixtureDetector
from streammoe.model.fitting import HOLDOUT_FRACTION, holdout_blocks

C = 4
N = 2400


def test_blocks_hold_out_a_tenth_in_contiguous_runs_spread_over_the_fit() -> None:
    hold, train = holdout_blocks(N, 5, torch.device("cpu"))
    assert len(hold) == int(N * HOLDOUT_FRACTION) and len(hold) + len(train) == N
    assert set(hold.tolist()).isdisjoint(train.tolist())
    starts = [int(i) for j, i in enumerate(hold) if j == 0 or int(hold[j - 1]) != int(i) - 1]
    assert starts == [432, 912, 1392, 1872, 2352]  # five runs of 48 rows, from the fit's first part to its end


def marked_rows(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of unit noise, but ten times narrower in the rows that five blocks would hold out; and fresh rows."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (N, C)).astype(np.float32)
    hold, _ = holdout_blocks(N, 5, torch.device("cpu"))
    x[hold.numpy()] *= 0.1
    return x, rng.normal(0, 1, (500, C)).astype(np.float32)


def far_on_fresh(blocks: int) -> float:
    x, fresh = marked_rows(0)
    det = MixtureDetector(
        C, ModelConfig(k_max=2, hidden=8, latent=2, fit_steps=200, holdout_blocks=blocks), device="cpu"
    )
    det.fit(x, k=1)
    return float(det.score_many(fresh).is_anomaly.mean())


def test_the_fit_calibrates_on_the_blocks_it_holds_out() -> None:
    """With blocks, the calibration measured exactly the narrow rows, so fresh rows of the rest alarm; a random
    tenth is mostly rows like them, so they pass."""
    assert far_on_fresh(5) > 0.3
    assert far_on_fresh(0) < 0.02
