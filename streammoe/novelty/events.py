"""What the mixture tells the operator when its set of experts changes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

EventKind = Literal["mode_added", "mode_retired", "mode_merged"]


@dataclass
class ModeEvent:
    kind: EventKind
    expert: int  # the slot added, retired, or merged away
    size: int  # records behind the decision (memory size for an added mode)
    first_ref: int | None = None  # caller's ids (e.g. source offsets) of the first and last triggering record
    last_ref: int | None = None
    first_ts: int | None = None
    last_ts: int | None = None
    into: int | None = None  # for mode_merged: the expert that absorbed it
    detail: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)
