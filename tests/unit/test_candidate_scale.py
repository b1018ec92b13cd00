"""A new expert's scale per channel is never below the known experts' typical one (`candidate_scale_floor`): a
channel that happens to be quiet in the few hundred records it was trained on, and moves later as it always
did, must not make the new mode alarm on every record once it moves."""

from __future__ import annotations

import numpy as np
import torch
from modes_kit import stream

from streammoe.model.config import ModelConfig, NoveltyConfig
from streammoe.model.detector import MixtureDetector
from streammoe.novelty.growth import _train_candidate, candidate_scale_floor

C = 10
B = np.zeros(C)
B[:6] = [300.0, -250.0, 120.0, 60.0, 45.0, -80.0]  # six setpoints moved by tens to hundreds of spreads


def fitted(floor: float) -> MixtureDetector:
    torch.manual_seed(0)
    cfg = ModelConfig(fit_steps=400, n_samples=4, novelty=NoveltyConfig(candidate_scale_floor=floor))
    det = MixtureDetector(C, cfg, device="cpu")
    det.fit(np.random.default_rng(0).normal(0, 1, (2400, C)).astype(np.float32))
    return det


def test_a_candidate_takes_at_least_the_known_experts_median_scale() -> None:
    det = fitted(1.0)
    x = torch.as_tensor(np.random.default_rng(1).normal(0, 1, (300, C)).astype(np.float32) + B.astype(np.float32))
    x[:, 7] = 5.0  # constant in the candidate's records
    floor = candidate_scale_floor(det.model)
    assert floor is not None and 0.8 < float(floor[7]) < 1.2
    cand = _train_candidate(det.model, x, det.generator)
    assert float(cand.scale[0, 7]) >= float(floor[7]) - 1e-6
    det.model.config.novelty.candidate_scale_floor = 0.0
    assert candidate_scale_floor(det.model) is None
    assert float(_train_candidate(det.model, x, det.generator).scale[0, 7]) < 0.1  # its own spread: the floor


def new_mode_alerts(floor: float) -> tuple[float, int]:
    """Share of alerts on the new mode's records 200-700 after channel 7 starts to move, and how many experts were
    added: channel 7 is quiet (a constant) for the new mode's first 500 records (the new expert is added from
    them), then moves as it did in the fitted mode."""
    det = fitted(floor)
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(0, 1, (800, C)), rng.normal(0, 1, (2500, C)) + B]).astype(np.float32)
    x[800:1300, 7] = 0.0
    flags, events = stream(det, x, batch=64)
    added = [e.last_ref - 10_000 for e in events if e.kind == "mode_added"]
    assert added and added[0] < 1300, "adopted while channel 7 was still quiet"
    return float(flags[1500:2000].mean()), len(added)


def test_a_channel_quiet_while_the_new_expert_trained_does_not_keep_it_alarming() -> None:
    share, added = new_mode_alerts(1.0)
    assert share < 0.05 and added == 1
    unfloored, added = new_mode_alerts(0.0)
    # Without the floor the new expert's spread of channel 7 is the variance floor: most of its records alarm
    # until a second expert is grown for the same mode.
    assert unfloored > 0.3 and added == 2
