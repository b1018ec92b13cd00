"""StackedVAE: the batched pass is K independent VAEs, and its IWAE / ELBO estimators mean what they claim.

The reference computations here are written from the model's definition with torch.distributions and explicit
per-expert matrix products, not with the module's own helpers, so a mistake shared by both cannot hide.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from streammoe.model.experts import LOGVAR_MAX, LOGVAR_MIN, StackedVAE

ENC_LOGVAR = (-8.0, 4.0)  # the encoder's documented log-variance range (experts.encode)


def soft_bound(raw: torch.Tensor, low: float, high: float) -> torch.Tensor:
    # low + (high - low) * sigmoid((raw - mid) / (width / 4)): the bound the module documents.
    return low + (high - low) * torch.sigmoid((raw - (low + high) / 2) / ((high - low) / 4))


def inverse_soft_bound(value: torch.Tensor, low: float, high: float) -> torch.Tensor:
    u = (value - low) / (high - low)
    return (low + high) / 2 + (high - low) / 4 * torch.log(u / (1 - u))


def expert_alone(vae: StackedVAE, k: int, x: torch.Tensor, eps: torch.Tensor):
    """Expert k's log importance weights for noise `eps` (S, B, Z), computed one expert at a time."""
    p = {name: t[k] for name, t in vae.named_parameters()}
    z_dim = vae.latent
    h = torch.relu(x @ p["enc_w1"] + p["enc_b1"])
    out = h @ p["enc_w2"] + p["enc_b2"]
    mu, logvar = out[:, :z_dim], soft_bound(out[:, z_dim:], *ENC_LOGVAR)
    std = torch.exp(0.5 * logvar)
    z = mu + std * eps  # (S, B, Z)
    hd = torch.relu(z @ p["dec_w1"] + p["dec_b1"])
    outd = hd @ p["dec_w2"] + p["dec_b2"]
    c = vae.n_channels
    mean, dec_logvar = outd[..., :c], soft_bound(outd[..., c:], LOGVAR_MIN, LOGVAR_MAX)
    log_px_z = Normal(mean, torch.exp(0.5 * dec_logvar)).log_prob(x).sum(-1)
    log_pz = Normal(torch.zeros_like(z), torch.ones_like(z)).log_prob(z).sum(-1)
    log_qz = Normal(mu, std).log_prob(z).sum(-1)
    return log_px_z + log_pz - log_qz, mu, logvar, mean, dec_logvar


def random_vae(k: int, c: int, hidden: int, latent: int, seed: int) -> StackedVAE:
    torch.manual_seed(seed)
    vae = StackedVAE(k, c, hidden=hidden, latent=latent).double()
    with torch.no_grad():  # non-zero biases, so a bias taken from the wrong expert changes the result
        for name, p in vae.named_parameters():
            if "_b" in name:
                p.normal_(0, 0.3)
    vae.active[:] = True
    return vae


