"""Turn scored records into alert messages (JSON, keyed by asset) that match schemas/alert.schema.json."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np

from streammoe.config import AlertSettings
from streammoe.context.features import split_name
from streammoe.model.detector import ScoredBatch
from streammoe.state.scopes import GLOBAL_SCOPE

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Origin:
    """Where a record came from: the alert's idempotency key under at-least-once delivery."""

    topic: str
    partition: int
    offset: int


@cache
def _schema(name: str) -> dict:
    return json.loads(resources.files("streammoe.wire").joinpath("schemas", f"{name}.schema.json").read_text())


def alert_schema() -> dict:
    return _schema("alert")


def event_schema() -> dict:
    """Messages on the events topic (mode_added, mode_retired, mode_merged, mode_marked); see docs/alerts.md."""
    return _schema("event")


def control_schema() -> dict:
    """Operator commands on the control topic, as `streammoe.kafka.control.parse_command` accepts them."""
    return _schema("control")


def severity(p_value: float, settings: AlertSettings) -> str:
    return "critical" if p_value < settings.critical_p_value else "warning"


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def missing_channels(scored: ScoredBatch, row: int, channels: list[str]) -> list[str]:
    """The channels row `row` was scored without (null or absent in the record), in channel order."""
    if not scored.partial[row]:
        return []
    return [channels[c] for c in np.flatnonzero(scored.missing[row])]


def build_alert(
    scored: ScoredBatch,
    row: int,
    *,
    asset: str,
    ts: int,
    origin: Origin,
    channels: list[str],
    expert_status: dict[int, str],
    model_version: str,
    settings: AlertSettings,
    scope: str = GLOBAL_SCOPE,
    expert_ids: dict[int, str] | None = None,
) -> dict:
    """The alert for row `row` of a scored batch (the caller has checked `scored.is_anomaly[row]`).
    `expert_ids`: slot -> the expert's own identity (wire/identity.py), for `expert_id`."""
    valid = bool(scored.valid[row])
    mode = int(scored.mode[row])
    p_value = float(scored.p_value[row]) if valid else 0.0
    in_range = bool(scored.in_range[row])
    if not valid:
        reason = "non_finite"
    elif not in_range:
        reason = "out_of_range"
    elif expert_status.get(mode) == "fault":
        reason = "fault_mode"
    else:
        reason = "score"
    resp = scored.responsibilities[row]
    names = scored.names(channels)  # with a context: the channels, then their features (`d(flow)`)
    top = scored.top_channels(row, min(settings.top_channels, len(names))) if valid else []
    return {
        "schema_version": SCHEMA_VERSION,
        "alert_id": f"{origin.topic}/{origin.partition}/{origin.offset}",
        "asset": asset,
        "scope": scope,
        "ts": ts,
        "source": {"topic": origin.topic, "partition": origin.partition, "offset": origin.offset},
        "reason": reason,
        "severity": "critical" if not (valid and in_range) else severity(p_value, settings),
        "score": _finite(float(scored.score[row])),
        "neg_log10_p": _finite(float(scored.score[row])),
        "nll": _finite(float(scored.nll[row])),
        "p_value": p_value,
        "threshold": float(scored.threshold),
        "mode": mode if valid else None,
        "mode_status": expert_status.get(mode) if valid else None,
        "expert_id": (expert_ids or {}).get(mode) if valid else None,
        "responsibilities": {str(k): round(float(resp[k]), 6) for k in sorted(expert_status)},
        "mode_entropy": _finite(float(scored.mode_entropy[row])),
        "epistemic": _finite(float(scored.epistemic[row])),
        "aleatoric": _finite(float(scored.aleatoric[row])),
        "top_channels": [top_entry(names[c], s, c >= len(channels)) for c, s in top if np.isfinite(s)],
        "missing_channels": missing_channels(scored, row, channels),
        "model_version": model_version,
    }


def top_entry(name: str, share: float, derived: bool) -> dict:
    """One `top_channels` item: the channel; for a context feature (`derived`) also which one (`feature`: diff,
    mean, dev or std) and the input's name (`input`, e.g. `d(flow)`). Without `feature` it is the value."""
    if not derived:
        return {"channel": name, "share": round(share, 6)}
    channel, feature = split_name(name)
    return {"channel": channel, "share": round(share, 6), "feature": feature, "input": name}


def build_score(
    scored: ScoredBatch,
    row: int,
    *,
    asset: str,
    ts: int,
    origin: Origin,
    scope: str = GLOBAL_SCOPE,
    channels: list[str] | None = None,
) -> dict:
    """A compact per-record score for the optional scores topic (dashboards, threshold studies); `channels`
    names the missing ones (`missing_channels`, empty without `channels`)."""
    return {
        "asset": asset,
        "scope": scope,
        "ts": ts,
        "source": {"topic": origin.topic, "partition": origin.partition, "offset": origin.offset},
        "score": _finite(float(scored.score[row])),
        "neg_log10_p": _finite(float(scored.score[row])),
        "nll": _finite(float(scored.nll[row])),
        "is_anomaly": bool(scored.is_anomaly[row]),
        "mode": int(scored.mode[row]),
        "missing_channels": missing_channels(scored, row, channels) if channels is not None else [],
    }
