"""DirichletWeights: E[log pi] is the digamma formula (and what a Dirichlet really gives), decay has a half-life."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streammoe.model.weights import DirichletWeights

try:
    from scipy.special import digamma as scipy_digamma
except ImportError:  # scipy is not a dependency: the series below stands alone
    scipy_digamma = None


def digamma(v: float) -> float:
    """psi(v) for v > 0: recurrence psi(v) = psi(v + 1) - 1/v up to 20, then the asymptotic series."""
    out = 0.0
    while v < 20.0:
        out -= 1.0 / v
        v += 1.0
    inv2 = 1.0 / (v * v)
    return out + math.log(v) - 0.5 / v - inv2 * (1 / 12 - inv2 * (1 / 120 - inv2 * (1 / 252 - inv2 / 240)))


def test_reference_digamma_is_right() -> None:
    # psi(1) = -Euler-Mascheroni, psi(1/2) = -gamma - 2 ln 2, and psi is the derivative of lgamma.
    euler = 0.57721566490153286
    assert abs(digamma(1.0) + euler) < 1e-13
    assert abs(digamma(0.5) + euler + 2 * math.log(2)) < 1e-13
    for v in (0.03, 0.9, 3.3, 47.0, 2500.0):
        h = 1e-5 * v
        numeric = (math.lgamma(v + h) - math.lgamma(v - h)) / (2 * h)
        assert abs(digamma(v) - numeric) < 1e-6 * max(1.0, abs(numeric))
        if scipy_digamma is not None:
            assert abs(digamma(v) - float(scipy_digamma(v))) < 1e-12 * max(1.0, abs(digamma(v)))


@settings(max_examples=60, deadline=None)
@given(
    alpha0=st.floats(0.05, 5.0),
    gamma=st.lists(st.floats(0.0, 5e4), min_size=1, max_size=9),
    mask_bits=st.integers(0, 2**9 - 1),
)
def test_expected_log_pi_is_digamma_difference_and_minus_inf_when_inactive(alpha0, gamma, mask_bits) -> None:
    k = len(gamma)
    active = torch.tensor([(mask_bits >> i) & 1 == 1 for i in range(k)])
    if not active.any():
        active[0] = True
    w = DirichletWeights(k, alpha0=alpha0)
    w.gamma.copy_(torch.tensor(gamma, dtype=torch.float64))
    got = w.expected_log_pi(active)
    alphas = [alpha0 + g for g, a in zip(gamma, active.tolist()) if a]
    total = digamma(sum(alphas))
    expected = [digamma(a) - total for a in alphas]
    np.testing.assert_allclose(got[active].numpy(), expected, rtol=1e-10, atol=1e-10)
    assert torch.all(got[~active] == -math.inf)
    mean = w.mean(active)
    assert abs(float(mean.sum()) - 1.0) < 1e-12
    assert torch.all(mean[~active] == 0)
    np.testing.assert_allclose(mean[active].numpy(), np.array(alphas) / sum(alphas), rtol=1e-12)


def test_expected_log_pi_matches_monte_carlo_dirichlet() -> None:
    """Not just the formula: it is the mean of log pi under Dirichlet(alpha0 + gamma) over the active slots."""
    w = DirichletWeights(4, alpha0=0.8)
    w.gamma.copy_(torch.tensor([2.0, 999.0, 0.3, 6.0], dtype=torch.float64))
    active = torch.tensor([True, False, True, True])
    torch.manual_seed(0)
    draws = torch.distributions.Dirichlet(torch.tensor([2.8, 1.1, 6.8], dtype=torch.float64)).sample((200_000,))
    logs = draws.log()
    se = logs.std(0) / math.sqrt(len(logs))
    got = w.expected_log_pi(active)[active]
    assert torch.all((got - logs.mean(0)).abs() < 4 * se), (got, logs.mean(0), se)


def test_gamma_halves_every_half_life_without_responsibility() -> None:
    w = DirichletWeights(3, half_life=500.0)
    start = torch.tensor([640.0, 64.0, 0.0], dtype=torch.float64)
    w.gamma.copy_(start)
    for n in range(1, 5):
        w.update(torch.zeros(3), 500)
        torch.testing.assert_close(w.gamma, start / 2**n, rtol=1e-12, atol=0)
    # Decay depends on the records seen, not on how they were batched.
    a, b = DirichletWeights(2, half_life=300.0), DirichletWeights(2, half_life=300.0)
    a.gamma.fill_(100.0)
    b.gamma.fill_(100.0)
    a.update(torch.zeros(2), 450)
    for n in (1, 49, 100, 300):
        b.update(torch.zeros(2), n)
    torch.testing.assert_close(a.gamma, b.gamma, rtol=1e-12, atol=0)
    torch.testing.assert_close(a.gamma, torch.full((2,), 100.0 * 2**-1.5, dtype=torch.float64), rtol=1e-12, atol=0)


def test_update_decays_then_adds_and_ignores_empty_batches() -> None:
    w = DirichletWeights(2, half_life=100.0)
    w.gamma.copy_(torch.tensor([8.0, 4.0], dtype=torch.float64))
    w.update(torch.tensor([3.0, 1.0]), 100)
    torch.testing.assert_close(w.gamma, torch.tensor([7.0, 3.0], dtype=torch.float64))
    w.update(torch.tensor([50.0, 50.0]), 0)
    torch.testing.assert_close(w.gamma, torch.tensor([7.0, 3.0], dtype=torch.float64))


@pytest.mark.parametrize("batch", [1, 32])
def test_total_mass_converges_to_the_effective_count(batch) -> None:
    half_life = 400.0
    w = DirichletWeights(2, half_life=half_life)
    for _ in range(int(12 * half_life) // batch):
        w.update(torch.tensor([0.75 * batch, 0.25 * batch]), batch)
    # Fixed point of g -> g d + b with d = 2^(-b/h): b / (1 - d) = h/ln2 + b/2 + O(b^2/h).
    assert abs(float(w.gamma.sum()) - w.effective_count) < batch / 2 + 0.01 * w.effective_count
    active = torch.tensor([True, True])
    torch.testing.assert_close(w.mean(active), torch.tensor([0.75, 0.25], dtype=torch.float64), rtol=0, atol=2e-3)
