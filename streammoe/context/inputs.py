"""The experts' input: each record's values followed by the features of its context window.

Built outside the model core, so the per-expert scaling, calibration, the short-term memory, candidate experts
and replay all hold and see the same input the experts do. At window 1 the input is the record itself, bit for
bit what it was before there was a context.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from streammoe.context.features import feature_names, window_features
from streammoe.context.settings import ContextConfig
from streammoe.context.store import ContextStore

DEFAULT_ASSET = "series"  # the asset of a records array given without asset ids (one series, one asset)


class ContextInputs:
    """Record -> expert input, with the per-asset context it keeps (part of the learned state)."""

    def __init__(self, config: ContextConfig, channels: Sequence[str], device: torch.device | str = "cpu") -> None:
        self.config = config
        self.channels = list(channels)
        self.features = config.features
        self.names = feature_names(self.channels, self.features)
        self.device = torch.device(device)
        self.store = ContextStore(config.window, len(self.channels), config.max_assets, self.device)
        self._clock = 0.0  # the time axis of records given without times: one step per record, never a gap

    @property
    def enabled(self) -> bool:
        return bool(self.features)

    @property
    def n_inputs(self) -> int:
        return len(self.names)

    @property
    def n_decoded(self) -> int:
        """Inputs the experts' decoder reconstructs: all, or with the linear feature head the values only."""
        return len(self.channels) if self.enabled and self.config.decoder == "linear" else self.n_inputs

    def build(
        self,
        x: torch.Tensor,
        assets: Sequence[str] | np.ndarray | None = None,
        times: np.ndarray | None = None,
        max_gap: float = math.inf,
        keep: torch.Tensor | None = None,
        update: bool = True,
    ) -> torch.Tensor:
        """(B, C) records -> (B, C + F*C) inputs, NaN where a feature is undefined (see context/features.py).

        `assets` default to one asset, `times` (float64, the unit of `max_gap`) to one step per record; `keep`
        False marks records whose values must not enter later records' features; `update` False reads the
        context without adding the records (records it already holds, re-read after a restart)."""
        if not self.enabled:
            return x
        b = x.shape[0]
        if assets is None:
            assets = np.full(b, DEFAULT_ASSET)
        if times is None:
            times = self._clock + np.arange(b, dtype=np.float64)
            if update:
                self._clock += b
        t = torch.as_tensor(np.asarray(times, dtype=np.float64), device=self.device)
        windows = self.store.windows(x, assets, t, max_gap, keep, update)
        return torch.cat([x, window_features(windows, self.features).to(x.dtype)], dim=1)

    def fit_input(
        self,
        x: torch.Tensor,
        keep: torch.Tensor,
        assets: Sequence[str] | np.ndarray | None,
        times: np.ndarray | None,
        max_gap: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A fit set's inputs, built afresh in time order, and which rows have their whole context (the fit
        learns from those only: an undefined feature has no value to learn)."""
        if not self.enabled:
            return x, torch.ones(len(x), dtype=torch.bool, device=x.device)
        self.reset()
        built = self.build(x, assets, times, max_gap, keep=keep)
        return built, ~torch.isnan(built).any(dim=1)

    def reset(self) -> None:
        """Forget every asset's context (a fit starts from its own records)."""
        self.store = ContextStore(self.config.window, len(self.channels), self.config.max_assets, self.device)
        self._clock = 0.0

    def fold(self, share: np.ndarray) -> np.ndarray:
        """Per-input shares (B, C + F*C) summed onto their channel (B, C): what per-channel summaries use."""
        if not self.enabled:
            return share
        return share.reshape(len(share), 1 + len(self.features), len(self.channels)).sum(1)

    def state(self) -> dict:
        return {**self.store.state(), "clock": self._clock}

    def load_state(self, state: dict) -> None:
        self.store.load_state(state)
        self._clock = float(state.get("clock", 0.0))
