"""The per-expert online step size (ModelConfig.online_lr_count): an expert of effective count n moves by
learning_rate x min(1, online_lr_count / n); off (0), every expert moves at learning_rate as before."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streammoe.model.config import ModelConfig
from streammoe.model.detector import MixtureDetector
from streammoe.model.learning import expert_rates
from streammoe.testing.machine import Machine

C = 4
MACHINE = Machine(C, factors=0, noise=1.0)


def detector(online_lr_count: float) -> MixtureDetector:
    cfg = ModelConfig(k_max=3, hidden=8, latent=2, fit_steps=50, online_lr_count=online_lr_count, replay_per_step=0)
    det = MixtureDetector(C, cfg, device="cpu")
    det.fit(MACHINE.rows(0, 800), k=1)
    return det


def weights(det: MixtureDetector) -> list[torch.Tensor]:
    return [p.detach().clone() for p in det.model.experts.parameters()]


def test_rates_fall_with_the_effective_count_and_never_exceed_one() -> None:
    det = detector(1000.0)
    det.model.weights.gamma.copy_(torch.tensor([4000.0, 500.0, 0.0], dtype=torch.float64))
    assert expert_rates(det.model).tolist() == pytest.approx([0.25, 1.0, 1.0])
    assert expert_rates(detector(0.0).model) is None


def test_an_online_step_moves_each_expert_by_its_rate() -> None:
    """Two detectors in the same state take the same first online step; with the schedule on, the fitted
    expert's move is its rate times the unscheduled move (Adam's moments alike), to float precision."""
    plain, scheduled = detector(0.0), detector(100.0)
    before = weights(plain)
    assert all(torch.equal(a, b) for a, b in zip(before, weights(scheduled)))
    batch = MACHINE.rows(1, 256)
    for det in (plain, scheduled):
        report = det.learn_many(det.score_many(batch))
        assert report.stepped and report.learned > 200
    rate = float(expert_rates(scheduled.model)[0])  # as the step saw it: the weights learn this batch first
    assert 0.05 < rate < 0.2  # about 720 fit rows and this batch: the fitted expert steps at a fraction
    moved = [(a - b)[0] for a, b in zip(weights(plain), before)]
    moved_scheduled = [(a - b)[0] for a, b in zip(weights(scheduled), before)]
    assert sum(float(m.abs().sum()) for m in moved) > 0
    for m, s in zip(moved, moved_scheduled):
        torch.testing.assert_close(s, rate * m, rtol=1e-4, atol=1e-7)


def test_a_young_expert_steps_at_the_full_rate() -> None:
    """An expert whose effective count is under online_lr_count (a mode just grown) learns as fast as before."""
    plain, scheduled = detector(0.0), detector(1e6)
    assert float(expert_rates(scheduled.model)[0]) == 1.0
    batch = MACHINE.rows(2, 256)
    for det in (plain, scheduled):
        det.learn_many(det.score_many(batch))
    for a, b in zip(weights(plain), weights(scheduled)):
        assert torch.equal(a, b)


def test_scores_stay_finite_over_a_stream_with_the_schedule_on() -> None:
    det = detector(300.0)
    for i in range(5):
        scored = det.score_many(MACHINE.rows(10 + i, 256))
        det.learn_many(scored)
    assert np.isfinite(np.asarray(det.score_many(MACHINE.rows(20, 64)).nll)).all()
