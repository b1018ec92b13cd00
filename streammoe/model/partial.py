"""p-values of records with missing dimensions, judged like with like against the same mode's records.

A marginal NLL over fewer dimensions is smaller and spread differently than a full one (fewer terms, a smaller
log-Jacobian, and which dimensions are missing matters as much as how many), so the full-dimension calibration
cannot say how rare it is. For each missing pattern in a batch, the replay records of the record's mode (normal
records that mode learned from) are scored by the mixture twice: in full, and with the same dimensions masked.
The masked NLL is mapped onto the full-dimension scale by the monotone linear map that matches the two score
distributions at their 75th and 98th percentiles (the upper bulk, below the learning threshold's 1 % cut), and
the mapped score gets the mode's calibrated p-value, as a full record with that score would.

Why not use the replay records' masked scores as the null directly: replay holds only records that were learned
(p at or above the learning threshold, so their top 1 % is cut off) and were trained on in replay steps, so its
upper tail is too short and a null built from it alarms too often. Both cuts hit the full and the masked scores
of the same records alike, so the map, taken from the bulk, cancels them, and the tail comes from the
calibration measured on fresh records.

The reference pass uses its own random generator, seeded from the stream position, so the main generator's
stream (and with it every full record's result) is the same whether or not a batch holds partial records.
"""

from __future__ import annotations

import torch
from torch import Tensor

from streammoe.model.calibration import MIN_MODE_SCORES
from streammoe.model.mixture import MixtureOfVAEs

# Where the masked and the full score distributions are matched: the upper bulk, which sets the tail's slope, but
# below replay's 1 % cut. Tried on the simulated machine (seeds 0-2): (0.5, 0.95) alarmed 1.3-2.1x the complete
# records' rate at p < 1e-3 with 1-2 channels masked, (0.75, 0.98) 0.9-1.5x (benchmarks/missing.py).
MAP_QUANTILES = (0.75, 0.98)
REFS_PER_MODE = 256  # replay records per mode scored per missing pattern (the reservoir is a uniform sample)
MIN_SPREAD = 1e-3  # nats: a flatter masked distribution than this is mapped by a shift alone


def references(model: MixtureOfVAEs, modes: Tensor) -> tuple[Tensor, Tensor]:
    """Up to REFS_PER_MODE replay records of each of `modes`, with their mode; every active mode's if one of
    them has fewer than MIN_MODE_SCORES (it is then judged against the pooled references)."""
    wanted = [int(k) for k in modes.unique().tolist()]
    if any(model.replay.from_mode(k).shape[0] < MIN_MODE_SCORES for k in wanted):
        wanted = torch.nonzero(model.active).flatten().tolist()
    xs, ks = [], []
    for k in wanted:
        x = model.replay.from_mode(k)[:REFS_PER_MODE]
        xs.append(x)
        ks.append(torch.full((x.shape[0],), k, dtype=torch.int64, device=x.device))
    if not xs:
        return model.replay.records.new_zeros((0, model.n_channels)), torch.zeros(0, dtype=torch.int64)
    return torch.cat(xs), torch.cat(ks)


def _quantiles(scores: Tensor) -> Tensor:
    return torch.quantile(scores.double(), torch.tensor(MAP_QUANTILES, dtype=torch.float64, device=scores.device))


def _map(full: Tensor, masked: Tensor) -> tuple[float, float]:
    """(offset, slope) of the map masked -> full score that matches their MAP_QUANTILES."""
    qf, qm = _quantiles(full), _quantiles(masked)
    spread = float(qm[1] - qm[0])
    slope = float(qf[1] - qf[0]) / spread if spread > MIN_SPREAD else 1.0
    return float(qf[0]) - slope * float(qm[0]), slope


@torch.no_grad()
def partial_log_p(
    model: MixtureOfVAEs,
    n_samples: int,
    seed: int,
    log_p: Tensor,
    nll: Tensor,
    mode: Tensor,
    missing: Tensor,
    rows: Tensor,
) -> Tensor:
    """`log_p` (B,) with the rows marked in `rows` (finite, partial) judged like with like; `nll` and `mode` are
    their masked scores and modes, `missing` (B, C) their missing dimensions. Without any replay record to
    compare with, a row keeps its masked score's p-value under the full calibration (it then alerts less)."""
    refs, ref_modes = references(model, mode[rows])
    if refs.shape[0] < MIN_MODE_SCORES:
        return log_p
    generator = torch.Generator(device=refs.device)
    generator.manual_seed(seed)
    full = -model.evaluate(refs, n_samples, generator).log_px
    out = log_p.clone()
    patterns, inverse = torch.unique(missing[rows], dim=0, return_inverse=True)
    idx = torch.nonzero(rows).flatten()
    for j in range(patterns.shape[0]):
        these = idx[inverse == j]
        observed = (~patterns[j]).expand(refs.shape[0], -1)
        masked = -model.evaluate(refs, n_samples, generator, observed).log_px
        ok = torch.isfinite(full) & torch.isfinite(masked)
        mapped = nll[these].clone()
        for k in mode[these].unique().tolist():
            of_k = ok & (ref_modes == k)
            if int(of_k.sum()) < MIN_MODE_SCORES:
                of_k = ok
            offset, slope = _map(full[of_k], masked[of_k])
            at = mode[these] == k
            mapped[at] = offset + slope * nll[these][at]
        out[these] = model.calibration.log_p_value(mode[these], mapped)
    return out
