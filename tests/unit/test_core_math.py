"""The mathematics of the scoring core: E-step, Dirichlet weights, IWAE, calibration, fitting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from streammoe.model.calibration import ModeCalibration
from streammoe.model.config import ModelConfig
from streammoe.model.detector import MixtureDetector
from streammoe.model.experts import StackedVAE
from streammoe.model.weights import DirichletWeights


def three_modes(n: int, seed: int = 0, weights=(0.5, 0.3, 0.2), channels: int = 5):
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0] * channels, [12.0] * channels, [-12.0, 12.0] * (channels // 2) + [0.0] * (channels % 2)])
    labels = rng.choice(3, n, p=list(weights))
    return (centers[labels] + rng.normal(0, 1, (n, channels))).astype(np.float32), labels


@pytest.fixture(scope="module")
def fitted() -> tuple[MixtureDetector, np.ndarray, np.ndarray]:
    x, labels = three_modes(6000)
    det = MixtureDetector(5, ModelConfig(k_max=6, fit_steps=1200, half_life=2000.0))
    det.fit(x)
    return det, x, labels


def test_three_modes_found_with_true_weights(fitted) -> None:
    det, x, labels = fitted
    assert det.model.n_active == 3
    weights = det.mixture_weights()
    scored = det.score_many(x)
    for true_k, true_w in enumerate((0.5, 0.3, 0.2)):
        modes = scored.mode[labels == true_k]
        slot = np.bincount(modes).argmax()
        assert (modes == slot).mean() > 0.98, "each true cluster maps onto one expert"
        assert abs(weights[slot] - true_w) < 0.05


def test_responsibilities_sum_to_one_and_vanish_on_inactive_slots(fitted) -> None:
    det, x, _ = fitted
    scored = det.score_many(x[:500])
    r = scored.responsibilities
    np.testing.assert_allclose(r.sum(1), 1.0, atol=1e-5)
    inactive = ~det.model.active.numpy()
    assert np.all(r[:, inactive] == 0)


def test_expected_log_pi_is_the_digamma_formula() -> None:
    w = DirichletWeights(4, alpha0=0.7)
    w.gamma.copy_(torch.tensor([3.0, 10.0, 0.0, 41.5], dtype=torch.float64))
    active = torch.tensor([True, True, False, True])
    got = w.expected_log_pi(active)
    alpha = np.array([3.7, 10.7, 42.2])

    def digamma(v: float) -> float:  # recurrence up to 10, then the asymptotic series
        out = 0.0
        while v < 10:
            out -= 1.0 / v
            v += 1
        return out + math.log(v) - 1 / (2 * v) - 1 / (12 * v**2) + 1 / (120 * v**4) - 1 / (252 * v**6)

    expected = [digamma(a) - digamma(alpha.sum()) for a in alpha]
    np.testing.assert_allclose(got[active].numpy(), expected, rtol=1e-9, atol=1e-9)
    assert got[2] == -math.inf


def test_gamma_halves_every_half_life() -> None:
    w = DirichletWeights(2, half_life=1000.0)
    w.gamma.copy_(torch.tensor([800.0, 200.0], dtype=torch.float64))
    w.update(torch.zeros(2), 1000)
    np.testing.assert_allclose(w.gamma.numpy(), [400.0, 100.0])
    w.update(torch.tensor([10.0, 0.0]), 2000)
    np.testing.assert_allclose(w.gamma.numpy(), [110.0, 25.0])


def test_iwae_bound_is_above_elbo_and_tightens_with_samples() -> None:
    torch.manual_seed(0)
    vae = StackedVAE(2, 6, hidden=16, latent=3)
    vae.active[:] = True
    x = torch.randn(4000, 6)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        elbo = vae.elbo(x, generator=g).mean().item()
        bounds = [vae.iwae(x, s, generator=g).mean().item() for s in (1, 8, 64)]
    # S=1 is an unbiased sample of the ELBO (the analytic-KL estimator has the same mean).
    assert abs(bounds[0] - elbo) < 0.05 * abs(elbo)
    assert bounds[1] > elbo and bounds[1] > bounds[0]
    assert bounds[2] > bounds[1]


def test_stacked_pass_equals_each_expert_alone() -> None:
    """Each expert in its own units: log p_k(x) = log p~_k((x - loc_k) / scale_k) - sum_c log scale_kc."""
    torch.manual_seed(0)
    vae = StackedVAE(3, 4, hidden=8, latent=2)
    vae.active[:] = True
    vae.loc.normal_(0, 3)
    vae.scale.uniform_(0.2, 5.0)
    x = torch.randn(10, 4) * 3
    with torch.no_grad():
        full = vae.iwae(x, 4, generator=torch.Generator().manual_seed(5))
        for k in range(3):
            # Expert k alone, with the same noise: draw the full noise tensor and keep slot k's share of it.
            eps = torch.randn((3, 4, 10, 2), generator=torch.Generator().manual_seed(5))[k : k + 1]
            w = vae._weights(torch.tensor([k]))
            mu, lv = vae.encode(x, w)
            u = (x - vae.loc[k]) / vae.scale[k]
            z = mu.unsqueeze(1) + torch.exp(0.5 * lv).unsqueeze(1) * eps
            mean, dlv = vae.decode(z.reshape(1, 40, 2), w)
            mean, dlv = mean.reshape(1, 4, 10, 4), dlv.reshape(1, 4, 10, 4)
            lpx = (-0.5 * (math.log(2 * math.pi) + dlv + (u - mean) ** 2 * torch.exp(-dlv))).sum(-1)
            lpx = lpx - torch.log(vae.scale[k]).sum()
            lpz = (-0.5 * (math.log(2 * math.pi) + z**2)).sum(-1)
            lqz = (-0.5 * (math.log(2 * math.pi) + lv.unsqueeze(1) + eps**2)).sum(-1)
            alone = torch.logsumexp(lpx + lpz - lqz, dim=1) - math.log(4)
            torch.testing.assert_close(full[k], alone[0], rtol=1e-5, atol=1e-5)


def test_decayed_weights_follow_a_change_of_mode_mix() -> None:
    x, _ = three_modes(4000, seed=1, weights=(0.5, 0.5, 0.0))
    det = MixtureDetector(5, ModelConfig(k_max=4, fit_steps=800, half_life=2000.0))
    det.fit(x)
    assert det.model.n_active == 2
    stream, labels = three_modes(12_000, seed=2, weights=(0.9, 0.1, 0.0))
    for i in range(0, len(stream), 256):
        det.learn_many(det.score_many(stream[i : i + 256]))
    scored = det.score_many(stream[:2000])
    slot_a = np.bincount(scored.mode[labels[:2000] == 0]).argmax()
    assert abs(det.mixture_weights()[slot_a] - 0.9) < 0.05


def test_calibrated_p_values_are_uniform_and_monotone() -> None:
    torch.manual_seed(0)
    cal = ModeCalibration(2, 2048)
    modes = torch.zeros(2048, dtype=torch.long)
    cal.update(modes, torch.randn(2048) * 3 + 10)
    fresh = torch.randn(20_000) * 3 + 10
    p = torch.exp(cal.log_p_value(torch.zeros(20_000, dtype=torch.long), fresh))
    assert 0.04 < (p < 0.05).float().mean() < 0.06
    assert 0.08 < (p < 0.10).float().mean() < 0.12
    grid = torch.linspace(0, 40, 400)
    lp = cal.log_p_value(torch.zeros(400, dtype=torch.long), grid)
    assert torch.all(lp[1:] <= lp[:-1])
    assert lp[-1] < lp[-50] < math.log(1.0 / 2049), "the tail keeps falling past the largest reference"
    at = cal.score_at(torch.zeros(1, dtype=torch.long), math.log(1e-4))
    assert abs(cal.log_p_value(torch.zeros(1, dtype=torch.long), at).item() - math.log(1e-4)) < 1e-3


def test_young_mode_uses_pooled_calibration_and_empty_gives_p_one() -> None:
    cal = ModeCalibration(3, 512)
    assert cal.log_p_value(torch.tensor([0]), torch.tensor([99.0])).item() == 0.0
    cal.update(torch.zeros(300, dtype=torch.long), torch.linspace(0, 1, 300))
    cal.update(torch.ones(5, dtype=torch.long), torch.full((5,), 100.0))
    # Mode 1 has 5 scores, all 100: against its own buffer 50 would get p = 1; against the pool (98 % in
    # [0, 1]) it lies in the upper tail.
    assert cal.log_p_value(torch.tensor([1]), torch.tensor([50.0])).item() < math.log(0.05)


def test_calibration_false_alarm_rate_stays_put_under_online_updates() -> None:
    torch.manual_seed(0)
    cal = ModeCalibration(1, 2048)
    zero = lambda n: torch.zeros(n, dtype=torch.long)
    draw = lambda n: torch.distributions.Gamma(3.0, 1.0).sample((n,)) * 3
    cal.update(zero(2048), draw(2048))
    for _ in range(80):
        s = draw(256)
        cap = cal.score_at(zero(256), math.log(0.01))
        cal.update(zero(256), torch.minimum(s, cap))
    lp = cal.log_p_value(zero(200_000), draw(200_000))
    assert (lp < math.log(1e-3)).float().mean() < 4e-3
    assert 0.005 < (lp < math.log(1e-2)).float().mean() < 0.02


def test_planted_anomaly_is_flagged_and_blames_the_shifted_channel(fitted) -> None:
    det, x, _ = fitted
    normal = det.score_many(x[:3000])
    assert normal.is_anomaly.mean() < 0.01
    bad = x[:50].copy()
    bad[:, 3] += 15.0
    scored = det.score_many(bad)
    assert scored.is_anomaly.all()
    assert all(scored.top_channels(i, 1)[0][0] == 3 for i in range(50))


def test_flagged_and_non_finite_records_never_teach_the_model() -> None:
    x, _ = three_modes(3000, seed=3)
    det = MixtureDetector(5, ModelConfig(k_max=4, fit_steps=300))
    det.fit(x)
    gamma = det.model.weights.gamma.clone()
    seen = det.model.replay.seen.clone()
    weights = [p.detach().clone() for p in det.model.experts.parameters()]
    bad = np.full((64, 5), 80.0, dtype=np.float32)
    bad[:8] = np.nan
    bad[8:12, 0] = np.inf
    scored = det.score_many(bad)
    assert scored.is_anomaly.all()
    assert not scored.valid[:12].any() and (scored.mode[:12] == -1).all()
    det.learn_many(scored)
    assert torch.equal(det.model.weights.gamma, gamma)
    assert torch.equal(det.model.replay.seen, seen)
    assert all(torch.equal(a, b) for a, b in zip(weights, det.model.experts.parameters()))
    mixed = np.concatenate([x[:32], bad[:8]])
    scored = det.score_many(mixed)
    assert scored.valid[:32].all() and not scored.valid[32:].any()
    assert scored.is_anomaly[:32].mean() < 0.2
    det.learn_many(scored)
    assert all(torch.isfinite(p).all() for p in det.model.experts.parameters())


def test_constant_channel_scales_to_finite_values() -> None:
    x = np.random.default_rng(0).normal(0, 1, (2000, 3)).astype(np.float32)
    x[:, 1] = 5.0
    det = MixtureDetector(3, ModelConfig(k_max=2, fit_steps=200))
    det.fit(x)
    shifted = x[:10].copy()
    shifted[:, 1] = 5.5
    scored = det.score_many(shifted)
    assert np.isfinite(scored.nll).all()
    assert scored.is_anomaly.all()
    assert all(scored.top_channels(i, 1)[0][0] == 1 for i in range(10))
