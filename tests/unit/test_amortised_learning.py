"""Amortised learning (ModelConfig.learn_every, learn_min_rows): the experts' gradient step runs on every Nth batch
and once enough records were scored since the last one, drawing from every batch since the last step; everything
else learns from every batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streammoe.model.config import ModelConfig
from streammoe.model.detector import MixtureDetector
from streammoe.model.learning import StepResult
from streammoe.testing.machine import Machine

C = 4


MACHINE = Machine(C, factors=0, noise=1.0)  # white noise around the origin


def normal_rows(n: int, seed: int) -> np.ndarray:
    return MACHINE.rows(seed, n)


def detector(learn_every: int, learn_min_rows: int = 1) -> MixtureDetector:
    cfg = ModelConfig(
        learn_min_rows=learn_min_rows,
        k_max=3,
        hidden=8,
        latent=2,
        fit_steps=50,
        learn_every=learn_every,
        learn_batch=1000,
        replay_per_step=0,
        learn_threshold=1e-3,
        threshold=1e-3,
    )
    det = MixtureDetector(C, cfg, device="cpu")
    det.fit(normal_rows(800, seed=0), k=1)
    return det


def stepping(det: MixtureDetector, monkeypatch: pytest.MonkeyPatch, rows: int) -> tuple[list, list, list]:
    """Seven batches of `rows` normal records: rows each step saw, records learned and whether it stepped per batch."""
    seen_rows: list[int] = []

    def step(x, resp=None, elog_pi=None, rates=None):  # type: ignore[no-untyped-def]
        seen_rows.append(x.shape[0])
        return StepResult(True, 0.0)

    monkeypatch.setattr(det.learner, "step", step)
    learned, stepped = [], []
    for b in range(7):
        report = det.learn_many(det.score_many(normal_rows(rows, seed=10 + b)))
        learned.append(report.learned)
        stepped.append(report.stepped)
    return seen_rows, learned, stepped


@pytest.mark.parametrize("learn_every", [1, 3])
def test_steps_come_every_nth_batch_and_draw_from_every_batch_since_the_last(learn_every, monkeypatch) -> None:
    det = detector(learn_every)
    seen_rows, learned, stepped = stepping(det, monkeypatch, 40)
    assert all(n > 30 for n in learned)  # nearly every normal record is learnable
    want = [b % learn_every == 0 for b in range(7)]  # the first batch steps, then every Nth
    assert stepped == want
    assert det.counters["steps"] == sum(want) == len(seen_rows)
    # Each step sees the learnable rows of the batches since the previous step (learn_batch is not binding).
    ends = [b for b in range(7) if want[b]]
    starts = [0] + [e + 1 for e in ends[:-1]]
    assert seen_rows == [sum(learned[s : e + 1]) for s, e in zip(starts, ends)]
    assert det.counters["records_learned"] == sum(learned)


def test_amortised_batches_still_feed_calibration_weights_replay_and_novelty_memory() -> None:
    det = detector(learn_every=4)
    model = det.model
    calib, memory_seen, replay_seen = (
        int(model.calibration.count[-1]),
        int(model.memory.seen),
        int(model.replay.seen.sum()),
    )
    gamma = model.weights.gamma.clone()
    for b in range(3):  # batch 0 steps, batches 1 and 2 are amortised
        det.learn_many(det.score_many(normal_rows(50, seed=20 + b)))
    assert int(model.calibration.count[-1]) == calib + 150
    assert int(model.memory.seen) == memory_seen + 150
    learned = det.counters["records_learned"]
    assert learned > 120 and int(model.replay.seen.sum()) == replay_seen + learned
    assert not torch.equal(model.weights.gamma, gamma)
    assert det.counters["steps"] == 1


def test_a_step_waits_until_learn_min_rows_records_were_scored_since_the_last(monkeypatch) -> None:
    """40-record batches and learn_min_rows 100: the first batch steps, then every third (120 records since the
    last step), each step drawing from the batches since the last; batches as large as the bound step every time."""
    det = detector(learn_every=1, learn_min_rows=100)
    seen_rows, learned, stepped = stepping(det, monkeypatch, 40)
    assert stepped == [True, False, False, True, False, False, True]
    assert seen_rows == [learned[0], sum(learned[1:4]), sum(learned[4:7])]
    assert det.counters["records_learned"] == sum(learned) and det.counters["steps"] == 3
    det = detector(learn_every=1, learn_min_rows=100)
    _, _, stepped = stepping(det, monkeypatch, 100)
    assert all(stepped)


def test_the_default_bound_never_delays_a_step_of_offline_scoring() -> None:
    """`streammoe score` (and the quality tracks through it) scores batches of `--batch-size` records: the default
    bound must not delay their steps, so offline results do not depend on it."""
    from streammoe.cli import build_parser

    args = build_parser("score").parse_args(["score", "--data", "x.csv", "--out", "s.csv"])
    assert ModelConfig().learn_min_rows <= args.batch_size


@pytest.mark.parametrize("window", [1, 3])
def test_the_host_count_of_usable_rows_is_the_device_s(window: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """learn_many counts the usable rows once, on the host, for the cadence and the novelty bookkeeping (retire,
    merge): with non-finite, out-of-range and partial rows, and with a context (missing channels make features
    missing), that count is the number of rows the device's `usable_rows` marks."""
    import streammoe.model.detector as detector_module

    cfg = ModelConfig(k_max=3, hidden=8, latent=2, fit_steps=30, context={"window": window})
    det = MixtureDetector(C, cfg, device="cpu")
    det.fit(normal_rows(400, seed=0), k=1)
    counted: list[int] = []
    real = detector_module.retire_idle

    def retire_idle(model, below_floor, n_records):  # type: ignore[no-untyped-def]
        counted.append(n_records)
        return real(model, below_floor, n_records)

    monkeypatch.setattr(detector_module, "retire_idle", retire_idle)
    rng = np.random.default_rng(3)
    for seed in range(4):
        x = normal_rows(60, seed=10 + seed)
        x[rng.random(60) < 0.1, 0] = np.nan
        x[rng.random(60) < 0.1, 1] = 1e9  # out of range
        missing = rng.random((60, C)) < 0.05
        scored = det.score_many(x, missing=missing)
        assert scored.usable_rows is not None
        want = int(scored.usable_rows.sum())
        det.learn_many(scored)
        assert counted[-1] == want and 0 < want < 60
