"""Mutes: an operator silences an asset, or one channel of it, until a `ts`.

A muted asset's incidents are still opened, updated and resolved, and its alerts still published: their
messages say `muted: true`, so a pager can drop them while the history stays whole (nothing is silently
dropped). A channel mute covers the incidents and alerts whose top channel it is. Time is the records' own
`ts` (epoch milliseconds), so a replay of the same input mutes the same records, also when it replays old
data; a mute ends by itself at its `until` and is forgotten once the asset's records pass it (a scope keeps at
most MAX_MUTES: the ones ending first make room).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_MUTES = 1024  # per scope: mutes of assets that never send again would otherwise be kept for good


@dataclass(frozen=True)
class Mute:
    asset: str
    channel: str | None  # None: the whole asset
    until: int  # ts (epoch ms) from which records are no longer muted
    by: dict[str, Any] = field(default_factory=dict)  # operator, note, control_source

    def as_dict(self) -> dict[str, Any]:
        return {"asset": self.asset, "channel": self.channel, "until": self.until, **self.by}


@dataclass
class Mutes:
    """The live mutes of one scope, keyed by (asset, channel)."""

    live: dict[tuple[str, str | None], Mute] = field(default_factory=dict)

    def set(self, mute: Mute) -> None:
        """A later mute of the same asset and channel replaces the earlier one (also to shorten it)."""
        self.live[(mute.asset, mute.channel)] = mute
        while len(self.live) > MAX_MUTES:
            self.live.pop(min(self.live, key=lambda k: self.live[k].until))

    def clear(self, asset: str, channel: str | None) -> Mute | None:
        return self.live.pop((asset, channel), None)

    def covers(self, asset: str, ts: int, channel: str | None = None) -> bool:
        """Whether a record (or an incident) of `asset` at `ts`, whose top channel is `channel`, is muted."""
        if not self.live:
            return False
        whole = self.live.get((asset, None))
        if whole is not None and ts < whole.until:
            return True
        one = self.live.get((asset, channel)) if channel is not None else None
        return one is not None and ts < one.until

    def passed(self, assets: np.ndarray, ts: np.ndarray) -> None:
        """Forget the mutes whose asset has a record at or past their `until` among these (one batch)."""
        for mute in list(self.live.values()) if len(ts) else []:
            mine = ts[assets == mute.asset]
            if len(mine) and int(mine.max()) >= mute.until:
                self.clear(mute.asset, mute.channel)

    def for_asset(self, asset: str) -> list[Mute]:
        return [m for (a, _), m in self.live.items() if a == asset]

    def to_state(self) -> list[dict[str, Any]]:
        return [m.as_dict() for m in self.live.values()]

    @classmethod
    def from_state(cls, items: list[dict[str, Any]]) -> Mutes:
        out = cls()
        for d in items:
            rest = {k: v for k, v in d.items() if k not in ("asset", "channel", "until")}
            out.set(Mute(str(d["asset"]), None if d["channel"] is None else str(d["channel"]), int(d["until"]), rest))
        return out
