"""Fit a mixture from normal data that may hold several operating modes.

1. Learn the scaler. 2. Cluster the scaled data with diagonal Gaussian mixtures for K = 1..fit_capacity(k_max) (a
quarter of the slots stay free for modes that appear later), each fitted on 75 % of a sample and scored on the
other 25 %; keep the smallest K whose held-out log-likelihood is within `k_tolerance` nats per record and channel
of the best K's (BIC took the maximum on every data set tried: correlated channels and discrete levels make a
diagonal Gaussian mixture gain from every split, but a split of one mode gains little per channel, a real mode a
lot); clusters lighter than `min_expert_weight` get no expert. 3. Train the experts on their clusters (hard responsibilities), then
switch to soft responsibilities (stochastic variational EM). 4. Set the mixture weights, the calibration
(on held-out rows where there are enough) and the replay reservoirs from a final E-step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.mixture import GaussianMixture

from streammoe.model.learning import ExpertLearner
from streammoe.model.mixture import MixtureOfVAEs

HOLDOUT_FRACTION = 0.1
SHORT_HOLDOUT_FRACTION = 0.25
MIN_ROWS_FOR_HOLDOUT = 2000
CLUSTER_SAMPLE = 8000
HARD_PHASE = 0.4
MIN_ROWS_PER_CLUSTER = 200
MAX_EPOCHS = 40
MIN_STEPS = 300


def block_length(n: int, blocks: int, share: float = HOLDOUT_FRACTION) -> int:
    """Rows in each of `blocks` held-out runs that together hold `share` of n rows."""
    return max(1, n // (round(1 / share) * blocks))


def guarded_blocks(
    n: int, blocks: int, guard: int, device: torch.device, share: float = HOLDOUT_FRACTION
) -> tuple[torch.Tensor, torch.Tensor]:
    """(held-out, training) row indices of a long fit in `blocks` blocks in time: the rows cut into runs of
    `block_length`, one run in round(1 / share) held out, and the rows within `guard` (at most one run's length) of
    a held-out run in neither, so no held-out row has a training row that near. Rows held out at random sit one
    record from training rows; on a process whose disturbances move slowly the experts have all but seen them and
    the tail comes out too narrow, but a few blocks cover fewer of the process's states (docs/model.md)."""
    every = round(1 / share)
    length = block_length(n, blocks, share)
    held = (torch.arange(n, device=device) // length) % every == every - 1
    guard = min(guard, length)
    near = held
    if guard > 0:
        wide = torch.nn.functional.max_pool1d(held[None, None].float(), 2 * guard + 1, stride=1, padding=guard)
        near = wide[0, 0] > 0
    return torch.nonzero(held).flatten(), torch.nonzero(~near).flatten()


def correlation_lag(xs: torch.Tensor, max_lag: int) -> int:
    """Rows over which neighbours stay alike: the largest lag L <= max_lag at which the mean autocorrelation of the
    moving channels of `xs` (scaled rows in time order) is still at least 1/e at every lag up to L; 0 for
    independent rows, about -1 / ln(a) for an AR(1) of coefficient a."""
    x = xs.double()
    x = x - x.mean(0)
    moving = x.std(0) > 1e-6
    n = x.shape[0]
    if max_lag < 1 or n < 3 or not bool(moving.any()):
        return 0
    x = x[:, moving] / x[:, moving].std(0)
    spectrum = torch.fft.rfft(x, 2 * n, dim=0)
    lags = min(max_lag + 1, n - 1)
    acf = torch.fft.irfft(spectrum.abs() ** 2, 2 * n, dim=0)[1 : lags + 1]
    acf = acf / torch.arange(n - 1, n - 1 - lags, -1, dtype=x.dtype, device=x.device)[:, None]
    below = torch.nonzero(acf.mean(1) * n / (n - 1) < math.exp(-1)).flatten()
    return min(int(below[0]) if len(below) else lags, max_lag)


def heldout_rows(n: int, share: float, at_least: int) -> int:
    """Rows a long fit holds out at random: `share` of them, or `at_least` up to twice that share. A tail rests on
    a count of scores, not a share: a short fit's tenth leaves each mode too few past its 95 % quantile, while a
    long fit's tenth is plenty and its experts keep all the rest to train on."""
    return max(int(n * share), min(at_least, int(n * 2 * share)))


def fit_capacity(k_max: int) -> int:
    """Experts a fit may choose by itself: a quarter of the slots (at least one) stay free for new modes."""
    return max(1, k_max - max(1, k_max // 4)) if k_max > 1 else 1


@dataclass
class FitReport:
    n_rows: int
    k_selected: int
    heldout_ll: dict[int, float] = field(default_factory=dict)  # per candidate K, nats per record and channel
    weights: list[float] = field(default_factory=list)
    final_loss: float = float("nan")
    skipped_steps: int = 0
    poisoned_rows: int = 0  # rows left out for a sentinel or out-of-bounds reading (model/poison.py)


def choose_clusters(
    xs: np.ndarray, k_max: int, k: int | None, min_weight: float, seed: int, tolerance: float = 0.2
) -> tuple[np.ndarray, int, dict[int, float]]:
    """Cluster labels for every row, the number of clusters kept, and the held-out log-likelihood per candidate K
    (nats per record and channel)."""
    rng = np.random.default_rng(seed)
    sample = xs[rng.permutation(len(xs))[:CLUSTER_SAMPLE]]
    candidates = [k] if k is not None else list(range(1, min(k_max, max(1, len(sample) // MIN_ROWS_PER_CLUSTER)) + 1))
    n_hold = len(sample) // 4 if k is None and len(candidates) > 1 else 0
    hold, train = sample[:n_hold], sample[n_hold:]
    models, ll = {}, {}
    for n in candidates:
        gmm = GaussianMixture(n, covariance_type="diag", reg_covar=1e-3, random_state=seed, max_iter=200, n_init=1)
        models[n] = gmm.fit(train)
        ll[n] = float(gmm.score(hold)) / xs.shape[1] if n_hold else float("nan")
    best = max(ll.values()) if n_hold else float("nan")
    chosen = (
        min((n for n in candidates if ll[n] >= best - tolerance), default=candidates[0]) if n_hold else candidates[0]
    )
    gmm = models[chosen]
    keep = np.flatnonzero(gmm.weights_ >= min_weight) if k is None else np.arange(gmm.n_components)
    if keep.size == 0:
        keep = np.array([int(np.argmax(gmm.weights_))])
    proba = gmm.predict_proba(xs)[:, keep]
    return np.argmax(proba, axis=1), int(keep.size), ll


def fit_mixture(
    model: MixtureOfVAEs,
    x: torch.Tensor,
    k: int | None = None,
    generator: torch.Generator | None = None,
    progress: Callable[[int], None] | None = None,
    split: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[FitReport, ExpertLearner]:
    """Fit `model` in place on raw records `x` (N, C); returns the report and the learner (optimizer state).
    `split` (held-out rows, training rows): the caller's choice instead of the rule below (a time context's
    blocks, context/holdout.py)."""
    cfg = model.config
    n = x.shape[0]
    model.scaler.update(x)
    xs = model.scaler.transform(x)
    if k is not None and k > cfg.k_max:
        raise ValueError(f"k={k} experts do not fit in k_max={cfg.k_max} slots")
    labels_np, k_sel, heldout = choose_clusters(
        xs.cpu().numpy(), fit_capacity(cfg.k_max), k, cfg.min_expert_weight, cfg.seed, cfg.k_tolerance
    )
    labels = torch.as_tensor(labels_np, device=x.device)
    with torch.no_grad():
        model.experts.active.zero_()
        model.experts.active[:k_sel] = True
        for j in range(model.config.k_max):  # each expert in its own cluster's units (all rows for an empty one)
            rows = x[labels == j] if j < k_sel else x[:0]
            model.experts.set_scale(j, rows if rows.shape[0] > 1 else x)
    learner = ExpertLearner(model, generator)

    if split is not None:
        hold, train = (t.to(x.device) for t in split)
        n_hold = len(hold)
    elif n >= MIN_ROWS_FOR_HOLDOUT and cfg.holdout_blocks > 0:
        length = block_length(n, cfg.holdout_blocks, cfg.holdout_share)
        guard = correlation_lag(xs, length) if cfg.holdout_guard < 0 else cfg.holdout_guard
        hold, train = guarded_blocks(n, cfg.holdout_blocks, guard, x.device, cfg.holdout_share)
        n_hold = len(hold)
    elif n >= MIN_ROWS_FOR_HOLDOUT:
        perm = torch.randperm(n, generator=generator, device=x.device)
        n_hold = heldout_rows(n, cfg.holdout_share, cfg.holdout_rows)
        hold, train = perm[:n_hold], perm[n_hold:]
    else:
        # A short warm-up is one stretch of time: calibrate on its latest part, which is nearer to what comes
        # next than a random sample of rows the experts were trained on.
        n_hold = int(n * SHORT_HOLDOUT_FRACTION)
        hold, train = torch.arange(n - n_hold, n, device=x.device), torch.arange(n - n_hold, device=x.device)
    hard = torch.nn.functional.one_hot(labels, cfg.k_max).to(x.dtype)
    counts = hard[train].sum(0).double()
    with torch.no_grad():
        model.weights.gamma.copy_(counts)
    report = FitReport(n_rows=n, k_selected=k_sel, heldout_ll={n: round(v, 4) for n, v in heldout.items()})
    # Small data gets fewer passes: a few hundred rows trained for thousands of steps make over-confident
    # decoder variances, and every later row then looks anomalous.
    n_steps = min(cfg.fit_steps, max(MIN_STEPS, MAX_EPOCHS * len(train) // cfg.fit_batch))
    hard_steps = int(n_steps * HARD_PHASE)
    for step in range(n_steps):
        batch = train[
            torch.randint(len(train), (min(cfg.fit_batch, len(train)),), generator=generator, device=x.device)
        ]
        # dense at any learn_min_resp: a fit is what it was before sparse steps (they are about the online cost)
        result = learner.step(x[batch], hard[batch] if step < hard_steps else None, min_resp=0.0)
        report.skipped_steps += not result.applied
        report.final_loss = result.loss
        if progress is not None:
            progress(1)

    ev = model.evaluate(x[train], cfg.n_samples, generator)
    scale = min(1.0, model.weights.effective_count / max(1, len(train)))
    with torch.no_grad():
        model.weights.gamma.copy_(ev.resp.sum(0).double() * scale)
    weights = model.weights.mean(model.active)
    light = model.active & (weights < cfg.min_expert_weight / 2)
    if light.any() and int((model.active & ~light).sum()) > 0:
        with torch.no_grad():
            model.experts.active &= ~light
            model.weights.gamma[light] = 0
        ev = model.evaluate(x[train], cfg.n_samples, generator)
    model.replay.add(ev.mode, x[train], generator)
    cal = model.evaluate(x[hold], cfg.n_samples, generator) if n_hold else ev
    model.calibration.update(cal.mode, -cal.log_px)
    if n >= MIN_ROWS_FOR_HOLDOUT:
        # A held-out sample of a mature fit anchors each mode's tail (model/calibration.py). A short warm-up's
        # experts keep maturing online on the records that follow, and its calibration must follow them down.
        model.calibration.pin()
    report.k_selected = model.n_active
    report.weights = [round(float(w), 4) for w in model.weights.mean(model.active)[model.active]]
    return report, learner
