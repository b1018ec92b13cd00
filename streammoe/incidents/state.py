"""A tracker's state as plain JSON, for checkpoints and scope snapshots, with its version and migrations.

Version 2 added what operators say: acknowledgements and verdicts on incidents, mutes, and the recently
resolved incidents they may still act on. A version-1 state (before operator commands) loads with none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streammoe.incidents.incident import Incident, Rows
from streammoe.incidents.mutes import Mutes

STATE_VERSION = 2
READS = (1, 2)


@dataclass
class AssetState:
    seen: int = 0  # records of this asset observed while it had state (the `j` of Rows)
    recent: Rows | None = None  # flagged records of the debounce window, not in an incident
    open: Incident | None = None
    last_wall: float = 0.0


@dataclass
class TrackerState:
    """Everything a tracker keeps between batches."""

    assets: dict[str, AssetState] = field(default_factory=dict)
    next_offsets: dict[str, dict[int, int]] = field(default_factory=dict)  # per input topic and partition
    mutes: Mutes = field(default_factory=Mutes)
    closed: dict[str, Incident] = field(default_factory=dict)  # recently resolved, oldest first


def state_to_json(s: TrackerState) -> dict[str, Any]:
    """JSON keys are strings: the partitions too."""
    return {
        "version": STATE_VERSION,
        "next_offsets": {t: {str(p): o for p, o in parts.items()} for t, parts in s.next_offsets.items()},
        "assets": {
            name: {
                "seen": st.seen,
                "recent": None if st.recent is None else st.recent.to_state(),
                "open": None if st.open is None else st.open.to_state(),
            }
            for name, st in s.assets.items()
        },
        "mutes": s.mutes.to_state(),
        "closed": [inc.to_state() for inc in s.closed.values()],
    }


def state_from_json(state: dict[str, Any], channels: int, now: float) -> TrackerState:
    """`state_to_json`'s output (this version or an older one), each asset's stale clock set to `now`."""
    version = state.get("version")
    if version not in READS:
        raise ValueError(f"incident state version {version!r}, this build reads {', '.join(map(str, READS))}")
    next_offsets = {t: {int(p): int(o) for p, o in parts.items()} for t, parts in state.get("next_offsets", {}).items()}
    assets = {
        name: AssetState(
            seen=int(d["seen"]),
            recent=None if d["recent"] is None else Rows.from_state(d["recent"], channels),
            open=None if d["open"] is None else Incident.from_state(d["open"]),
            last_wall=now,
        )
        for name, d in state["assets"].items()
    }
    closed = [Incident.from_state(d) for d in state.get("closed", [])]  # version 1: none kept
    return TrackerState(assets, next_offsets, Mutes.from_state(state.get("mutes", [])), {i.id: i for i in closed})
