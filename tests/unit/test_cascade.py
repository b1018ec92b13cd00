"""Cascade scoring (model/cascade.py): the full pass's decisions and breakdown on every rescored record, the
screen's misses within the measured rate, and a calibration that holds full-pass scores only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from streammoe.model.cascade import MAX_CENSORED, censored_share
from streammoe.model.config import ModelConfig
from streammoe.model.detector import MixtureDetector, calibrate_capped
from streammoe.model.scoring import ScoredBatch
from streammoe.testing.machine import Machine

C, MODES = 8, 4
# Measured (benchmarks/cascade.py, docs/model.md): 0 disagreements in 217 245 records; the bound the cascade is
# held to is 1 in 10^4 records.
RATE = 1e-4


def stream(n: int, seed: int) -> np.ndarray:
    """The machine's records, 3 % shifted on one channel by 0-12 of its spreads: many land near the threshold."""
    x = Machine(C, MODES, factors=2, spread=4.0, shape_seed=7).rows(seed, n).astype(np.float32)
    rng = np.random.default_rng(seed)
    planted = rng.random(n) < 0.03
    ch = rng.integers(0, C, n)
    x[planted, ch[planted]] += rng.uniform(0, 12, planted.sum()) * x.std(0)[ch[planted]]
    return x


@pytest.fixture(scope="module")
def fitted() -> MixtureDetector:
    cfg = ModelConfig(k_max=6, hidden=32, latent=4, fit_steps=300, min_expert_weight=0.0)
    det = MixtureDetector(C, cfg, device="cpu")
    det.fit(Machine(C, MODES, factors=2, spread=4.0, shape_seed=7).rows(1, 6000).astype(np.float32), k=MODES)
    return det


def both(det: MixtureDetector, x: np.ndarray) -> tuple[ScoredBatch, ScoredBatch]:
    """The batch scored with every record on the full pass, then through the cascade, from one generator state."""
    state = det.generator.get_state()
    det.config.cascade.enabled = False
    full = det.score_many(x)
    after_full = det.generator.get_state()
    det.generator.set_state(state)
    det.config.cascade.enabled = True
    cas = det.score_many(x)
    assert torch.equal(det.generator.get_state(), after_full), "the cascade must advance the generator as a full pass"
    return full, cas


def test_rescored_records_get_the_full_pass_and_misses_stay_within_the_rate(fitted) -> None:
    det = fitted
    torch.manual_seed(0)
    det.generator.manual_seed(5)
    records = disagree = rescored = alerts = 0
    for i in range(12):
        x = stream(512, seed=100 + i)
        full, cas = both(det, x)
        assert cas.rescored is not None and full.rescored is None
        inside = cas.rescored.numpy()
        # Inside the margin: the full pass's decisions, scores and breakdown.
        np.testing.assert_array_equal(cas.is_anomaly[inside], full.is_anomaly[inside])
        np.testing.assert_array_equal(cas.mode[inside], full.mode[inside])
        for name in ("nll", "log_p_value", "epistemic", "aleatoric", "mode_entropy", "responsibilities"):
            np.testing.assert_allclose(getattr(cas, name)[inside], getattr(full, name)[inside], rtol=1e-4, atol=1e-4)
        assert inside[cas.is_anomaly].all(), "every alert comes from the full pass"
        assert not inside.all(), "the screen must clear some records"
        records += len(x)
        rescored += int(inside.sum())
        alerts += int(full.is_anomaly.sum())
        disagree += int((cas.is_anomaly != full.is_anomaly).sum())
        det.learn_many(cas)
    assert alerts > 50, "the stream must hold alerts for the comparison to mean something"
    assert rescored < 0.6 * records
    assert disagree <= max(1, int(RATE * records)), (disagree, records)


def test_calibration_holds_full_pass_scores_and_its_tail_is_the_full_pass_s(fitted) -> None:
    """Records the screen cleared enter the calibration censored (-inf, 'below the margin'); the tail the
    decisions are read from (its 95 % and 99 % quantiles) is the one the full pass's scores would give."""
    det = fitted
    cal = det.model.calibration
    saved = {k: v.clone() for k, v in cal.state_dict().items()}
    modes = torch.nonzero(det.model.active).flatten()
    try:
        full, cas = both(det, stream(2048, seed=3))
        assert cas.rescored is not None
        usable = torch.as_tensor(full.valid & full.in_range)
        mode = torch.as_tensor(full.mode)[usable]
        calibrate_capped(det.model, mode, torch.as_tensor(full.nll)[usable])
        tail_full = [cal.score_at(modes, math.log(p)) for p in (1e-2, 1e-3)]
        cal.load_state_dict(saved)
        before = int(cal.count[-1])
        det.learn_many(cas)
        n_new = int(cal.count[-1]) - before
        pooled = cal.scores[-1, (before + torch.arange(n_new)) % cal.size]
        censored = pooled == -math.inf
        assert 0 < int(censored.sum()) <= int((~cas.rescored).sum())
        assert torch.isfinite(pooled[~censored]).all(), "what is not censored is a full-pass score"
        for want, p in zip(tail_full, (1e-2, 1e-3)):
            torch.testing.assert_close(cal.score_at(modes, math.log(p)), want)
    finally:
        cal.load_state_dict(saved)


