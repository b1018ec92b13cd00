"""Records with missing dimensions: the marginal likelihood, like-with-like p-values, never learned."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

from streammoe.model.config import ModelConfig
from streammoe.model.detector import MixtureDetector
from streammoe.model.experts import StackedVAE, importance_from_eps, standardise


def test_the_masked_likelihood_is_the_marginal_of_the_full_gaussian_decoder() -> None:
    """On a tiny expert, with the noise fixed: log w over the observed dimensions equals the hand-computed
    marginal of the decoder's full (diagonal) Gaussian, with the observed dimensions' log-Jacobian, and the
    encoder saw the missing input at the expert's location."""
    torch.manual_seed(0)
    vae = StackedVAE(k_max=1, n_channels=4, hidden=5, latent=2)
    with torch.no_grad():
        for p in vae.parameters():
            p.normal_(0, 0.5)
        vae.loc[0] = torch.tensor([1.0, -2.0, 0.5, 3.0])
        vae.scale[0] = torch.tensor([0.5, 2.0, 1.5, 0.1])
    x = torch.tensor([[1.3, -1.0, 7.0, 3.05], [0.0, 0.0, 0.0, 0.0]])
    observed = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0]])
    eps = torch.randn(1, 1, 2, 2)
    w = vae._weights(None)
    got = importance_from_eps(x, eps, w, observed).log_w[0, 0]  # (B,)

    for b in range(2):
        obs = observed[b].bool()
        u = standardise(x[b : b + 1], w)[0, 0] * observed[b]  # missing -> 0, the expert's location
        mu, logvar = vae.encode((vae.loc[0] + u * vae.scale[0]).view(1, -1), w)  # the imputed raw record
        z = mu[0, 0] + torch.exp(0.5 * logvar[0, 0]) * eps[0, 0, b]
        mean, dec_logvar = vae.decode(z.view(1, 1, -1), w)
        full = MultivariateNormal(mean[0, 0], covariance_matrix=torch.diag(torch.exp(dec_logvar[0, 0])))
        # Marginal of a Gaussian: keep the observed entries of the mean and the observed block of the covariance.
        cov = full.covariance_matrix[obs][:, obs]
        marginal = MultivariateNormal(full.mean[obs], covariance_matrix=cov)
        log_px_z = marginal.log_prob(u[obs]) - torch.log(vae.scale[0][obs]).sum()
        log_pz = Normal(0.0, 1.0).log_prob(z).sum()
        log_qz = Normal(mu[0, 0], torch.exp(0.5 * logvar[0, 0])).log_prob(z).sum()
        assert got[b].item() == pytest.approx((log_px_z + log_pz - log_qz).item(), abs=1e-4)

    # All observed is the full pass.
    full_w = importance_from_eps(x, eps, w).log_w
    ones = importance_from_eps(x, eps, w, torch.ones_like(observed)).log_w
    torch.testing.assert_close(ones, full_w)


def test_a_missing_value_is_ignored_whatever_it_holds() -> None:
    torch.manual_seed(1)
    vae = StackedVAE(k_max=2, n_channels=3, hidden=4, latent=2)
    w = vae._weights(None)
    eps = torch.randn(2, 3, 1, 2)
    observed = torch.tensor([[1.0, 0.0, 1.0]])
    a = importance_from_eps(torch.tensor([[0.2, 5.0, -1.0]]), eps, w, observed)
    b = importance_from_eps(torch.tensor([[0.2, -900.0, -1.0]]), eps, w, observed)
    torch.testing.assert_close(a.log_w, b.log_w)
    assert float(a.sq_resid[..., 1].detach().abs().max()) == 0.0  # no blame on a missing channel


def _two_modes(rng: np.random.Generator, n: int, c: int = 6) -> np.ndarray:
    mix = [np.random.default_rng(s).normal(size=(2, c)) for s in (10, 11)]
    mode = rng.integers(0, 2, n)
    z = rng.normal(size=(n, 2))
    x = np.einsum("nl,nlc->nc", z, np.stack(mix)[mode]) + np.where(mode[:, None] == 1, 8.0, 0.0)
    return (x + 0.3 * rng.normal(size=(n, c))).astype(np.float32)


@pytest.fixture(scope="module")
def fitted() -> MixtureDetector:
    det = MixtureDetector(6, ModelConfig(seed=0, k_max=4), device="cpu")
    det.fit(_two_modes(np.random.default_rng(0), 3000))
    return det


