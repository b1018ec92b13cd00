"""The demo-faults bench's settings overrides: dotted paths into ModelConfig, validated like the environment's."""

from __future__ import annotations

import pydantic
import pytest

from benchmarks.demo_faults import with_settings
from streammoe.model.config import ModelConfig


def test_overrides_reach_nested_fields_and_keep_the_rest() -> None:
    base = ModelConfig(fit_steps=123)
    cfg = with_settings(base, ["novelty.lockin_share=0.03", "n_samples=2"])
    assert cfg.novelty.lockin_share == 0.03 and cfg.n_samples == 2
    assert cfg.fit_steps == 123 and cfg.novelty.lockin_window == base.novelty.lockin_window
    assert base.novelty.lockin_share == 0.0  # the base config is not changed


def test_an_override_out_of_range_is_refused_with_the_field_named() -> None:
    with pytest.raises(pydantic.ValidationError, match="lockin_share"):
        with_settings(ModelConfig(), ["novelty.lockin_share=2"])
    with pytest.raises(pydantic.ValidationError, match="bogus"):
        with_settings(ModelConfig(), ["novelty.bogus=1"])
    with pytest.raises(ValueError, match="no settings group 'nope'"):
        with_settings(ModelConfig(), ["nope.x=1"])