@pytest.mark.parametrize("idx", [None, [2, 0], [3]])
def test_stacked_importance_weights_equal_each_expert_computed_alone(idx) -> None:
    vae = random_vae(4, 5, hidden=7, latent=3, seed=0)
    x = torch.randn(11, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    sel = list(range(4)) if idx is None else idx
    idx_t = None if idx is None else torch.tensor(idx)
    with torch.no_grad():
        got = vae.importance_samples(x, 6, idx_t, torch.Generator().manual_seed(9))
        iw = vae.iwae(x, 6, idx_t, torch.Generator().manual_seed(9))
        # The pass draws one (K_selected, S, B, Z) noise tensor; row j of it belongs to selected expert sel[j].
        eps = torch.randn((len(sel), 6, 11, 3), generator=torch.Generator().manual_seed(9), dtype=torch.float64)
        for j, k in enumerate(sel):
            log_w, _, _, mean, dec_logvar = expert_alone(vae, k, x, eps[j])
            torch.testing.assert_close(got.log_w[j], log_w, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(got.mean[j], mean, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(got.logvar[j], dec_logvar, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(iw[j], torch.logsumexp(log_w, 0) - math.log(6), rtol=1e-10, atol=1e-10)


def test_experts_do_not_share_weights() -> None:
    """Changing every parameter of one expert leaves the others' outputs bit-identical (stacked, not mixed)."""
    vae = random_vae(3, 4, hidden=6, latent=2, seed=1)
    x = torch.randn(20, 4, dtype=torch.float64)
    with torch.no_grad():
        before = vae.iwae(x, 5, generator=torch.Generator().manual_seed(3))
        for p in vae.parameters():
            p[1].mul_(-1.7).add_(0.5)
        after = vae.iwae(x, 5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(before[[0, 2]], after[[0, 2]])
    assert (before[1] - after[1]).abs().min() > 0


def test_elbo_is_reconstruction_minus_analytic_kl_per_expert() -> None:
    vae = random_vae(3, 4, hidden=6, latent=2, seed=2)
    x = torch.randn(9, 4, dtype=torch.float64)
    with torch.no_grad():
        got = vae.elbo(x, torch.tensor([2, 1]), torch.Generator().manual_seed(4))
        eps = torch.randn((2, 9, 2), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        for j, k in enumerate([2, 1]):
            _, mu, logvar, mean, dec_logvar = expert_alone(vae, k, x, eps[j][None])
            rec = Normal(mean[0], torch.exp(0.5 * dec_logvar[0])).log_prob(x).sum(-1)
            kl = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(-1)
            torch.testing.assert_close(got[j], rec - kl, rtol=1e-10, atol=1e-10)


def linear_gaussian_vae(a: torch.Tensor, c: torch.Tensor, sigma2: float, exact_encoder: bool) -> StackedVAE:
    """Slot 0 of a StackedVAE made into x = A z + c + N(0, sigma2 I), z ~ N(0, I), whose marginal is known.

    ReLU layers are kept in their linear regime with a +100 bias. With `exact_encoder`, q(z|x) is the exact
    posterior (A has orthogonal columns, so the posterior covariance is diagonal)."""
    n_ch, z_dim = a.shape
    hidden = n_ch + z_dim
    vae = StackedVAE(1, n_ch, hidden=hidden, latent=z_dim).double()
    vae.active[:] = True
    big = 100.0
    with torch.no_grad():
        for p in vae.parameters():
            p.zero_()
        # Decoder: h = z + 100 (first Z units), mean = A h + c - 100 A 1, log-variance constant.
        vae.dec_w1[0, :, :z_dim] = torch.eye(z_dim, dtype=torch.float64)
        vae.dec_b1[0] = big
        vae.dec_w2[0, :z_dim, :n_ch] = a.T
        vae.dec_b2[0, 0, :n_ch] = c - big * a.sum(1)
        vae.dec_b2[0, 0, n_ch:] = inverse_soft_bound(torch.tensor(math.log(sigma2)), LOGVAR_MIN, LOGVAR_MAX)
        post_var = 1.0 / (1.0 + (a * a).sum(0) / sigma2)  # (Z,)
        gain = post_var[:, None] * a.T / sigma2  # (Z, C): the exact posterior mean's gain
        lv = post_var
        if not exact_encoder:  # a mean pulled towards the prior and a too-wide posterior
            gain, lv = 0.6 * gain, 3.0 * lv
        # Encoder: h = x + 100 (first C units), mu = gain (x - c), log-variance constant.
        vae.enc_w1[0, :, :n_ch] = torch.eye(n_ch, dtype=torch.float64)
        vae.enc_b1[0] = big
        vae.enc_w2[0, :n_ch, :z_dim] = gain.T
        vae.enc_b2[0, 0, :z_dim] = -gain @ c - big * gain.sum(1)
        vae.enc_b2[0, 0, z_dim:] = inverse_soft_bound(torch.log(lv), *ENC_LOGVAR)
    return vae


def orthogonal_columns(n_ch: int, z_dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n_ch, z_dim, generator=g, dtype=torch.float64))
    return q * torch.tensor([2.0, 0.7, 1.3][:z_dim], dtype=torch.float64)


def exact_log_marginal(x: torch.Tensor, a: torch.Tensor, c: torch.Tensor, sigma2: float) -> torch.Tensor:
    cov = a @ a.T + sigma2 * torch.eye(a.shape[0], dtype=torch.float64)
    return torch.distributions.MultivariateNormal(c, covariance_matrix=cov).log_prob(x)


def test_importance_weight_is_the_exact_marginal_under_the_exact_posterior() -> None:
    """With q = p(z|x), log p(x,z) - log q(z|x) = log p(x) for every z: checks all three densities at once."""
    a, c, sigma2 = orthogonal_columns(4, 2, 0), torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64), 0.3
    vae = linear_gaussian_vae(a, c, sigma2, exact_encoder=True)
    g = torch.Generator().manual_seed(0)
    x = (
        c
        + torch.randn(200, 2, generator=g, dtype=torch.float64) @ a.T
        + 0.55 * torch.randn(200, 4, generator=g, dtype=torch.float64)
    )
    truth = exact_log_marginal(x, a, c, sigma2)
    with torch.no_grad():
        log_w = vae.importance_samples(x, 16, generator=g).log_w[0]  # (S, B)
        for s in (1, 7):
            torch.testing.assert_close(vae.iwae(x, s, generator=g)[0], truth, rtol=1e-9, atol=1e-6)
        elbos = torch.stack([vae.elbo(x, generator=g)[0] for _ in range(400)])
    torch.testing.assert_close(log_w, truth.expand_as(log_w), rtol=1e-9, atol=1e-6)
    # The single-sample ELBO is noisy but unbiased for the ELBO, which equals log p(x) when q is exact.
    err = elbos.mean(0) - truth
    se = elbos.std(0) / math.sqrt(elbos.shape[0])
    assert (err.abs() < 5 * se + 1e-9).float().mean() > 0.97


def test_iwae_approaches_the_exact_marginal_from_below_as_samples_grow() -> None:
    a, c, sigma2 = orthogonal_columns(4, 2, 1), torch.zeros(4, dtype=torch.float64), 0.2
    vae = linear_gaussian_vae(a, c, sigma2, exact_encoder=False)  # a deliberately poor q
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1500, 2, generator=g, dtype=torch.float64) @ a.T + math.sqrt(sigma2) * torch.randn(
        1500, 4, generator=g, dtype=torch.float64
    )
    truth = exact_log_marginal(x, a, c, sigma2)
    with torch.no_grad():
        gaps = {s: truth - vae.iwae(x, s, generator=g)[0] for s in (1, 8, 64, 1024)}
    means = {s: float(v.mean()) for s, v in gaps.items()}
    ses = {s: float(v.std()) / math.sqrt(len(v)) for s, v in gaps.items()}
    for s in gaps:  # a lower bound in expectation
        assert means[s] > -4 * ses[s], (s, means[s], ses[s])
    assert means[1] > means[8] > means[64] > means[1024]
    assert means[1] > 1.0, "the test needs a poor q to be meaningful"
    assert means[1024] < 0.1 * means[1]


def test_iwae_tightens_with_samples_and_s1_matches_elbo_in_expectation() -> None:
    vae = random_vae(2, 6, hidden=16, latent=3, seed=3)
    x = torch.randn(6000, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 1.5
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        elbo = vae.elbo(x, generator=g)
        b = {s: vae.iwae(x, s, generator=g) for s in (1, 8, 64)}

    def t_stat(d: torch.Tensor) -> float:
        d = d.flatten()
        return float(d.mean() / (d.std() / math.sqrt(d.numel())))

    # Independent draws: S=1 and the analytic-KL ELBO estimate the same quantity...
    assert abs(t_stat(b[1] - elbo)) < 4.5
    # ...and more samples give a strictly larger bound on average, also above the ELBO.
    assert t_stat(b[8] - b[1]) > 6
    assert t_stat(b[64] - b[8]) > 6
    assert t_stat(b[8] - elbo) > 6
    assert float((b[64] - elbo).mean()) > 0


def test_reset_expert_touches_only_its_slot() -> None:
    vae = StackedVAE(3, 5, hidden=8, latent=2)
    vae.active[:] = torch.tensor([True, False, True])
    with torch.no_grad():
        for p in vae.parameters():
            p.fill_(7.0)
    vae.reset_expert(1, torch.Generator().manual_seed(0))
    for name, p in vae.named_parameters():
        assert torch.all(p[[0, 2]] == 7.0), name
        if name.endswith(("b1", "b2")):
            assert torch.all(p[1] == 0), name
        else:
            bound = math.sqrt(6.0 / (p.shape[1] + p.shape[2]))
            assert p[1].abs().max() <= bound and p[1].std() > bound / 4, name
    assert vae.active.tolist() == [True, False, True]


def test_copy_expert_makes_slots_score_identically() -> None:
    vae = random_vae(3, 4, hidden=6, latent=2, seed=4)
    vae.copy_expert(0, 2)
    x = torch.randn(8, 4, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        s = vae.importance_samples(x, 3, torch.tensor([0, 2]), g)
        eps = torch.randn((2, 3, 8, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        # Same weights: slot 2 with slot 0's noise reproduces slot 0.
        ref = expert_alone(vae, 2, x, eps[0])[0]
    torch.testing.assert_close(s.log_w[0], ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("masked", [False, True])
def test_the_in_place_pass_gives_the_same_bits_and_autograd_keeps_the_other(masked: bool) -> None:
    """Scoring runs importance_from_eps in place (no autograd): every output equals the out-of-place pass bit
    for bit, in float32 as scored, with and without missing dimensions; with autograd on, the default takes
    the out-of-place pass, so gradients still flow (a training caller never gets the in-place one)."""
    from streammoe.model.experts import importance_from_eps

    vae = random_vae(3, 5, hidden=16, latent=4, seed=6).float()
    with torch.no_grad():
        vae.loc.normal_(0, 3)
        vae.scale.uniform_(0.5, 3)
    x = torch.randn(40, 5) * 3
    eps = torch.randn(3, 6, 40, 4)
    observed = (torch.rand(40, 5) > 0.2).float() if masked else None
    w = {name: t.detach() for name, t in vae._weights(None).items()}
    with torch.no_grad():
        fresh = importance_from_eps(x, eps, w, observed, inplace=False)
        reused = importance_from_eps(x, eps, w, observed)  # autograd off: in place by default
    for name in ("log_w", "mean", "logvar", "sq_resid"):
        assert torch.equal(getattr(fresh, name), getattr(reused, name)), name
    s = importance_from_eps(x, eps, vae._weights(None), observed)
    s.log_w.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in vae.parameters())
