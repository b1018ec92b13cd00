"""The linear feature head (ContextConfig.decoder "linear", model/experts.py): its closed-form density and blame
against the direct Gaussian, a model that uses it end to end, and format 3 (before it) loading as it was made.
The direct references are written from the definition f | z ~ N(A z + b, diag exp(lv)) with torch.distributions."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from streammoe.context.settings import ContextConfig
from streammoe.model.config import ModelConfig
from streammoe.model.detector import MixtureDetector
from streammoe.model.experts import (
    StackedVAE,
    importance_from_eps,
    linear_blame,
    linear_logvar,
    standardise,
)
from streammoe.state.persistence import FORMAT_VERSION, load_detector, save_detector

DATA = Path(__file__).resolve().parent.parent / "data"
V, F = 4, 3  # decoded values, linear inputs


def vae_with_linear_part(seed: int = 0) -> StackedVAE:
    torch.manual_seed(seed)
    vae = StackedVAE(3, V + F, hidden=5, latent=3, n_values=V).double()
    with torch.no_grad():  # non-zero biases and variances, so one taken from the wrong expert shows
        for name, p in vae.named_parameters():
            if "_b" in name or name.endswith("lv"):
                p.normal_(0, 0.3)
        vae.loc.normal_(0, 1)
        vae.scale.uniform_(0.5, 2)
    vae.active[:] = True
    return vae


@pytest.mark.parametrize("masked", [False, True])
def test_the_linear_part_is_the_gaussian_of_its_definition(masked: bool) -> None:
    vae = vae_with_linear_part()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, V + F, dtype=torch.float64, generator=g) * 2
    observed = (torch.rand(6, V + F, generator=g) > 0.3).double() if masked else None
    eps = torch.randn(3, 5, 6, 3, dtype=torch.float64, generator=g)
    with torch.no_grad():
        w = vae._weights(None)
        full = importance_from_eps(x, eps, w, observed)
        u = standardise(x, w)
        if observed is not None:  # the encoder sees every input, so the values alone need the same proposal
            u = u * observed
        assert full.z is not None
        mean = torch.einsum("ksbz,kzf->ksbf", full.z, w["lin_w"]) + w["lin_b"].unsqueeze(1)
        std = torch.exp(0.5 * linear_logvar(w)).unsqueeze(1).expand_as(mean)
        direct = Normal(mean, std).log_prob(u[..., V:].unsqueeze(1))
        log_det = torch.log(w["scale"][..., V:]).expand(3, 6, F)
        if observed is not None:
            direct, log_det = direct * observed[:, V:], log_det * observed[:, V:]
        linear_part = direct.sum(-1) - log_det.sum(-1).unsqueeze(1)
        # log_w = values' log p(x | z) + the linear part + log p(z) - log q(z | x): the values' part recomputed
        values_part = Normal(full.mean, torch.exp(0.5 * full.logvar)).log_prob(u[..., :V].unsqueeze(1))
        v_det = torch.log(w["scale"][..., :V]).expand(3, 6, V)
        if observed is not None:
            values_part, v_det = values_part * observed[:, :V], v_det * observed[:, :V]
        prior = Normal(0.0, 1.0).log_prob(full.z).sum(-1)
        rest = full.log_w - linear_part - (values_part.sum(-1) - v_det.sum(-1).unsqueeze(1)) - prior
        # what remains is -log q(z | x), the same for every sample given its eps: -log N(eps; 0, 1) + sum log std
        q = -Normal(0.0, 1.0).log_prob(eps).sum(-1)
        torch.testing.assert_close(rest - q, (rest - q)[:, :1].expand_as(rest), rtol=1e-9, atol=1e-9)
        mode = torch.tensor([0, 2, 1, 1, 0, 2])
        blame = linear_blame(full, w, mode, observed)
        rows = torch.arange(6)
        sq = ((u[..., V:].unsqueeze(1) - mean) / std).square()[mode, :, rows]
        if observed is not None:
            sq = sq * observed[:, None, V:]
        torch.testing.assert_close(blame, sq, rtol=1e-10, atol=1e-10)


def test_without_a_linear_part_the_state_is_what_it_was() -> None:
    a, b = StackedVAE(2, 6, 4, 2), StackedVAE(2, 6, 4, 2, n_values=6)
    assert list(a.state_dict()) == list(b.state_dict()) and not any("lin_" in k for k in a.state_dict())
    with pytest.raises(ValueError, match="n_values"):
        StackedVAE(2, 6, 4, 2, n_values=0)


def two_channel(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return np.stack([np.sin(t / 30), np.cos(t / 45)], 1) + rng.normal(0, 0.05, (n, 2))


def test_a_model_with_the_linear_head_fits_scores_explains_and_round_trips(tmp_path: Path) -> None:
    cfg = ModelConfig(k_max=3, hidden=16, latent=2, fit_steps=150, context=ContextConfig(window=4, decoder="linear"))
    det = MixtureDetector(2, cfg, ["flow", "temp"], device="cpu")
    det.fit(two_channel(800, 0))
    assert det.model.experts.n_values == 2 and det.model.n_channels == 8
    assert det.model.experts.dec_w2.shape[-1] == 4 and det.model.experts.lin_w.shape[-1] == 6
    x = two_channel(200, 1)
    x[100:130, 0] = x[100, 0]  # stuck: the features carry it
    save_detector(det, tmp_path / "m")
    scored = det.score_many(x)
    assert scored.input_share is not None and scored.input_share.shape == (200, 8)
    assert np.isfinite(scored.nll).all() and np.isfinite(scored.epistemic).all()
    np.testing.assert_allclose(scored.input_share.sum(1), 1.0, rtol=1e-5)
    again = load_detector(tmp_path / "m", device="cpu")
    assert again.config.context.decoder == "linear"
    np.testing.assert_array_equal(again.score_many(x).nll, scored.nll)
    missing = np.zeros_like(x, dtype=bool)
    missing[:5, 1] = True
    partial = det.score_many(x[:20], missing=missing[:20])
    assert np.isfinite(partial.nll).all() and partial.partial[:5].all() and not partial.partial[5:].any()
    det.learn_many(det.score_many(two_channel(128, 2)))  # the ELBO step runs through the linear part


def test_a_format_3_context_model_loads_with_its_features_decoded_and_saves_as_format_5(tmp_path: Path) -> None:
    """tests/data/model-v3-context was saved by the format-3 code with window 3 (tests/data/README.md): it loads
    with decoder full whatever the default, gives the probe's scores exactly, and saves as the current format."""
    shutil.copytree(DATA / "model-v3-context", tmp_path / "m")
    det = load_detector(tmp_path / "m", device="cpu", channels=["flow", "pressure", "temp"])
    assert det.config.context.window == 3 and det.config.context.decoder == "full"
    assert det.model.experts.n_values == det.model.n_channels == 12
    probe = np.load(DATA / "model-v3-context-probe.npz")
    scored = det.score_many(probe["x"])
    np.testing.assert_array_equal(scored.nll, probe["nll"])
    np.testing.assert_array_equal(scored.is_anomaly, probe["is_anomaly"])
    save_detector(det, tmp_path / "again")
    assert load_detector(tmp_path / "again").config.context.decoder == "full" and FORMAT_VERSION == 5
