"""Sparse learning (model/sparse.py): with min_resp 0 it is the dense step; above it, a record sends no gradient
to an expert whose responsibility for it is under the bound."""

from __future__ import annotations

import torch

from streammoe.model.config import ModelConfig
from streammoe.model.mixture import MixtureOfVAEs
from streammoe.model.sparse import sparse_loss

K, C, N = 4, 6, 40


def model() -> MixtureOfVAEs:
    torch.manual_seed(0)
    m = MixtureOfVAEs(C, ModelConfig(k_max=K, hidden=16, latent=3))
    m.experts.active[:] = True
    m.experts.loc.copy_(torch.randn(K, C))
    m.experts.scale.copy_(torch.rand(K, C) + 0.5)
    return m


def grads(m: MixtureOfVAEs, loss: torch.Tensor) -> list[torch.Tensor]:
    m.experts.zero_grad(set_to_none=True)
    loss.backward()
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in m.experts.parameters()]


def responsibilities(seed: int) -> torch.Tensor:
    """(K, N): mostly one dominant expert per record, some shared, some exact zeros (replayed records)."""
    g = torch.Generator().manual_seed(seed)
    r = torch.softmax(4 * torch.randn(K, N, generator=g), dim=0)
    r[:, :8] = torch.nn.functional.one_hot(torch.arange(8) % K, K).T.float()
    return r


def test_min_resp_zero_is_the_dense_loss_and_gradient() -> None:
    m = model()
    idx = torch.arange(K)
    x = torch.randn(N, C) * 2
    r = responsibilities(1)
    dense = -(r * m.experts.elbo(x, idx, torch.Generator().manual_seed(3))).sum() / N
    g_dense = grads(m, dense)
    sparse = sparse_loss(m.experts, x, r, idx, 0.0, torch.Generator().manual_seed(3))
    g_sparse = grads(m, sparse)
    torch.testing.assert_close(sparse, dense)
    for a, b in zip(g_sparse, g_dense):
        torch.testing.assert_close(a, b)


def test_pairs_under_the_bound_send_no_gradient() -> None:
    m = model()
    idx = torch.arange(K)
    x = torch.randn(N, C) * 2
    r = responsibilities(2)
    r[:, 20] = torch.tensor([0.97, 0.01, 0.01, 0.01])
    r[3] = r[3].clamp(max=0.004)  # expert 3 never reaches the bound
    base = grads(m, sparse_loss(m.experts, x, r, idx, 0.02, torch.Generator().manual_seed(4)))
    moved = x.clone()
    moved[20] += 50.0  # record 20 now misfits every expert; only expert 0 may feel it
    after = grads(m, sparse_loss(m.experts, moved, r, idx, 0.02, torch.Generator().manual_seed(4)))
    names = [n for n, _ in m.experts.named_parameters()]
    for name, a, b in zip(names, base, after):
        assert torch.equal(a[3], torch.zeros_like(a[3])), f"{name}: expert 3 keeps no record"
        for k in (1, 2):
            torch.testing.assert_close(a[k], b[k], msg=f"{name}: expert {k} must not see record 20")
        assert not torch.allclose(a[0], b[0]), f"{name}: expert 0 learns from record 20"


def test_a_fit_is_the_same_at_any_bound() -> None:
    """Sparse steps are about the online cost: the fit's steps stay dense, so a fit does not depend on the bound."""
    import numpy as np

    from streammoe.model.detector import MixtureDetector

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (300, C)), rng.normal(6, 1, (300, C))]).astype(np.float32)
    states = []
    for bound in (0.0, 0.3):
        torch.manual_seed(0)
        det = MixtureDetector(C, ModelConfig(k_max=3, hidden=8, latent=2, fit_steps=60, learn_min_resp=bound))
        det.fit(x)
        states.append(det.model.experts.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
