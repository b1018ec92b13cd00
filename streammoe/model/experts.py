"""K Gaussian VAEs evaluated in one batched pass, each on its own standardisation of the raw records.

Expert k sees u_k = (x - loc_k) / scale_k, with a location and scale per channel learned from its own records
(at fit time and when it is added), so a mode far from the others is modelled as precisely as one near them.
Its density on the original scale is p_k(x) = p~_k(u_k) / prod_c scale_kc: the log-Jacobian enters every
log-likelihood, so experts stay comparable (responsibilities, the mixture, merges) whatever their scales.

Every weight has a leading expert axis, so all experts run as batched matrix products (`baddbmm`) and the
hot path never loops over experts in Python. Capacity for `k_max` experts is allocated up front; `active`
marks the slots in use, so adding or retiring an expert never rebuilds the module (and never invalidates an
optimizer that holds its parameters).

Inputs past the first `n_values` (a time context's features, context/inputs.py) may be reconstructed by a linear
Gaussian map from the latent code instead of the decoder, f | z ~ N(A z + b, diag exp(lv)): its log-density for
each importance sample is then a quadratic form in z, so those inputs cost per sample O(Z^2) instead of the
decoder's O(H) per input, and the S-sample pass is paid for the record's own values only (`linear_log_density`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

LOG_2PI = math.log(2.0 * math.pi)
# Decoder log-variances are softly bounded: the lower bound keeps a channel that was constant in training
# from claiming infinite precision, the upper bound keeps a diverging expert from explaining everything.
LOGVAR_MIN = -6.0
LOGVAR_MAX = 4.0
# Standardised inputs are clipped only to keep every expert's arithmetic finite (float32) for any finite reading:
# a record this many of an expert's own spreads away is hopelessly unexplained by it, and no expert ever learns
# from such a record (it learns from its own records; the memory keeps raw values).
CLIP = 1000.0


@dataclass(frozen=True)
class ImportanceSamples:
    """What an IWAE pass yields for `K` experts, `S` samples and `B` records."""

    log_w: Tensor  # (K, S, B) log importance weights log p(x, z_s) - log q(z_s | x)
    mean: Tensor  # (K, S, B, V) decoder means (V: the decoded inputs, all C without a linear part)
    logvar: Tensor  # (K, S, B, V) decoder log-variances (the aleatoric part)
    sq_resid: Tensor  # (K, S, B, V) squared standardised residuals (x - mean)^2 / exp(logvar)
    z: Tensor | None = None  # (K, S, B, Z) the samples, kept where a linear part needs them for its blame
    u: Tensor | None = None  # (K, B, C) the standardised inputs, likewise


def _soft_bound(raw: Tensor, low: float, high: float) -> Tensor:
    """Map to (low, high) smoothly so gradients never vanish at the bounds the way `clamp` makes them."""
    return low + (high - low) * torch.sigmoid((raw - (low + high) / 2) / ((high - low) / 4))


def _soft_bound_once(raw: Tensor, low: float, high: float) -> Tensor:
    """`_soft_bound` with the same arithmetic, bit for bit, in one fresh tensor (no autograd: inference only)."""
    return raw.sub((low + high) / 2).div_((high - low) / 4).sigmoid_().mul_(high - low).add_(low)


def _gaussian_log_density(x: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    return -0.5 * (LOG_2PI + logvar + (x - mean).pow(2) * torch.exp(-logvar))


class StackedVAE(nn.Module):
    """`k_max` VAEs x -> h -> (mu_z, logvar_z); z -> h -> (mean_x, logvar_x), weights stacked over experts.
    With `n_values` < `n_channels` the inputs past it are reconstructed linearly: z -> (A z + b, lv)."""

    active: Tensor
    loc: Tensor
    scale: Tensor

    def __init__(
        self, k_max: int, n_channels: int, hidden: int = 64, latent: int = 8, n_values: int | None = None
    ) -> None:
        super().__init__()
        self.k_max, self.n_channels, self.hidden, self.latent = k_max, n_channels, hidden, latent
        self.n_values = n_channels if n_values is None else n_values
        if not 0 < self.n_values <= n_channels:
            raise ValueError(f"n_values must be in 1..{n_channels}, got {n_values}")
        v, f = self.n_values, n_channels - self.n_values
        shapes = {
            "enc_w1": (k_max, n_channels, hidden),
            "enc_b1": (k_max, 1, hidden),
            "enc_w2": (k_max, hidden, 2 * latent),
            "enc_b2": (k_max, 1, 2 * latent),
            "dec_w1": (k_max, latent, hidden),
            "dec_b1": (k_max, 1, hidden),
            "dec_w2": (k_max, hidden, 2 * v),
            "dec_b2": (k_max, 1, 2 * v),
        }
        if f:  # registered after the decoder's: a model without a linear part has the state it always had
            shapes.update({"lin_w": (k_max, latent, f), "lin_b": (k_max, 1, f), "lin_lv": (k_max, 1, f)})
        for name, shape in shapes.items():
            self.register_parameter(name, nn.Parameter(torch.zeros(shape)))
        self.register_buffer("active", torch.zeros(k_max, dtype=torch.bool))
        self.register_buffer("loc", torch.zeros(k_max, n_channels))
        self.register_buffer("scale", torch.ones(k_max, n_channels))
        for k in range(k_max):
            self.reset_expert(k)

    @torch.no_grad()
    def reset_expert(self, k: int, generator: torch.Generator | None = None) -> None:
        """Give slot `k` fresh weights (Glorot-uniform, zero biases); leaves `active` alone."""
        for name, p in self.named_parameters():
            if name.endswith(("b1", "b2", "lin_b", "lin_lv")):
                p[k].zero_()
            else:
                fan_in, fan_out = p.shape[1], p.shape[2]
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                p[k].uniform_(-bound, bound, generator=generator)

    @torch.no_grad()
    def copy_expert(self, src: int, dst: int) -> None:
        self.load_expert(dst, self, src)

    @torch.no_grad()
    def load_expert(self, dst: int, other: StackedVAE, src: int = 0) -> None:
        """Slot `dst` becomes `other`'s expert `src`: weights, location and scale (a candidate taking a slot)."""
        for p, q in zip(self.parameters(), other.parameters()):
            p[dst].copy_(q[src])
        self.loc[dst].copy_(other.loc[src])
        self.scale[dst].copy_(other.scale[src])

    @torch.no_grad()
    def set_scale(self, k: int, x: Tensor, floor: Tensor | None = None) -> None:
        """Expert k's location and scale from its own raw records `x` (N, C) (floored like the global scaler, and
        at `floor` per channel where given)."""
        from streammoe.model.scaler import location_scale

        loc, scale = location_scale(x)
        self.loc[k].copy_(loc)
        self.scale[k].copy_(scale if floor is None else torch.maximum(scale, floor.to(scale.dtype)))

    def _weights(self, idx: Tensor | None) -> dict[str, Tensor]:
        """The selected experts' weights, with their location and scale as (K, 1, C) and log-Jacobians (K,)."""
        params: dict[str, Tensor] = dict(self.named_parameters())
        params.update(loc=self.loc, scale=self.scale)
        if idx is not None:
            params = {name: p.index_select(0, idx) for name, p in params.items()}
        params["log_det"] = torch.log(params["scale"]).sum(-1)
        params["loc"], params["scale"] = params["loc"].unsqueeze(1), params["scale"].unsqueeze(1)
        return params

    def encode(self, x: Tensor, w: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Raw x (B, C) -> posterior mean and log-variance (K, B, Z) for every selected expert."""
        h = torch.relu(torch.baddbmm(w["enc_b1"], standardise(x, w), w["enc_w1"]))
        out = torch.baddbmm(w["enc_b2"], h, w["enc_w2"])
        mu, raw = out.chunk(2, dim=-1)
        return mu, _soft_bound(raw, -8.0, 4.0)

    def decode(self, z: Tensor, w: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """z (K, N, Z) -> decoder mean and log-variance (K, N, C)."""
        h = torch.relu(torch.baddbmm(w["dec_b1"], z, w["dec_w1"]))
        out = torch.baddbmm(w["dec_b2"], h, w["dec_w2"])
        mean, raw = out.chunk(2, dim=-1)
        return mean, _soft_bound(raw, LOGVAR_MIN, LOGVAR_MAX)

    def draw_eps(self, k: int, n_samples: int, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The standard-normal noise of one IWAE pass, (K, S, B, Z), drawn from `generator`."""
        return torch.randn((k, n_samples, x.shape[0], self.latent), generator=generator, device=x.device, dtype=x.dtype)

    def importance_samples(
        self, x: Tensor, n_samples: int, idx: Tensor | None = None, generator: torch.Generator | None = None
    ) -> ImportanceSamples:
        """Draw `n_samples` z per record and expert from q(z|x) and weigh them (the IWAE estimator)."""
        w = self._weights(idx)
        eps = self.draw_eps(w["enc_w1"].shape[0], n_samples, x, generator)
        return importance_from_eps(x, eps, w)

    def iwae(
        self, x: Tensor, n_samples: int, idx: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """IWAE bound on log p_k(x) of raw records, (K, B); equals the (sampled) ELBO for one sample, tightens as S
        grows."""
        s = self.importance_samples(x, n_samples, idx, generator)
        return torch.logsumexp(s.log_w, dim=1) - math.log(n_samples)

    def elbo(self, x: Tensor, idx: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Single-sample ELBO of raw records (B, C), or of each expert's own (K, B, C), with the analytic KL
        term, (K, B): the training objective (low variance), on the original scale (log-Jacobian included)."""
        w = self._weights(idx)
        mu, logvar = self.encode(x, w)
        eps = torch.randn(mu.shape, generator=generator, device=x.device, dtype=x.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps
        mean, dec_logvar = self.decode(z, w)
        u = standardise(x, w)
        v = self.n_values
        rec = _gaussian_log_density(u[..., :v], mean, dec_logvar).sum(-1)
        if "lin_w" in w:
            lin_mean = torch.baddbmm(w["lin_b"], z, w["lin_w"])
            rec = rec + _gaussian_log_density(u[..., v:], lin_mean, linear_logvar(w).expand_as(lin_mean)).sum(-1)
        kl = 0.5 * (mu.pow(2) + torch.exp(logvar) - 1.0 - logvar).sum(-1)
        return rec - kl - w["log_det"][:, None]


def standardise(x: Tensor, w: dict[str, Tensor]) -> Tensor:
    """Raw records (B, C), or (K, B, C) with each expert's own records (model/sparse.py), in each selected
    expert's own units, (K, B, C), clipped at +-CLIP."""
    return (((x.unsqueeze(0) if x.dim() == 2 else x) - w["loc"]) / w["scale"]).clamp(-CLIP, CLIP)


def importance_from_eps(
    x: Tensor, eps: Tensor, w: dict[str, Tensor], observed: Tensor | None = None, inplace: bool | None = None
) -> ImportanceSamples:
    """The IWAE pass of raw records `x` (B, C) for given noise `eps` (K, S, B, Z): a pure function of tensors, so
    it can be compiled. Means and variances come back in each expert's own units; log_w is on the original scale.

    One batched matrix product per layer for all experts; the squared standardised residual is computed once
    and kept, because the channel blame needs it again.

    `observed` (B, C), 1.0 where a reading is present and 0.0 where it is missing: log_w is then the marginal over
    the observed dimensions. The decoder is a diagonal Gaussian, so p(x_obs | z) is the product of its observed
    factors (exactly), and the log-Jacobian sums over the observed channels only. The encoder sees a missing
    input at the expert's own location (0 in its units): only the proposal q(z | x) depends on that imputation,
    and any proposal gives a valid importance-sampling estimate of log p(x_obs). Residuals of missing channels
    are 0, so they take no share of the blame.

    `inplace` (default: whenever autograd is off, as in scoring, merges and candidates' checks; autograd cannot
    go through it): the (K, S, B, C) and (K, S*B, hidden) intermediates are computed in place, bit for bit the
    same values, with fewer fresh tensors: the E-step's time is mostly elementwise passes over them, and a
    smaller working set stays in cache."""
    if inplace is None:
        inplace = not torch.is_grad_enabled()
    u = standardise(x, w)  # (K, B, C)
    if observed is not None:
        u = u * observed
    h = torch.relu(torch.baddbmm(w["enc_b1"], u, w["enc_w1"]))
    mu, raw = torch.baddbmm(w["enc_b2"], h, w["enc_w2"]).chunk(2, dim=-1)
    logvar = _soft_bound(raw, -8.0, 4.0)  # (K, B, Z)
    k, n_samples, b, zdim = eps.shape
    z = mu.unsqueeze(1) + torch.exp(0.5 * logvar).unsqueeze(1) * eps  # (K, S, B, Z)
    h = torch.baddbmm(w["dec_b1"], z.reshape(k, n_samples * b, zdim), w["dec_w1"])
    h = h.relu_() if inplace else torch.relu(h)
    mean, raw = torch.baddbmm(w["dec_b2"], h, w["dec_w2"]).chunk(2, dim=-1)
    mean = mean.reshape(k, n_samples, b, -1)
    bound = _soft_bound_once if inplace else _soft_bound
    dec_logvar = bound(raw, LOGVAR_MIN, LOGVAR_MAX).reshape(k, n_samples, b, -1)
    linear = "lin_w" in w  # the inputs past the decoded ones are reconstructed linearly (module docstring)
    v = mean.shape[-1]
    uv, ov = (u[..., :v], None if observed is None else observed[..., :v]) if linear else (u, observed)
    diff = uv.unsqueeze(1) - mean
    if inplace:
        sq_resid = diff.square_().mul_(dec_logvar.neg().exp_())
    else:
        sq_resid = diff.square() * torch.exp(-dec_logvar)
    if ov is None:
        log_px_z = -0.5 * (v * LOG_2PI + dec_logvar.sum(-1) + sq_resid.sum(-1)) - w["log_det"][:, None, None]
    else:
        assert observed is not None
        sq_resid = sq_resid.mul_(ov) if inplace else sq_resid * ov
        log_det = (torch.log(w["scale"]) * observed).sum(-1)  # (K, B): the Jacobian of the observed channels
        n_obs = ov.sum(-1)  # (B,)
        log_px_z = -0.5 * (n_obs * LOG_2PI + (dec_logvar * ov).sum(-1) + sq_resid.sum(-1)) - log_det[:, None]
    if linear:
        log_px_z = log_px_z + linear_log_density(u[..., v:], z, w, None if observed is None else observed[:, v:])
    # log p(z) - log q(z|x) for z = mu + std * eps: the LOG_2PI terms cancel.
    log_pz_qz = -0.5 * (z.square().sum(-1) - logvar.sum(-1).unsqueeze(1) - eps.square().sum(-1))
    kept = (z, u) if linear else (None, None)
    return ImportanceSamples(log_px_z + log_pz_qz, mean, dec_logvar, sq_resid, *kept)


def linear_logvar(w: dict[str, Tensor]) -> Tensor:
    """The linear part's log-variances (K, 1, F), softly bounded like the decoder's."""
    return _soft_bound(w["lin_lv"], LOGVAR_MIN, LOGVAR_MAX)


def linear_log_density(u: Tensor, z: Tensor, w: dict[str, Tensor], observed: Tensor | None = None) -> Tensor:
    """log N(u; A z_s + b, diag exp(lv)) of standardised inputs `u` (K, B, F) for every sample `z` (K, S, B, Z),
    (K, S, B), without forming the (K, S, B, F) means: with precisions p and r = u - b the squared misfit is
    sum p r^2 - 2 z.(A (p r)) + z' (A diag(p) A') z, whose per-record parts are computed once. `observed` (B, F)
    float leaves missing inputs out (then A diag(p) A' is per record)."""
    lv = linear_logvar(w)
    prec, r, a = torch.exp(-lv), u - w["lin_b"], w["lin_w"]
    k, n_samples, b, zdim = z.shape
    if observed is None:
        pr = prec * r
        const = (pr * r).sum(-1) + lv.sum(-1) + u.shape[-1] * LOG_2PI  # (K, B)
        flat = z.reshape(k, n_samples * b, zdim)
        quad = (torch.bmm(flat, torch.bmm(a * prec, a.transpose(1, 2))) * flat).sum(-1).reshape(k, n_samples, b)
    else:
        pm = prec * observed
        pr = pm * r
        const = (pr * r).sum(-1) + (lv * observed).sum(-1) + observed.sum(-1) * LOG_2PI
        quad = torch.einsum("ksbz,kbzy,ksby->ksb", z, torch.einsum("kzf,kbf,kyf->kbzy", a, pm, a), z)
    cross = (z * torch.bmm(pr, a.transpose(1, 2)).unsqueeze(1)).sum(-1)  # (K, S, B)
    return -0.5 * (const.unsqueeze(1) - 2.0 * cross + quad)


def linear_blame(s: ImportanceSamples, w: dict[str, Tensor], mode: Tensor, observed: Tensor | None = None) -> Tensor:
    """The linear part's squared standardised residuals (B, S, F) under each record's expert `mode` (B,): the
    channel blame's share of those inputs, formed for one expert per record only."""
    assert s.z is not None and s.u is not None
    rows = torch.arange(mode.shape[0], device=mode.device)
    v = s.mean.shape[-1]
    mean = torch.baddbmm(w["lin_b"][mode], s.z[mode, :, rows], w["lin_w"][mode])  # (B, S, F)
    sq = (s.u[mode, rows, v:].unsqueeze(1) - mean).square() * torch.exp(-linear_logvar(w)[mode])
    return sq if observed is None else sq * observed[:, None, v:]
