"""Which model a record belongs to: one global model, one per asset group, or one per asset.

A scope is the unit of model state: it is learned, checkpointed, snapshotted and handed between workers as a
whole. For a worker to own a scope's records it must own their partitions, so producers key input records by
the asset (or the asset group) and every record of a scope lands in one partition.

    STREAMMOE_SCOPES__MODE=global                          one model for everything (default)
    STREAMMOE_SCOPES__MODE=asset                           one model per asset id
    STREAMMOE_SCOPES__MODE=group
    STREAMMOE_SCOPES__GROUP_PATTERN='^(line-[0-9]+)-'      the first capture group of the asset id names the group
    STREAMMOE_SCOPES__GROUPS='{"pump-7": "line-2"}'        explicit assignments win over the pattern
    STREAMMOE_SCOPES__DEFAULT_GROUP=unassigned             assets neither names
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

GLOBAL_SCOPE = "global"
SCOPE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class ScopeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["global", "group", "asset"] = "global"
    group_pattern: str | None = Field(None, description="Regex; its first capture group in the asset id is the group.")
    groups: dict[str, str] = Field(default_factory=dict, description="Asset id -> group, ahead of the pattern.")
    default_group: str = Field("unassigned", description="The group of assets neither `groups` nor the pattern name.")

    @field_validator("group_pattern")
    @classmethod
    def _one_group(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                compiled = re.compile(v)
            except re.error as e:
                raise ValueError(f"not a regular expression: {e}") from None
            if compiled.groups < 1:
                raise ValueError("needs a capture group, e.g. '^(line-[0-9]+)-'")
        return v

    @model_validator(mode="after")
    def _group_mode_needs_a_rule(self) -> ScopeSettings:
        if self.mode == "group" and self.group_pattern is None and not self.groups:
            raise ValueError("mode 'group' needs STREAMMOE_SCOPES__GROUP_PATTERN or STREAMMOE_SCOPES__GROUPS")
        return self


class ScopeMap:
    """asset id -> scope name, cached (a plant has thousands of assets, a batch repeats them many times).

    Scope names become directory names and Kafka keys, so any character outside [A-Za-z0-9._-] is replaced."""

    def __init__(self, settings: ScopeSettings) -> None:
        self.settings = settings
        self._pattern = re.compile(settings.group_pattern) if settings.group_pattern else None
        self._cache: dict[str, str] = {}

    def scope_of(self, asset: str) -> str:
        scope = self._cache.get(asset)
        if scope is None:
            scope = self._cache[asset] = self._resolve(asset)
        return scope

    def _resolve(self, asset: str) -> str:
        s = self.settings
        if s.mode == "global":
            return GLOBAL_SCOPE
        if s.mode == "asset":
            return safe_name(asset)
        if asset in s.groups:
            return safe_name(s.groups[asset])
        m = self._pattern.search(asset) if self._pattern is not None else None
        return safe_name(m.group(1) if m and m.group(1) else s.default_group)


def safe_name(name: str) -> str:
    """`name` if it is a usable scope name, else a cleaned form with a digest, so "a/b" and "a_b" stay apart."""
    if SCOPE_NAME.match(name) and not name.startswith("."):
        return name
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100].lstrip(".") or "_"
    return f"{cleaned}-{hashlib.sha1(name.encode()).hexdigest()[:10]}"
