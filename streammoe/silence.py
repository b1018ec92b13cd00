"""Assets that stop sending: a silence longer than a configured time raises an `asset_silent` event, and the
asset's next record an `asset_resumed` one. A dead sensor or a cut link sends no bad records to flag, only none.

Time is the records' own (`clock="ts"`, epoch milliseconds: an asset is silent once the newest `ts` of any asset
this worker reads is that far past its last one, so a replay or a paused input raises nothing by itself) or the
daemon's (`clock="wall"`: since its last record arrived). Each asset is tracked by the worker that owns its
partition; the assets of revoked or lost partitions are forgotten (their new owner tracks them from their next
record). Only assets seen since start are tracked: one that never sends after a restart raises nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SilenceSettings(BaseModel):
    """STREAMMOE_SILENCE__*: when an asset that stopped sending raises an event."""

    model_config = ConfigDict(extra="forbid")

    after_s: float = Field(0.0, ge=0, description="Seconds without a record after which an asset is silent; 0 = off.")
    clock: Literal["ts", "wall"] = Field(
        "ts",
        description="`ts`: the records' time (epoch ms), measured against the newest record of any asset; "
        "`wall`: the daemon's clock since the asset's last record arrived.",
    )
    per_asset: dict[str, float] = Field(
        default_factory=dict,
        description='Asset id -> seconds, ahead of after_s (0 = never), e.g. {"pump-7": 600}.',
    )


@dataclass
class _Seen:
    ts: int
    wall: float
    partition: int
    silent: bool = False


@dataclass
class SilenceWatch:
    settings: SilenceSettings
    now: Callable[[], float] = time.monotonic
    _assets: dict[str, _Seen] = field(default_factory=dict)
    _newest_ts: int | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.after_s > 0 or any(v > 0 for v in self.settings.per_asset.values())

    def _limit_s(self, asset: str) -> float:
        return self.settings.per_asset.get(asset, self.settings.after_s)

    def seen(self, assets: Iterable[str], ts: Iterable[int], partitions: Iterable[int]) -> list[dict]:
        """Record a batch's valid records; returns an `asset_resumed` event for each asset that was silent."""
        if not self.enabled:
            return []
        wall = self.now()
        resumed = []
        for asset, t, p in zip(assets, ts, partitions, strict=True):
            t = int(t)
            last = self._assets.get(asset)
            if last is not None and last.silent:
                resumed.append(
                    {
                        "kind": "asset_resumed",
                        "asset": asset,
                        "last_ts": last.ts,
                        "ts": t,
                        "silent_s": round(self._gap_s(last, t, wall), 3),
                        "clock": self.settings.clock,
                    }
                )
            if last is None or t >= last.ts or last.silent:
                self._assets[asset] = _Seen(t, wall, int(p))
            else:  # out of order: keep the newest time, note the arrival
                last.wall = wall
            self._newest_ts = t if self._newest_ts is None else max(self._newest_ts, t)
        return resumed

    def _gap_s(self, seen: _Seen, ts_now: int | None, wall_now: float) -> float:
        if self.settings.clock == "wall":
            return wall_now - seen.wall
        return 0.0 if ts_now is None else (ts_now - seen.ts) / 1000.0

    def check(self) -> list[dict]:
        """`asset_silent` events for assets silent past their limit since the last check (once per silence)."""
        if not self.enabled:
            return []
        wall = self.now()
        events = []
        for asset, seen in self._assets.items():
            limit = self._limit_s(asset)
            if seen.silent or limit <= 0:
                continue
            gap = self._gap_s(seen, self._newest_ts, wall)
            if gap > limit:
                seen.silent = True
                events.append(
                    {
                        "kind": "asset_silent",
                        "asset": asset,
                        "last_ts": seen.ts,
                        "silent_s": round(gap, 3),
                        "limit_s": limit,
                        "clock": self.settings.clock,
                    }
                )
        return events

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        gone = set(partitions)
        self._assets = {a: s for a, s in self._assets.items() if s.partition not in gone}

    def __len__(self) -> int:
        return len(self._assets)
