"""MixtureOfVAEs.evaluate: the E-step over the active slots of a sparse slot layout, and its uncertainty parts."""

from __future__ import annotations

import math

import pytest
import torch

from streammoe.model.config import ModelConfig
from streammoe.model.mixture import MixtureOfVAEs

ACTIVE = [1, 3, 4]  # deliberately not a prefix of the slots


@pytest.fixture()
def model() -> MixtureOfVAEs:
    torch.manual_seed(0)
    m = MixtureOfVAEs(4, ModelConfig(k_max=6, hidden=8, latent=2, n_samples=5))
    with torch.no_grad():
        m.experts.active[ACTIVE] = True
        for p in m.experts.parameters():  # distinct experts with distinct biases
            p.add_(0.3 * torch.randn_like(p))
        m.weights.gamma.copy_(torch.tensor([50.0, 300.0, 0.0, 20.0, 100.0, 9e9], dtype=torch.float64))
    return m


def test_responsibilities_sum_to_one_over_active_experts_and_vanish_elsewhere(model) -> None:
    x = torch.randn(300, 4) * 3
    ev = model.evaluate(x, 5, torch.Generator().manual_seed(1))
    inactive = [k for k in range(6) if k not in ACTIVE]
    torch.testing.assert_close(ev.resp.sum(1), torch.ones(300), rtol=0, atol=1e-6)
    assert torch.all(ev.resp[:, inactive] == 0), "slot 5 has a huge gamma but is inactive"
    assert torch.all(ev.log_pk[inactive] == -math.inf)
    assert set(ev.mode.tolist()) <= set(ACTIVE)
    assert torch.equal(ev.mode, ev.resp.argmax(1))


def test_e_step_combines_per_expert_likelihoods_with_the_dirichlet_posterior(model) -> None:
    x = torch.randn(40, 4) * 3
    ev = model.evaluate(x, 5, torch.Generator().manual_seed(2))
    idx = torch.tensor(ACTIVE)
    # Same generator state -> the same draws: log p_k is the IWAE bound of each active expert.
    iwae = model.experts.iwae(x, 5, idx, torch.Generator().manual_seed(2))
    torch.testing.assert_close(ev.log_pk[idx], iwae, rtol=1e-6, atol=1e-5)
    gamma = model.weights.gamma[idx]
    alpha = model.config.alpha0 + gamma
    elog = torch.digamma(alpha) - torch.digamma(alpha.sum())
    want = torch.softmax(iwae.double() + elog[:, None], dim=0).T.float()
    torch.testing.assert_close(ev.resp[:, idx], want, rtol=1e-5, atol=1e-6)
    pibar = (alpha / alpha.sum()).float()
    torch.testing.assert_close(ev.log_px, torch.logsumexp(iwae + pibar.log()[:, None], 0), rtol=1e-6, atol=1e-5)
    entropy = -(want * want.clamp(min=1e-30).log()).sum(1)
    torch.testing.assert_close(ev.entropy, entropy, rtol=1e-4, atol=1e-5)
    assert torch.all(ev.entropy <= math.log(len(ACTIVE)) + 1e-6)


def test_one_expert_one_sample_has_no_epistemic_spread_and_aleatoric_is_its_variance() -> None:
    torch.manual_seed(1)
    m = MixtureOfVAEs(3, ModelConfig(k_max=2, hidden=8, latent=2, n_samples=1))
    m.experts.active[0] = True
    x = torch.randn(25, 3)
    ev = m.evaluate(x, 1, torch.Generator().manual_seed(3))
    s = m.experts.importance_samples(x, 1, torch.tensor([0]), torch.Generator().manual_seed(3))
    assert torch.all(ev.resp[:, 0] == 1) and torch.all(ev.entropy == 0)
    torch.testing.assert_close(ev.epistemic, torch.zeros(25), rtol=0, atol=1e-6)
    torch.testing.assert_close(ev.aleatoric, s.logvar[0, 0].exp().mean(1), rtol=1e-5, atol=1e-6)
    want_nll = (x - s.mean[0, 0]).square() * torch.exp(-s.logvar[0, 0])
    torch.testing.assert_close(ev.channel_nll, want_nll, rtol=1e-5, atol=1e-6)


def test_experts_that_disagree_show_epistemic_uncertainty(model) -> None:
    x = torch.randn(200, 4)
    ev = model.evaluate(x, 5, torch.Generator().manual_seed(4))
    assert torch.all(ev.epistemic >= 0) and torch.all(ev.aleatoric > 0)
    # Same experts, all weights on one of them: a confident mixture has less spread than a split one.
    mixed = ev.entropy > 0.5
    assert mixed.any() and (~mixed).any()
    assert ev.epistemic[mixed].mean() > ev.epistemic[ev.entropy < 0.05].mean()


def test_evaluation_chunks_large_batches_without_changing_shapes(model) -> None:
    rows = model.chunk_rows()
    x = torch.randn(2 * rows + 7, 4)
    ev = model.evaluate(x, 5, torch.Generator().manual_seed(5))
    assert ev.resp.shape == (len(x), 6) and ev.log_pk.shape == (6, len(x)) and ev.channel_nll.shape == (len(x), 4)
    torch.testing.assert_close(ev.resp.sum(1), torch.ones(len(x)), rtol=0, atol=1e-6)
    assert torch.isfinite(ev.log_px).all()


def test_no_active_expert_is_an_error_not_a_silent_score() -> None:
    m = MixtureOfVAEs(3, ModelConfig(k_max=2, hidden=8, latent=2))
    with pytest.raises(RuntimeError, match="no active expert"):
        m.evaluate(torch.zeros(4, 3), 2)
