"""One incident: what an asset's anomalous records add up to, from the first one to the last.

Aggregates are updated with numpy over all the rows a batch adds at once, never record by record. The state
round-trips through plain JSON types (`to_state` / `from_state`) so it can live in checkpoints and snapshots.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SEVERITIES = ("warning", "critical")
KEEP_RECORDS = 2048  # positions of an incident's latest anomalous records kept, for an operator's verdict
KINDS = ("anomaly", "new_mode")
VERDICTS = ("normal", "fault")


@dataclass(frozen=True)
class Source:
    """Where a record came from in the input: topic, partition, offset (offline: the file and the row)."""

    topic: str
    partition: int
    offset: int

    def as_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Source:
        return cls(str(d["topic"]), int(d["partition"]), int(d["offset"]))


def incident_id(scope: str, asset: str, source: Source) -> str:
    """Derived from input positions only, so a replay of the same records gives the same id."""
    key = "\0".join((scope, asset, source.topic, str(source.partition), str(source.offset)))
    return hashlib.sha1(key.encode()).hexdigest()[:20]


@dataclass
class Rows:
    """Records of one asset, in arrival order: the tracker's unit of work (numpy arrays of one length)."""

    j: np.ndarray  # the asset's record counter
    ts: np.ndarray
    partition: np.ndarray
    offset: np.ndarray
    flagged: np.ndarray
    critical: np.ndarray  # the record's severity is critical
    at_once: np.ndarray  # the record opens an incident without the debounce (incidents.opens_at_once)
    score: np.ndarray  # -log10(p-value); +inf when not finite
    p_value: np.ndarray
    mode: np.ndarray  # -1 when no expert explains the record
    share: np.ndarray  # (m, C) misfit share per channel; C may be 0

    def __len__(self) -> int:
        return len(self.j)

    def take(self, idx: np.ndarray | slice) -> Rows:
        return Rows(
            self.j[idx],
            self.ts[idx],
            self.partition[idx],
            self.offset[idx],
            self.flagged[idx],
            self.critical[idx],
            self.at_once[idx],
            self.score[idx],
            self.p_value[idx],
            self.mode[idx],
            self.share[idx],
        )

    @staticmethod
    def concat(parts: list[Rows]) -> Rows:
        return Rows(*(np.concatenate([getattr(p, f) for p in parts]) for f in Rows.__dataclass_fields__))

    def to_state(self) -> dict[str, list]:
        return {f: getattr(self, f).tolist() for f in Rows.__dataclass_fields__}

    @classmethod
    def from_state(cls, d: dict[str, list], n_channels: int) -> Rows:
        share = np.asarray(d["share"], np.float32).reshape(len(d["j"]), n_channels)
        return cls(
            np.asarray(d["j"], np.int64),
            np.asarray(d["ts"], np.int64),
            np.asarray(d["partition"], np.int32),
            np.asarray(d["offset"], np.int64),
            np.asarray(d["flagged"], bool),
            np.asarray(d["critical"], bool),
            np.asarray(d.get("at_once", d["critical"]), bool),  # incident state v1: every critical opened at once
            _floats(d["score"]),
            _floats(d["p_value"]),
            np.asarray(d["mode"], np.int64),
            share,
        )

    @classmethod
    def empty(cls, n_channels: int) -> Rows:
        return cls.from_state({f: [] for f in cls.__dataclass_fields__}, n_channels)


def mode_added_link(
    expert: int, first: Source, last: Source, detail: dict[str, Any] | None, expert_id: str | None
) -> dict[str, Any]:
    """An incident's `mode_event`: the `mode_added` event its records became (`expert_id`: what an operator's
    verdict on the expert names, incidents/operator.py)."""
    link = {
        "kind": "mode_added",
        "expert": int(expert),
        "first_source": first.as_dict(),
        "last_source": last.as_dict(),
        "detail": dict(detail or {}),
    }
    if expert_id is not None:
        link["expert_id"] = expert_id
    return link


def _floats(values: list) -> np.ndarray:
    return np.asarray([math.inf if v is None else v for v in values], np.float64)


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


