"""Which scores enter the calibration clipped, always to the learning threshold's score: those past it by default,
those past `clip_threshold`'s score when set (records between the two are then measured, not clipped)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from streammoe.model.config import ModelConfig
from streammoe.model.detector import MixtureDetector


def test_records_between_the_thresholds_enter_the_calibration_clipped_only_by_default() -> None:
    rng = np.random.default_rng(0)
    fit = rng.normal(0, 1, (2000, 4)).astype(np.float32)
    wide = rng.normal(0, 1.4, (512, 4)).astype(np.float32)  # wider than the fit: many records past p = 0.01
    tops = {}
    for clip in (None, 1e-3):
        torch.manual_seed(0)
        det = MixtureDetector(4, ModelConfig(k_max=2, fit_steps=100, n_samples=2, clip_threshold=clip), device="cpu")
        det.fit(fit)
        cal = det.model.calibration
        k = int(det.model.active.nonzero()[0])
        cap_01 = float(cal.score_at(torch.tensor([k]), math.log(1e-2))[0])
        scored = det.score_many(wide)
        between = (scored.log_p_value < math.log(1e-2)) & (scored.log_p_value >= math.log(1e-3)) & (scored.mode == k)
        assert between.sum() > 10
        n_before, m = int(cal.n_reference()[k]), int((scored.mode == k).sum())
        assert n_before + m <= cal.size
        det.model.config.novelty.settle_records = 0  # settling would let a new expert's records in unclipped
        cap_001 = float(cal.score_at(torch.tensor([k]), math.log(1e-3))[0])
        past = int(((scored.nll > cap_001) & (scored.mode == k)).sum())
        assert past > 5
        det.learn_many(scored)
        entered = cal.scores[k, n_before : n_before + m]
        tops[clip] = (float(entered.max()), cap_01)
        # Records past the alert threshold's score enter at the learning threshold's, whatever the setting.
        assert int((entered - cap_01).abs().lt(1e-4).sum()) >= past
    assert tops[None][0] <= tops[None][1] + 1e-4, "default: nothing above the learning threshold's score"
    assert tops[1e-3][0] > tops[1e-3][1] + 0.5, "clip at 1e-3: records past the 0.01 score were measured"


def test_a_clip_above_the_learning_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="clip_threshold must be <= learn_threshold"):
        ModelConfig(clip_threshold=0.05)