def test_a_mostly_censored_buffer_sends_its_records_to_the_full_pass(fitted) -> None:
    det = fitted
    saved = {k: v.clone() for k, v in det.model.calibration.state_dict().items()}
    try:
        cal = det.model.calibration
        n = cal.n_reference()
        cal.scores[:, : int(cal.size * (MAX_CENSORED + 0.05))] = -math.inf
        cal.count.clamp_(min=cal.size)
        cal._sorted = None
        assert (censored_share(det.model) > MAX_CENSORED).all()
        _, cas = both(det, stream(256, seed=4))
        assert cas.rescored is not None and bool(cas.rescored.all())
        assert n.shape == cal.n_reference().shape
    finally:
        det.model.calibration.load_state_dict(saved)


def test_the_margin_must_clear_the_learning_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="margin_p"):
        ModelConfig(learn_threshold=0.3, cascade={"margin_p": 0.2})
    assert ModelConfig(learn_threshold=0.3, cascade={"enabled": False, "margin_p": 0.2}).learn_threshold == 0.3
    with pytest.raises(ValueError):
        ModelConfig(cascade={"margin_p": 0.04})  # the calibration's tail would hold censored scores
    from streammoe.config import Settings

    monkeypatch.setenv("STREAMMOE_RECORDS__CHANNELS", '["flow", "temp"]')
    monkeypatch.setenv("STREAMMOE_MODEL__CASCADE__ENABLED", "false")
    monkeypatch.setenv("STREAMMOE_MODEL__CASCADE__MARGIN_P", "0.3")
    cascade = Settings().model.cascade
    assert (cascade.enabled, cascade.margin_p) == (False, 0.3)


def test_records_with_missing_channels_get_the_full_masked_pass(fitted) -> None:
    det = fitted
    x = stream(512, seed=9)
    missing = np.zeros_like(x, dtype=bool)
    missing[::7, 2] = True
    missing[::11, 5] = True
    state, scored_before = det.generator.get_state(), det.counters["records_scored"]
    det.config.cascade.enabled = False
    full = det.score_many(x, missing=missing)
    det.generator.set_state(state)
    det.counters["records_scored"] = scored_before  # partial rows' reference pass is seeded by the position
    det.config.cascade.enabled = True
    cas = det.score_many(x, missing=missing)
    assert cas.rescored is not None
    partial = missing.any(1)
    assert cas.rescored.numpy()[partial].all(), "a partial record always gets the full pass"
    inside = cas.rescored.numpy()
    np.testing.assert_array_equal(cas.is_anomaly[inside], full.is_anomaly[inside])
    np.testing.assert_allclose(cas.nll[inside], full.nll[inside], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cas.log_p_value[partial], full.log_p_value[partial], rtol=1e-4, atol=1e-4)


def test_batches_of_cleared_records_never_leave_a_mode_without_alerts() -> None:
    """One batch of cleared records larger than the rest of a buffer (here 256 and 114 against 64; the daemon's
    1024 or gpu.env's 8192 against 2048) would censor all of it, its tail -inf, its p-values NaN, and a record 40
    spreads off would not alert: the screen clears a batch's rows only within each buffer's censoring allowance
    (cascade.within_censoring_budget), so the share stays at most MAX_CENSORED after the update."""
    rng = np.random.default_rng(1)
    config = ModelConfig(k_max=2, hidden=8, latent=2, n_samples=2, fit_steps=20, calibration_size=64)
    config.cascade.enabled = True
    det = MixtureDetector(3, config, device="cpu")
    det.fit(np.random.default_rng(0).normal(size=(400, 3)).astype(np.float32))
    first = np.concatenate([rng.normal(0, 1, (200, 3)), rng.normal(40, 1, (20, 3)), rng.normal(0, 1, (36, 3))])
    for batch in (first, rng.normal(0, 1, (114, 3))):  # a daemon's two batches of 200 normal, 20 off, 150 normal
        det.learn_many(det.score_many(batch.astype(np.float32)))
    far = det.score_many(rng.normal(40.0, 1.0, (20, 3)).astype(np.float32))
    assert np.isfinite(far.log_p_value).all() and far.is_anomaly.all()
    filled = det.model.calibration.n_reference() > 0
    assert float(censored_share(det.model)[filled].max()) <= MAX_CENSORED
