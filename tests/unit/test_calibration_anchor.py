"""The fit's tail as each mode's anchor: clipped online updates ratchet an unanchored tail down; an anchored one
never narrows below what the fit measured, and still widens when its mode's scores do."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import torch

from streammoe.model.calibration import ModeCalibration
from streammoe.model.config import ModelConfig
from streammoe.model.detector import MixtureDetector
from streammoe.model.fitting import MIN_ROWS_FOR_HOLDOUT
from streammoe.state.persistence import load_detector

DATA = Path(__file__).resolve().parent.parent / "data"
TRUE_Q99 = 21.8  # of gamma_scores: 5 + 2 x Gamma(3)'s 99 % quantile (8.41)


def modes(n: int, k: int = 0) -> torch.Tensor:
    return torch.full((n,), k, dtype=torch.long)


def gamma_scores(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 5.0 + 2.0 * -torch.log(torch.rand((n, 3), generator=g)).sum(1)


def stream_clipped(cal: ModeCalibration, seed: int) -> list[float]:
    """40 batches of a stationary null entering as calibrate_capped enters them (clipped at the 0.01 score);
    the 0.01 score before each batch."""
    caps = []
    for i in range(40):
        cap = cal.score_at(modes(1), math.log(1e-2))
        caps.append(float(cap))
        cal.update(modes(256), torch.minimum(gamma_scores(256, 100 * seed + i + 1), cap))
    return caps


def test_clipping_ratchets_an_unanchored_tail_down_and_the_anchor_holds_it() -> None:
    fresh = gamma_scores(200_000, 999)
    far, caps = {}, {}
    for anchored in (False, True):
        cal = ModeCalibration(1, 2048)
        cal.update(modes(240), gamma_scores(240, 3))  # a holdout of 240 whose 0.01 score lies above the truth
        if anchored:
            cal.pin()
        caps[anchored] = stream_clipped(cal, 3)
        far[anchored] = float((cal.log_p_value(modes(len(fresh)), fresh) < math.log(1e-3)).float().mean())
    for c in caps.values():  # nothing enters above the 0.01 score, so it can only fall: the ratchet
        assert all(b <= a + 1e-4 for a, b in itertools.pairwise(c))
    assert caps[False][-1] < TRUE_Q99 - 0.8, "unanchored: walked under the true 0.01 score"
    assert caps[True][-1] == caps[True][0] > TRUE_Q99
    assert far[False] > 2e-3 and far[True] <= 2e-3, far


def test_the_anchored_p_value_is_the_larger_of_the_two_tails_and_stays_monotone() -> None:
    anchored, live = ModeCalibration(1, 512), ModeCalibration(1, 512)
    for cal in (anchored, live):
        cal.update(modes(400), gamma_scores(400, 1))
    anchored.pin()
    grid = torch.linspace(0, 80, 400)
    for step, spread in enumerate((0.8, 1.0, 1.5)):  # the live tail narrows, stays, then widens past the anchor
        for cal in (anchored, live):
            cal.update(modes(512), 5.0 + spread * (gamma_scores(512, 10 + step) - 5.0))
        a, b = anchored.log_p_value(modes(400), grid), live.log_p_value(modes(400), grid)
        assert torch.all(a >= b - 1e-6) and torch.all(a[1:] <= a[:-1] + 1e-6)
    wide = torch.tensor([40.0, 60.0])
    torch.testing.assert_close(anchored.log_p_value(modes(2), wide), live.log_p_value(modes(2), wide))
    torch.testing.assert_close(anchored.score_at(modes(1), math.log(1e-3)), live.score_at(modes(1), math.log(1e-3)))


def test_pin_anchors_only_calibrated_buffers_and_reset_mode_drops_the_anchor() -> None:
    cal = ModeCalibration(3, 256)
    cal.update(modes(200, 1), gamma_scores(200, 2))
    cal.pin()
    assert torch.isfinite(cal.anchor[:, 0]).tolist() == [False, True, False, True]  # mode 1 and the pool
    cal.reset_mode(1)
    assert not torch.isfinite(cal.anchor[1, 0]) and torch.isfinite(cal.anchor[3, 0])


def test_a_fit_anchors_every_mode_it_calibrated_and_a_short_warm_up_none() -> None:
    rng = np.random.default_rng(0)
    cfg = ModelConfig(k_max=3, hidden=8, latent=2, fit_steps=60, n_samples=2)
    for rows in (MIN_ROWS_FOR_HOLDOUT, 600):
        det = MixtureDetector(3, cfg, device="cpu")
        det.fit(rng.normal(0, 1, (rows, 3)).astype(np.float32))
        cal, active = det.model.calibration, det.model.active
        n, anchored = cal.n_reference(), torch.isfinite(cal.anchor[:, 0])
        assert bool((n[:-1][active] > 0).all()) and n[-1] > 0
        if rows >= MIN_ROWS_FOR_HOLDOUT:
            assert torch.equal(anchored, n > 0)
        else:  # its experts keep maturing online: its calibration follows them
            assert not anchored.any()


def test_a_format_3_model_loads_unanchored_and_scores_as_it_did() -> None:
    """tests/data/model-v3 was saved by the format-3 code (no anchors): it scores its probe exactly as then."""
    det = load_detector(DATA / "model-v3", device="cpu", channels=["flow", "pressure", "temp"])
    assert not torch.isfinite(det.model.calibration.anchor[:, 0]).any()
    probe = np.load(DATA / "model-v3-probe.npz")
    scored = det.score_many(probe["x"])
    np.testing.assert_array_equal(scored.nll, probe["nll"])
    np.testing.assert_array_equal(scored.log_p_value, probe["log_p"])
    np.testing.assert_array_equal(scored.is_anomaly, probe["is_anomaly"])