@pytest.mark.parametrize("n_missing", [1, 2, 3])
def test_p_values_of_masked_normal_records_stay_calibrated(fitted: MixtureDetector, n_missing: int) -> None:
    """Normal records with channels missing get p-values as spread as the same records complete: uniform-ish,
    the same rates below 0.05 and 0.01 within a factor (the full records' own rates are the reference)."""
    rng = np.random.default_rng(n_missing)
    x = _two_modes(rng, 4000)
    full, masked = [], []
    for start in range(0, len(x), 500):
        batch = x[start : start + 500]
        missing = np.zeros(batch.shape, bool)
        missing[:, rng.choice(6, n_missing, replace=False)] = True
        full.append(fitted.score_many(batch).p_value)
        scored = fitted.score_many(np.where(missing, np.nan, batch), missing=missing)
        assert scored.partial.all() and scored.valid.all() and np.isfinite(scored.nll).all()
        assert (scored.mode >= 0).all()
        masked.append(scored.p_value)
    p_full, p_masked = np.concatenate(full), np.concatenate(masked)
    assert 0.4 < np.median(p_masked) < 0.6
    for level in (0.05, 0.01):
        ref = max(np.mean(p_full < level), level)
        assert ref / 2 < np.mean(p_masked < level) < ref * 2, (
            level,
            np.mean(p_full < level),
            np.mean(p_masked < level),
        )


def test_an_anomaly_on_a_present_channel_still_alerts(fitted: MixtureDetector) -> None:
    x = _two_modes(np.random.default_rng(5), 200)
    x[:, 0] += 40.0
    missing = np.zeros(x.shape, bool)
    missing[:, 3] = True
    scored = fitted.score_many(x, missing=missing)
    assert scored.is_anomaly.mean() > 0.9
    assert (scored.top_channels(0, 1)[0][0]) == 0
    assert (scored.channel_share[:, 3] == 0).all()


def test_partial_records_are_not_learned_and_are_counted() -> None:
    det = MixtureDetector(6, ModelConfig(seed=0, k_max=4), device="cpu")
    det.fit(_two_modes(np.random.default_rng(0), 2000))
    before = {k: v.clone() for k, v in det.model.state_dict().items()}
    x = _two_modes(np.random.default_rng(1), 300)
    missing = np.zeros(x.shape, bool)
    missing[:, 2] = True
    report = det.learn_many(det.score_many(x, missing=missing))
    assert report.learned == 0 and det.counters["partial"] == 300 and det.counters["records_learned"] == 0
    after = det.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == [], changed  # experts, weights, calibration, replay, memory: untouched
    # A batch that mixes complete and partial rows learns only from the complete ones.
    missing[150:] = False
    report = det.learn_many(det.score_many(x, missing=missing))
    assert 0 < report.learned <= 150


def test_a_full_row_scores_the_same_beside_partial_ones(fitted: MixtureDetector) -> None:
    """Partial rows in a batch leave the main random stream alone: the complete rows score as they would."""
    x = _two_modes(np.random.default_rng(7), 64)
    state = fitted.generator.get_state()
    alone = fitted.score_many(x)
    fitted.generator.set_state(state)
    missing = np.zeros(x.shape, bool)
    missing[::2, 1] = True
    beside = fitted.score_many(x, missing=missing)
    np.testing.assert_allclose(beside.nll[1::2], alone.nll[1::2], rtol=1e-5)
    np.testing.assert_allclose(beside.log_p_value[1::2], alone.log_p_value[1::2], rtol=1e-4, atol=1e-6)


def test_a_row_with_nothing_present_is_not_finite(fitted: MixtureDetector) -> None:
    x = _two_modes(np.random.default_rng(8), 3)
    missing = np.zeros(x.shape, bool)
    missing[1] = True
    scored = fitted.score_many(x, missing=missing)
    assert scored.valid.tolist() == [True, False, True] and scored.is_anomaly[1]
    assert math.isinf(scored.log_p_value[1])


def test_with_a_time_context_a_missing_channel_masks_its_features_too() -> None:
    """The experts see [x, features(x)]: a missing channel's features are missing with it, the record is scored
    on the rest (finite, a mode, its channel mask per channel), and its values never enter later windows."""
    from streammoe.context.settings import ContextConfig

    config = ModelConfig(seed=0, k_max=4, context=ContextConfig(window=4))
    x = _two_modes(np.random.default_rng(2), 64)
    missing = np.zeros(x.shape, bool)
    missing[10, 4] = True
    runs = []
    for placeholder in (1e9, -3.0):  # what a missing value holds never matters, nor later records' features
        det = MixtureDetector(6, config, device="cpu")
        det.fit(_two_modes(np.random.default_rng(0), 2000))
        assert det.inputs.n_inputs == 6 * 4  # values, d(c), sd(c), rd(c)
        x[10, 4] = placeholder
        runs.append(det.score_many(x, missing=missing))
    np.testing.assert_array_equal(runs[0].nll, runs[1].nll)
    scored = runs[0]
    assert scored.partial.tolist() == [i == 10 for i in range(64)]
    assert scored.missing.shape == (64, 6) and scored.missing[10].tolist() == [False] * 4 + [True, False]
    assert np.isfinite(scored.nll).all() and (scored.mode >= 0).all() and not scored.is_anomaly[10:12].any()
    assert scored.input_share is not None and scored.input_share[10, [4, 10, 16, 22]].sum() == 0.0
    assert det.counters["partial"] == 1
