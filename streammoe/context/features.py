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
    """(B, W, C) windows -> (B, F * C) features, in the order of `features`. NaN-aware reductions (`nansum`)
    over the window axis, each statistic computed once whichever features need it (the hot path's assembly)."""
    b, _, c = windows.shape
    if not features:
        return windows.new_zeros((b, 0))
    nan = windows.new_tensor(float("nan"))
    x = windows[:, -1]
    stats: dict[str, torch.Tensor] = {}
    if {"mean", "dev", "std"} & set(features):
        count = (~torch.isnan(windows)).sum(1)
        mean = torch.where(count > 0, windows.nansum(1) / count.clamp(min=1), nan)
        stats.update(mean=mean, dev=x - mean)
        if "std" in features:
            sq = (windows - mean[:, None]).square().nansum(1)  # NaN positions (and NaN means) add nothing
            stats["std"] = torch.where(count >= 2, (sq / count.clamp(min=1)).sqrt(), nan)
    if "rough" in features:
        steps = windows[:, 1:] - windows[:, :-1]
        n = (~torch.isnan(steps)).sum(1)
        stats["rough"] = torch.where(n >= 1, (steps.square().nansum(1) / n.clamp(min=1)).sqrt(), nan)
    if "diff" in features:
        stats["diff"] = x - windows[:, -2]
    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        raise ValueError(f"unknown context feature {unknown[0]!r}; known: {sorted(FEATURES)}")
    return torch.cat([stats[f] for f in features], dim=1).reshape(b, len(features) * c)
