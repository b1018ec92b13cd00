"""Features of a record's context window, NaN where its past does not define them.

A window is (B, W, C): the asset's last W records, oldest first, the record itself last; a position the asset
has no record for (a fresh asset, one after a gap, a channel missing from a record) is NaN. A feature is NaN
when its inputs are: d(c) and rd(c) without a previous value, sd(c) with fewer than two values. The caller decides what
a NaN feature means (the detector fills it with the fit's typical value; a masked likelihood may leave it out).
"""

from __future__ import annotations

import torch

FEATURES = {"diff": "d", "mean": "m", "dev": "dev", "std": "sd", "rough": "rd"}  # feature -> name prefix, `d(flow)`


def feature_names(channels: list[str], features: tuple[str, ...]) -> list[str]:
    """Input names: the channels, then per feature one name per channel. Parentheses, never ':' or ';', so
    SCORES.csv's `name:share;` encoding stays unambiguous."""
    return list(channels) + [f"{FEATURES[f]}({c})" for f in features for c in channels]


def split_name(name: str) -> tuple[str, str]:
    """(channel, feature) of an input name: ("flow", "value") for `flow`, ("flow", "diff") for `d(flow)`."""
    for feature, prefix in FEATURES.items():
        if name.startswith(prefix + "(") and name.endswith(")"):
            return name[len(prefix) + 1 : -1], feature
    return name, "value"


def window_features(windows: torch.Tensor, features: tuple[str, ...]) -> torch.Tensor:
    """(B, W, C) windows -> (B, F * C) features, in the order of `features`."""
    b, _, c = windows.shape
    if not features:
        return windows.new_zeros((b, 0))
    present = ~torch.isnan(windows)
    count = present.sum(1)
    zeroed = torch.where(present, windows, torch.zeros_like(windows))
    mean = zeroed.sum(1) / count.clamp(min=1)
    mean = torch.where(count > 0, mean, torch.full_like(mean, float("nan")))
    x = windows[:, -1]
    out = []
    for f in features:
        if f == "diff":
            out.append(x - windows[:, -2])
        elif f == "mean":
            out.append(mean)
        elif f == "dev":
            out.append(x - mean)
        elif f == "rough":
            steps = windows[:, 1:] - windows[:, :-1]
            ok = ~torch.isnan(steps)
            n = ok.sum(1)
            sq = torch.where(ok, steps**2, torch.zeros_like(steps)).sum(1)
            rough = (sq / n.clamp(min=1)).sqrt()
            out.append(torch.where(n >= 1, rough, torch.full_like(rough, float("nan"))))
        elif f == "std":
            sq = torch.where(present, (windows - mean[:, None]) ** 2, torch.zeros_like(windows)).sum(1)
            std = (sq / count.clamp(min=1)).sqrt()
            out.append(torch.where(count >= 2, std, torch.full_like(std, float("nan"))))
        else:
            raise ValueError(f"unknown context feature {f!r}; known: {sorted(FEATURES)}")
    return torch.cat(out, dim=1).reshape(b, len(features) * c)
