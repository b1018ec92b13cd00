"""MixtureDetector end to end: finds the operating modes, flags what none explains, learns only from normal."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from streammoe.model.config import ModelConfig
from streammoe.model.detector import MixtureDetector

C = 5
CENTERS = np.array(
    [
        [0.0, 0.0, 0.0, 0.0, 0.0],
        [10.0, 10.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 10.0, -10.0],
    ]
)
SCALES = np.array([1.0, 0.5, 2.0])  # per-mode noise level: the modes differ in spread as well as location


def draw(n: int, weights, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(weights), n, p=list(weights))
    x = CENTERS[labels] + SCALES[labels, None] * rng.normal(0, 1, (n, C))
    return x.astype(np.float32), labels


def config(**kw) -> ModelConfig:
    return ModelConfig(**{"k_max": 6, "hidden": 32, "latent": 4, "fit_steps": 600, **kw})


def slot_of_each_cluster(det: MixtureDetector, x: np.ndarray, labels: np.ndarray) -> list[int]:
    modes = det.score_many(x).mode
    return [int(np.bincount(modes[labels == k][modes[labels == k] >= 0]).argmax()) for k in range(labels.max() + 1)]


@pytest.fixture(scope="module")
def fitted() -> MixtureDetector:
    x, _ = draw(6000, (0.5, 0.3, 0.2), seed=0)
    det = MixtureDetector(C, config(), device="cpu")
    det.fit(x)
    return det


def test_fit_finds_the_three_modes_with_their_weights(fitted) -> None:
    det = fitted
    assert det.model.n_active == 3
    x, labels = draw(4000, (0.5, 0.3, 0.2), seed=1)  # fresh records, not the training ones
    scored = det.score_many(x)
    slots = slot_of_each_cluster(det, x, labels)
    assert len(set(slots)) == 3, "one expert per true cluster"
    weights = det.mixture_weights()
    for k, true_w in enumerate((0.5, 0.3, 0.2)):
        purity = (scored.mode[labels == k] == slots[k]).mean()
        assert purity > 0.95, (k, purity)
        assert abs(weights[slots[k]] - true_w) < 0.05, (k, weights)
    assert abs(weights.sum() - 1) < 1e-6 and np.count_nonzero(weights) == 3


def test_normal_records_are_rarely_flagged_and_far_records_always(fitted) -> None:
    det = fitted
    x, _labels = draw(4000, (0.5, 0.3, 0.2), seed=2)
    normal = det.score_many(x)
    assert normal.valid.all()
    assert normal.is_anomaly.mean() < 0.01, normal.is_anomaly.mean()  # nominal 1e-3
    p = normal.p_value
    assert 0.01 < (p < 0.05).mean() < 0.12, "p-values of normal records are roughly calibrated"
    far = np.array(
        [
            [40.0, -40.0, 40.0, -40.0, 40.0],
            (CENTERS[0] + CENTERS[1]) / 2,  # between two modes, in no mode
            [0.0, 0.0, 25.0, 0.0, 0.0],  # a channel that never moves in any mode
        ],
        dtype=np.float32,
    )
    bad = det.score_many(far)
    assert bad.is_anomaly.all(), bad.log_p_value
    assert bad.score.min() > np.quantile(normal.score, 0.999)
    assert np.all(bad.p_value < det.config.threshold)


@pytest.mark.parametrize("channel", [0, 2, 4])
def test_top_channel_is_the_shifted_one(fitted, channel) -> None:
    det = fitted
    x, labels = draw(300, (0.5, 0.3, 0.2), seed=3 + channel)
    shifted = x.copy()
    shifted[:, channel] += 8.0 * SCALES[labels]  # 8 sigma of the record's own mode
    clean, scored = det.score_many(x), det.score_many(shifted)
    assert scored.is_anomaly.mean() > 0.95
    # Blame is taken under the assigned expert; a shifted record of a narrow mode may be assigned to a broader
    # one (its own expert's IWAE bound is loose that far out), and then other channels rightly share the blame.
    same = scored.mode == clean.mode
    assert same.mean() > 0.7
    top = np.array([scored.top_channels(i, 1)[0][0] for i in np.flatnonzero(same)])
    assert (top == channel).mean() > 0.95, np.bincount(top, minlength=C)
    assert np.allclose(scored.channel_share.sum(1), 1.0, atol=1e-5)


def snapshot(det: MixtureDetector) -> dict:
    m = det.model
    return {
        "seen": m.replay.seen.clone(),
        "records": m.replay.records.clone(),
        "params": [p.detach().clone() for p in m.experts.parameters()],
        "active": m.active.clone(),
        "scaler": m.scaler.mean.clone(),
        "opt": [t.clone() for s in det.learner.optimizer.state.values() for t in s.values()],
        "learned": det.counters["records_learned"],
    }


def assert_same(a: dict, b: dict) -> None:
    for key, value in a.items():
        if isinstance(value, list):
            assert len(value) == len(b[key]) and all(torch.equal(u, v) for u, v in zip(value, b[key])), key
        elif isinstance(value, torch.Tensor):
            assert torch.equal(value, b[key]), key
        else:
            assert value == b[key], key


def test_an_all_anomalous_batch_teaches_nothing(fitted) -> None:
    det = fitted
    before = snapshot(det)
    count_before = det.model.calibration.count.clone()
    gamma = det.model.weights.gamma.clone()
    weights = det.mixture_weights()
    rng = np.random.default_rng(0)
    bad = (60.0 + rng.normal(0, 1, (128, C))).astype(np.float32)
    scored = det.score_many(bad)
    assert scored.is_anomaly.all()
    report = det.learn_many(scored)
    assert report.learned == 0
    assert_same(before, snapshot(det))
    # No responsibility is added: gamma is unchanged, or (if time is counted for flagged records too) only
    # decayed by the records seen, which leaves the mixture weights' proportions as they were.
    decay = 0.5 ** (128 / det.model.weights.half_life)
    now = det.model.weights.gamma
    assert torch.equal(now, gamma) or torch.allclose(now, gamma * decay, rtol=1e-12, atol=0)
    np.testing.assert_allclose(det.mixture_weights(), weights, atol=2e-3)
    # They do enter the calibration (so the null is not truncated) but clipped to the learning threshold's score.
    cal = det.model.calibration
    assert int(cal.count[-1] - count_before[-1]) == 128
    cap = cal.score_at(torch.as_tensor(scored.mode), math.log(det.config.learn_threshold))
    assert np.all(scored.nll > cap.numpy() + 1.0), "the test needs scores far above the cap"
    n = int(cal.count[-1])
    newest = cal.scores[-1, (torch.arange(n - 128, n) % cal.size)]
    assert float(newest.max()) <= float(cap.max()) + 1e-3


def test_non_finite_rows_are_flagged_and_the_rest_scored_normally(fitted) -> None:
    det = fitted
    x, _labels = draw(200, (0.5, 0.3, 0.2), seed=11)
    clean = det.score_many(x)
    mixed = x.copy()
    bad_rows = np.array([3, 50, 51, 120, 199])
    mixed[3] = np.nan
    mixed[50, 2] = np.inf
    mixed[51, 0] = -np.inf
    mixed[120, 4] = np.nan
    mixed[199] = np.inf
    gamma = det.model.weights.gamma.clone()
    scored = det.score_many(mixed)
    ok = np.setdiff1d(np.arange(200), bad_rows)
    assert not scored.valid[bad_rows].any() and scored.valid[ok].all()
    assert scored.is_anomaly[bad_rows].all() and np.all(scored.mode[bad_rows] == -1)
    assert np.all(np.isneginf(scored.log_p_value[bad_rows])) and np.isnan(scored.nll[bad_rows]).all()
    # The other rows: same modes as when scored without the bad rows, and the same scores up to sampling noise.
    np.testing.assert_array_equal(scored.mode[ok], clean.mode[ok])
    assert np.median(np.abs(scored.nll[ok] - clean.nll[ok])) < 0.5
    assert scored.is_anomaly[ok].mean() < 0.05
    report = det.learn_many(scored)
    learnable = scored.valid & (scored.log_p_value >= math.log(det.config.learn_threshold))
    assert report.learned == int(learnable.sum()) and report.learned > 150
    m = det.model
    assert all(torch.isfinite(p).all() for p in m.experts.parameters())
    assert torch.isfinite(m.weights.gamma).all() and torch.isfinite(m.replay.records).all()
    # Responsibilities sum to one per learned record, so gamma's total grew by exactly the learned count
    # on top of its decay (by the valid records seen, or by the learned ones).
    grew = float(m.weights.gamma.sum())
    decays = [0.5 ** (n / m.weights.half_life) for n in (int(scored.valid.sum()), report.learned)]
    assert min(abs(grew - (float(gamma.sum()) * d + report.learned)) for d in decays) < 1e-3


def test_decayed_weights_follow_a_change_of_the_mode_mix() -> None:
    half_life = 1000.0
    x, _ = draw(3000, (0.5, 0.5, 0.0), seed=20)
    det = MixtureDetector(C, config(k_max=5, half_life=half_life), device="cpu")
    det.fit(x)
    assert det.model.n_active == 2
    probe, probe_labels = draw(1000, (0.5, 0.5, 0.0), seed=21)
    slot_a, slot_b = slot_of_each_cluster(det, probe, probe_labels)
    w0 = det.mixture_weights()
    assert abs(w0[slot_a] - 0.5) < 0.05
    stream, _ = draw(int(6 * half_life), (0.9, 0.1, 0.0), seed=22)
    history = {}
    for i in range(0, len(stream), 256):
        det.learn_many(det.score_many(stream[i : i + 256]))
        history[i + 256] = det.mixture_weights()[slot_a]
    # w(t) = 0.9 - 0.4 * 2^(-t / half_life) for an exponentially decayed count.
    t1 = min(history, key=lambda t: abs(t - half_life))
    assert abs(history[t1] - (0.9 - 0.4 * 2 ** (-t1 / half_life))) < 0.05, history[t1]
    w = det.mixture_weights()
    assert abs(w[slot_a] - 0.9) < 0.05 and abs(w[slot_b] - 0.1) < 0.05, w
    assert det.model.n_active == 2
