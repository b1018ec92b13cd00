"""Routing records to model scopes: global, per asset, per asset group (explicit map, then pattern, then default)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from streammoe.state.scopes import GLOBAL_SCOPE, SCOPE_NAME, ScopeMap, ScopeSettings, safe_name


def test_global_mode_sends_every_asset_to_one_scope() -> None:
    m = ScopeMap(ScopeSettings())
    assert {m.scope_of(a) for a in ("pump-1", "line-2-fan", "")} == {GLOBAL_SCOPE}


def test_group_mode_explicit_map_then_pattern_then_default() -> None:
    m = ScopeMap(
        ScopeSettings(mode="group", group_pattern=r"^(line-[0-9]+)-", groups={"pump-7": "line-2"}, default_group="misc")
    )
    assert m.scope_of("line-1-pump-3") == "line-1"
    assert m.scope_of("line-12-fan") == "line-12"
    assert m.scope_of("pump-7") == "line-2"
    assert m.scope_of("compressor") == "misc"
    assert m.scope_of("line-1-pump-3") == "line-1", "cached answer is the same"


def test_asset_mode_gives_each_asset_its_own_safe_scope() -> None:
    m = ScopeMap(ScopeSettings(mode="asset"))
    assert m.scope_of("pump-1") == "pump-1"
    odd = [m.scope_of(a) for a in ("a/b", "a_b", "../etc", "ü", "x" * 300)]
    assert odd[1] == "a_b" and odd[0] != odd[1], "a cleaned name never collides with a real one"
    assert all(SCOPE_NAME.match(s) and not s.startswith(".") for s in odd)
    assert len(set(odd)) == len(odd)
    assert safe_name("..") != safe_name(".")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "group"}, "needs STREAMMOE_SCOPES__GROUP_PATTERN"),
        ({"mode": "group", "group_pattern": "line-[0-9]+"}, "needs a capture group"),
        ({"mode": "group", "group_pattern": "(unclosed"}, "not a regular expression"),
        ({"mode": "per-asset"}, "Input should be"),
    ],
)
def test_bad_scope_settings_are_refused_with_the_reason(kwargs: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ScopeSettings(**kwargs)