@dataclass
class Incident:
    """An open or resolved incident of one asset in one scope; `sequence` counts the messages published."""

    id: str
    scope: str
    asset: str
    topic: str
    opened_by: Source
    opened_ts: int
    first_j: int
    first_ts: int
    first_source: Source
    last_j: int = -1
    last_ts: int = 0
    last_source: Source | None = None
    count: int = 0
    peak_score: float = -math.inf
    min_p_value: float = 1.0
    critical: bool = False
    mode_counts: dict[int, int] = field(default_factory=dict)
    channel_sum: np.ndarray = field(default_factory=lambda: np.zeros(0))
    kind: str = "anomaly"
    mode_event: dict[str, Any] | None = None
    resolution: dict[str, Any] | None = None
    sequence: int = -1
    published: dict[str, Any] = field(default_factory=dict)  # what the last message said: ts, count, severity, kind
    acknowledged: dict[str, Any] | None = None  # operator, note, control_source of the acknowledgement
    verdict: dict[str, Any] | None = None  # an operator's verdict: normal or fault, and what it did
    muted: bool = False  # as of the last message (incidents/mutes.py)
    records_at: list[list[int]] = field(default_factory=list)  # [partition, offset] of its last KEEP_RECORDS

    @property
    def severity(self) -> str:
        return "critical" if self.critical else "warning"

    def absorb(self, rows: Rows) -> None:
        """Add anomalous rows (all flagged, in arrival order) to the aggregates."""
        if not len(rows):
            return
        self.count += len(rows)
        self.last_j, self.last_ts = int(rows.j[-1]), int(rows.ts[-1])
        self.last_source = Source(self.topic, int(rows.partition[-1]), int(rows.offset[-1]))
        self.peak_score = max(self.peak_score, float(rows.score.max()))
        self.min_p_value = min(self.min_p_value, float(rows.p_value.min()))
        self.critical = self.critical or bool(rows.critical.any())
        modes, counts = np.unique(rows.mode[rows.mode >= 0], return_counts=True)
        for m, c in zip(modes.tolist(), counts.tolist()):
            self.mode_counts[m] = self.mode_counts.get(m, 0) + c
        fresh = np.stack([rows.partition[-KEEP_RECORDS:], rows.offset[-KEEP_RECORDS:]], axis=1).tolist()
        self.records_at = (self.records_at + fresh)[-KEEP_RECORDS:]
        if rows.share.shape[1]:
            total = rows.share.sum(axis=0, dtype=np.float64)
            self.channel_sum = total if self.channel_sum.size == 0 else self.channel_sum + total

    def resolve(self, by: str, ts: int | None, source: Source | None) -> None:
        self.resolution = {"by": by, "ts": ts, "source": None if source is None else source.as_dict()}

    def top_channels(self, channels: list[str], n: int) -> list[dict[str, Any]]:
        if self.channel_sum.size == 0 or not channels:
            return []
        total = float(self.channel_sum.sum())
        if total <= 0:
            return []
        order = np.argsort(-self.channel_sum, kind="stable")[:n]
        return [{"channel": channels[c], "share": round(float(self.channel_sum[c]) / total, 6)} for c in order]

    def modes(self, n: int = 3) -> list[dict[str, Any]]:
        total = sum(self.mode_counts.values())
        ranked = sorted(self.mode_counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
        return [{"mode": m, "share": round(c / total, 6)} for m, c in ranked] if total else []

    def body(self, channels: list[str], top_n: int) -> dict[str, Any]:
        """The incident's fields as the wire message carries them (without status and sequence)."""
        assert self.last_source is not None
        return {
            "incident_id": self.id,
            "kind": self.kind,
            "scope": self.scope,
            "asset": self.asset,
            "severity": self.severity,
            "opened_by": self.opened_by.as_dict(),
            "opened_ts": self.opened_ts,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "first_source": self.first_source.as_dict(),
            "last_source": self.last_source.as_dict(),
            "count": self.count,
            "records": self.last_j - self.first_j + 1,
            "peak_score": _finite_or_none(self.peak_score),
            "min_p_value": float(self.min_p_value),
            "modes": self.modes(),
            "top_channels": self.top_channels(channels, top_n),
            "mode_event": self.mode_event,
            "resolution": self.resolution,
            "acknowledged": self.acknowledged,
            "verdict": self.verdict,
            "muted": self.muted,
        }

    def to_state(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "scope": self.scope,
            "asset": self.asset,
            "topic": self.topic,
            "opened_by": self.opened_by.as_dict(),
            "opened_ts": self.opened_ts,
            "first_j": self.first_j,
            "first_ts": self.first_ts,
            "first_source": self.first_source.as_dict(),
            "last_j": self.last_j,
            "last_ts": self.last_ts,
            "last_source": None if self.last_source is None else self.last_source.as_dict(),
            "count": self.count,
            "peak_score": "inf" if self.peak_score == math.inf else _finite_or_none(self.peak_score),
            "min_p_value": self.min_p_value,
            "critical": self.critical,
            "mode_counts": {str(k): v for k, v in self.mode_counts.items()},
            "channel_sum": self.channel_sum.tolist(),
            "kind": self.kind,
            "mode_event": self.mode_event,
            "resolution": self.resolution,
            "sequence": self.sequence,
            "published": self.published,
            "acknowledged": self.acknowledged,
            "verdict": self.verdict,
            "muted": self.muted,
            "records_at": self.records_at,
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> Incident:
        peak = d["peak_score"]
        return cls(
            id=d["id"],
            scope=d["scope"],
            asset=d["asset"],
            topic=d["topic"],
            opened_by=Source.from_dict(d["opened_by"]),
            opened_ts=int(d["opened_ts"]),
            first_j=int(d["first_j"]),
            first_ts=int(d["first_ts"]),
            first_source=Source.from_dict(d["first_source"]),
            last_j=int(d["last_j"]),
            last_ts=int(d["last_ts"]),
            last_source=None if d["last_source"] is None else Source.from_dict(d["last_source"]),
            count=int(d["count"]),
            peak_score=math.inf if peak == "inf" else -math.inf if peak is None else float(peak),
            min_p_value=float(d["min_p_value"]),
            critical=bool(d["critical"]),
            mode_counts={int(k): int(v) for k, v in d["mode_counts"].items()},
            channel_sum=np.asarray(d["channel_sum"], np.float64),
            kind=d["kind"],
            mode_event=d["mode_event"],
            resolution=d["resolution"],
            sequence=int(d["sequence"]),
            published=dict(d["published"]),
            acknowledged=d.get("acknowledged"),  # incident state v1 had no operator commands
            verdict=d.get("verdict"),
            muted=bool(d.get("muted", False)),
            records_at=[[int(p), int(o)] for p, o in d.get("records_at", [])],
        )
