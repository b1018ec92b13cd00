"""Poison pills: records the model cannot represent are alerted and never teach it.

Poison is decided by physics (model/poison.py), never by the distance from the modes seen so far: sentinel
magnitudes (1e30, float32's maximum), configured sentinel values (-9999) and readings outside configured
physical bounds; and records whose likelihood comes out NaN. A channel that was constant in the fit and starts
to move is not poison: it is scored, alerts, and goes to the novelty memory like any unexplained record.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from streammoe.config import AlertSettings
from streammoe.model.config import ModelConfig
from streammoe.model.detector import MixtureDetector
from streammoe.model.poison import PoisonConfig
from streammoe.model.scaler import implausible_rows
from streammoe.model.scoring import ScoredBatch
from streammoe.wire.alerts import Origin, alert_schema, build_alert

C = 4
EXTREMES = np.array([1e30, -1e30, 3.4028235e38, -3.4028235e38, -9999.0, 1e15, -2e15], np.float32)
POISON = PoisonConfig(sentinel_values=[-9999.0])


def normal(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.normal(0, 1, (n, C)).astype(np.float32)


def hostile(rng: np.random.Generator, n: int) -> np.ndarray:
    """Normal rows with one to four channels replaced by sentinel readings."""
    x = normal(rng, n)
    mask = rng.random((n, C)) < 0.3
    mask[np.arange(n), rng.integers(0, C, n)] = True
    x[mask] = rng.choice(EXTREMES, int(mask.sum()))
    return x


@pytest.fixture(scope="module")
def fitted() -> MixtureDetector:
    det = MixtureDetector(C, ModelConfig(k_max=3, fit_steps=150, n_samples=2, poison=POISON), device="cpu")
    det.fit(normal(np.random.default_rng(0), 2000))
    return det


def state(det: MixtureDetector) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in det.model.state_dict().items()}


def assert_same_state(det: MixtureDetector, before: dict[str, torch.Tensor]) -> None:
    changed = [k for k, v in det.model.state_dict().items() if not torch.equal(v, before[k])]
    assert not changed, f"poison changed {changed}"


def alert_of(det: MixtureDetector, scored: ScoredBatch, i: int, offset: int) -> dict:
    """The alert the daemon would publish for row `i` of `scored`, consumed from offset `offset`."""
    return build_alert(
        scored,
        i,
        asset="a",
        ts=1,
        origin=Origin("t", 0, offset),
        channels=list("abcd"),
        expert_status=det.expert_status(),
        model_version="v",
        settings=AlertSettings(),
    )


def test_sentinel_readings_alert_and_leave_the_model_bit_identical(fitted) -> None:
    det = copy.deepcopy(fitted)
    twin = copy.deepcopy(fitted)
    before = state(det)
    rng = np.random.default_rng(1)
    for _ in range(20):
        scored = det.score_many(hostile(rng, 128))
        assert scored.valid.all() and np.isfinite(scored.score).all(), "clipped, so still a finite score"
        assert not scored.in_range.any() and scored.is_anomaly.all()
        report = det.learn_many(scored)
        assert report.learned == 0 and not report.events and not report.skipped_step
    assert_same_state(det, before)
    assert det.counters["out_of_range"] == 20 * 128 and det.counters["records_learned"] == 0
    # Later normal records score exactly as they would have without the poison (same sampler state).
    probe = normal(np.random.default_rng(2), 256)
    twin.generator.set_state(det.generator.get_state())
    a, b = det.score_many(probe), twin.score_many(probe)
    np.testing.assert_array_equal(a.nll, b.nll)
    np.testing.assert_array_equal(a.is_anomaly, b.is_anomaly)


def test_a_sustained_mix_of_poison_and_normal_records_grows_no_expert(fitted) -> None:
    """Before poison was checked, scattered readings clipped to +-50 looked coherent enough to the novelty
    search to become an expert of their own, which then called such readings normal."""
    det = copy.deepcopy(fitted)
    experts = det.model.n_active
    rng = np.random.default_rng(3)
    for _ in range(60):
        x = normal(rng, 128)
        bad = rng.random(128) < 0.5
        x[bad] = hostile(rng, int(bad.sum()))
        scored = det.score_many(x)
        assert scored.is_anomaly[bad].all() and not scored.in_range[bad].any()
        report = det.learn_many(scored)
        assert not [e for e in report.events if e.kind == "mode_added"]
    assert det.model.n_active == experts
    assert det.counters["records_learned"] > 0.9 * (det.counters["records_scored"] - det.counters["out_of_range"])
    m = det.model
    assert float(m.memory.x.abs().max()) < 50, "no sentinel reached the novelty memory"
    assert float(m.replay.records.abs().max()) < 50
    assert all(torch.isfinite(p).all() for p in m.experts.parameters())
    again = det.score_many(hostile(rng, 256))
    assert again.is_anomaly.all()
    probe = det.score_many(normal(rng, 1000))
    assert probe.is_anomaly.mean() < 0.05


def test_poison_is_a_sentinel_or_out_of_bounds_never_a_distance(fitted) -> None:
    det = MixtureDetector(
        C,
        ModelConfig(
            k_max=3,
            fit_steps=150,
            n_samples=2,
            poison=PoisonConfig(sentinel_values=[-9999.0], bounds={"c1": (-5.0, None), "c3": (None, 5.0)}),
        ),
        device="cpu",
    )
    det.model.load_state_dict(fitted.model.state_dict())
    x = np.zeros((8, C), np.float32)
    x[0, 0] = 0.99e15  # under the sentinel magnitude: a huge but physical reading
    x[1, 0] = 1e15
    x[2, 2] = -9999.0
    x[3, 2] = -9998.0  # not the sentinel
    x[4, 1] = -5.5  # below c1's bound
    x[5, 1] = 1e6  # c1 has no upper bound
    x[6, 3] = 5.01  # above c3's bound
    x[7, 3] = -1e6  # c3 has no lower bound
    scored = det.score_many(x)
    assert scored.in_range.tolist() == [True, False, False, True, False, True, False, True]
    assert scored.is_anomaly[[0, 3, 5, 7]].all(), "far off every mode: alerted by the score"


def test_bounds_naming_an_unknown_channel_are_refused() -> None:
    with pytest.raises(ValueError, match=r"poison.bounds names channels .*'flow'"):
        MixtureDetector(C, ModelConfig(poison=PoisonConfig(bounds={"flow": (0.0, 1.0)})), device="cpu")
    with pytest.raises(ValueError, match="must be below"):
        PoisonConfig(bounds={"c0": (1.0, 0.0)})


def test_a_constant_channel_that_starts_to_move_is_remembered_not_poison() -> None:
    """A valve parked at exactly 0 in the fit that opens: thousands of fitted spreads away, yet a change of
    mode. Its records alert, are not counted as out of range, and reach the novelty memory unsaturated."""
    rng = np.random.default_rng(11)
    x = normal(rng, 2000)
    x[:, 3] = 0.0
    det = MixtureDetector(C, ModelConfig(k_max=3, fit_steps=150, n_samples=2), device="cpu")
    det.fit(x)
    y = normal(rng, 256)
    y[:, 3] = 30.0 + rng.normal(0, 1, 256)
    scored = det.score_many(y)
    assert scored.in_range.all() and scored.is_anomaly.all()
    det.learn_many(scored)
    assert det.counters["out_of_range"] == 0
    assert det.model.memory.stored == 256
    stored = det.model.memory.x[:256, 3].numpy()
    np.testing.assert_allclose(np.sort(stored), np.sort(y[:, 3]), rtol=1e-5)


def test_fit_leaves_sentinel_rows_out_and_counts_them() -> None:
    rng = np.random.default_rng(12)
    x = normal(rng, 600)
    x[[3, 30, 300], 1] = 1e30
    x[42, 0] = -9999.0
    det = MixtureDetector(C, ModelConfig(k_max=2, fit_steps=40, n_samples=2, poison=POISON), device="cpu")
    report = det.fit(x)
    assert report.poisoned_rows == 4 and report.n_rows == 596


def test_nan_likelihood_rows_alert_as_non_finite_and_teach_nothing(fitted, monkeypatch) -> None:
    """Whatever makes the model produce NaN for a row, that row alerts and the model is untouched by it."""
    det = copy.deepcopy(fitted)
    real = det.model.evaluate

    def poisoned(x, *a, **kw):  # type: ignore[no-untyped-def]
        ev = real(x, *a, **kw)
        ev.log_px[x[:, 0] > 2.0] = float("nan")
        return ev

    monkeypatch.setattr(det.model, "evaluate", poisoned)
    x = normal(np.random.default_rng(4), 64)
    x[:, 0] = 3.0
    before = state(det)
    scored = det.score_many(x)
    assert not scored.valid.any() and scored.is_anomaly.all() and (scored.mode == -1).all()
    det.learn_many(scored)
    assert_same_state(det, before)
    assert det.counters["non_finite"] == 64
    alert = alert_of(det, scored, 0, offset=7)
    assert alert["reason"] == "non_finite" and alert["severity"] == "critical" and alert["score"] is None


def test_a_non_finite_step_is_skipped_and_counted(fitted, monkeypatch) -> None:
    det = copy.deepcopy(fitted)
    real = det.model.experts.elbo
    monkeypatch.setattr(det.model.experts, "elbo", lambda *a, **kw: real(*a, **kw) * float("nan"))
    before = [p.detach().clone() for p in det.model.experts.parameters()]
    report = det.learn_many(det.score_many(normal(np.random.default_rng(5), 128)))
    assert report.learned > 100 and report.skipped_step == "non-finite loss"
    assert det.counters["steps_skipped"] == 1
    assert all(torch.equal(p, q) for p, q in zip(before, det.model.experts.parameters()))


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_a_finite_loss_with_a_non_finite_gradient_is_skipped_and_leaves_the_optimizer_alone(fitted, poison) -> None:
    """The step checks only the total gradient norm: one poisoned element of one tensor must still stop it."""
    det = copy.deepcopy(fitted)
    w = det.model.experts.dec_w2

    def poisoned(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[0, 0, 0] = poison
        return grad

    w.register_hook(poisoned)
    before = [p.detach().clone() for p in det.model.experts.parameters()]
    moments = {k: v.clone() for k, v in det.learner.optimizer.state[w].items()}
    report = det.learn_many(det.score_many(normal(np.random.default_rng(5), 128)))
    assert report.learned > 100 and report.skipped_step == "non-finite gradient"
    assert det.counters["steps_skipped"] == 1
    assert all(torch.equal(p, q) for p, q in zip(before, det.model.experts.parameters()))
    assert all(torch.equal(v, moments[k]) for k, v in det.learner.optimizer.state[w].items())


def test_out_of_range_alert_names_its_reason_and_fits_the_schema(fitted) -> None:
    import jsonschema

    det = copy.deepcopy(fitted)
    x = normal(np.random.default_rng(6), 2)
    x[1, 2] = 1e30
    scored = det.score_many(x)
    alert = alert_of(det, scored, 1, offset=8)
    jsonschema.validate(alert, alert_schema())
    assert alert["reason"] == "out_of_range" and alert["severity"] == "critical"
    assert alert["top_channels"][0]["channel"] == "c"


def test_a_few_absurd_readings_in_a_fit_sample_are_found_and_a_rare_mode_is_kept() -> None:
    rng = np.random.default_rng(7)
    x = normal(rng, 3000)
    x[[10, 500, 2000], 2] = 1e30
    x[7, 0] = -3.4028235e38
    x[99, 3] = -9999.0
    assert np.flatnonzero(implausible_rows(x)).tolist() == [7, 10, 99, 500, 2000]
    idle = rng.normal(0, 0.01, (5000, C)).astype(np.float32)
    idle[:25, 0] += 1000.0  # a mode with 0.5 % of the rows, 1e5 idle standard deviations away
    assert not implausible_rows(idle).any()


def test_fitting_with_or_without_the_absurd_rows_keeps_the_channel_in_sight() -> None:
    """Three 1e30 readings among 3000 would make channel 2's scale ~1e28 (blind): the daemon's warm-up drops
    them (`implausible_rows`), and fit leaves sentinel magnitudes out itself, so either way a reading 40
    standard deviations off alerts by its score and a 1e30 reading as poison."""
    rng = np.random.default_rng(8)
    x = normal(rng, 3000)
    x[[10, 500, 2000], 2] = 1e30
    probe = normal(rng, 3)
    probe[0, 2] = 40.0
    probe[1, 2] = 1e30
    for rows in (np.ones(len(x), bool), ~implausible_rows(x)):
        det = MixtureDetector(C, ModelConfig(k_max=2, fit_steps=60, n_samples=2), device="cpu")
        report = det.fit(x[rows])
        assert report.poisoned_rows == int(rows.sum()) - 2997
        scored = det.score_many(probe)
        assert bool(scored.is_anomaly[0]) and bool(scored.in_range[0]), "40 standard deviations off on channel 2"
        assert not bool(scored.in_range[1]) and bool(scored.is_anomaly[1])
        assert float(det.model.scaler.std[2]) < 10
