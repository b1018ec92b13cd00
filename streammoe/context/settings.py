"""How much of an asset's past each record is judged with, and when that past stops counting."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ContextConfig(BaseModel):
    """The context window and the features built from it (`STREAMMOE_MODEL__CONTEXT__*`, `--context-*`).

    `window` 1 is no context: the experts see each record alone, as before there was a context. With a larger
    window each record's input is its values followed, per chosen feature, one value per channel."""

    model_config = ConfigDict(extra="forbid")

    window: int = Field(
        1, ge=1, le=256, description="Records of an asset each record is judged with, itself included (1: none)."
    )
    diff: bool = Field(True, description="Feature d(c): the change from the asset's previous record.")
    mean: bool = Field(False, description="Feature m(c): the mean of the channel over the window.")
    dev: bool = Field(False, description="Feature dev(c): the record's distance from the window's mean.")
    std: bool = Field(True, description="Feature sd(c): the channel's spread over the window.")
    rough: bool = Field(
        True,
        description="Feature rd(c): the root mean square of the changes between the window's consecutive "
        "records (its noise level, blind to a slow trend).",
    )
    decoder: Literal["full", "linear"] = Field(
        "full",
        description="How each expert reconstructs the features: 'full' with its decoder, like the values (every "
        "importance sample pays for every feature), 'linear' with a linear Gaussian map from the latent code, in "
        "closed form per sample (the features then cost about what the encoder does; model/experts.py).",
    )
    gap_ms: float = Field(
        60_000.0,
        gt=0,
        description="Daemon: a record more than this many ms (of `ts`) after its asset's previous one, or "
        "before it, starts the asset's context afresh.",
    )
    gap_steps: float = Field(
        10.0,
        gt=0,
        description="Files: a timestamp jump of more than this many of the series' median steps, or back, "
        "starts the context afresh.",
    )
    max_assets: int = Field(
        100_000, ge=1, description="Assets whose context is kept; the least recently seen beyond it are evicted."
    )

    @model_validator(mode="after")
    def _some_feature(self) -> ContextConfig:
        if self.window > 1 and not (self.diff or self.mean or self.dev or self.std or self.rough):
            raise ValueError("context.window > 1 needs at least one of diff, mean, dev, std, rough")
        return self

    @property
    def enabled(self) -> bool:
        return self.window > 1

    @property
    def features(self) -> tuple[str, ...]:
        """The chosen features in input order (none at window 1)."""
        if not self.enabled:
            return ()
        return tuple(f for f in ("diff", "mean", "dev", "std", "rough") if getattr(self, f))
