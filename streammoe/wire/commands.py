"""Operator commands on incidents, as they arrive on the control topic (JSON objects with a `command` field).

    {"command": "acknowledge", "incident_id": "5c1f0e9a2b7d4e6f8a01", "operator": "alice"}
    {"command": "mute", "asset": "pump-7", "channel": "temp", "for_s": 3600, "operator": "alice"}
    {"command": "unmute", "asset": "pump-7"}
    {"command": "verdict", "incident_id": "5c1f0e9a2b7d4e6f8a01", "verdict": "normal", "operator": "alice"}

Every command may carry `scope` (default `global`), `operator` and `note`. A mute ends at `until` (epoch ms,
compared with the records' `ts`) or `for_s` seconds after the command's own Kafka timestamp. A command without
`command` is a verdict on an expert (kafka/control.py). docs/alerts.md, "Control commands", says what each does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

COMMANDS = ("acknowledge", "mute", "unmute", "verdict")
VERDICTS = ("normal", "fault")
MAX_MUTE_S = 366 * 24 * 3600  # a year: a longer mute is a typo more often than a wish


@dataclass(frozen=True)
class IncidentCommand:
    command: str
    scope: str
    operator: str | None
    note: str | None
    incident_id: str | None = None  # acknowledge, verdict
    verdict: str | None = None  # verdict
    asset: str | None = None  # mute, unmute
    channel: str | None = None  # mute, unmute: None for the whole asset
    until: int | None = None  # mute: ts (epoch ms) at which it ends

    def by(self, control_source: dict[str, Any]) -> dict[str, Any]:
        """Who and where, as the incident message records it."""
        return {"operator": self.operator, "note": self.note, "control_source": control_source}


def _string(obj: dict, key: str, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"'{key}' must be a non-empty string" + ("" if required else " when given"))
    return value


def parse_incident_command(obj: dict, sent_ms: int | None, channels: list[str] | None = None) -> IncidentCommand:
    """The command in a control message's JSON object; `sent_ms` is its Kafka timestamp (for `for_s`).
    Raises ValueError naming what is wrong."""
    command = obj.get("command")
    if command not in COMMANDS:
        raise ValueError(f"'command' must be one of {', '.join(COMMANDS)} (or absent, for a verdict on an expert)")
    scope = obj.get("scope", "global")
    if not isinstance(scope, str) or not scope:
        raise ValueError("'scope' must be a non-empty string")
    operator, note = obj.get("operator"), obj.get("note")
    base: dict[str, Any] = {
        "command": command,
        "scope": scope,
        "operator": operator if isinstance(operator, str) else None,
        "note": note if isinstance(note, str) else None,
    }
    if command in ("acknowledge", "verdict"):
        base["incident_id"] = _string(obj, "incident_id")
        if command == "verdict":
            if obj.get("verdict") not in VERDICTS:
                raise ValueError(f"'verdict' must be one of {', '.join(VERDICTS)}")
            base["verdict"] = obj["verdict"]
        return IncidentCommand(**base)
    base["asset"] = _string(obj, "asset")
    base["channel"] = _string(obj, "channel", required=False)
    if channels is not None and base["channel"] is not None and base["channel"] not in channels:
        raise ValueError(f"no channel {base['channel']!r} (channels: {', '.join(channels)})")
    if command == "mute":
        base["until"] = _until(obj, sent_ms)
    return IncidentCommand(**base)


def _until(obj: dict, sent_ms: int | None) -> int:
    until, for_s = obj.get("until"), obj.get("for_s")
    if (until is None) == (for_s is None):
        raise ValueError("a mute needs exactly one of 'until' (epoch ms, as the records' ts) and 'for_s' (seconds)")
    if until is not None:
        if not isinstance(until, int) or isinstance(until, bool) or until <= 0:
            raise ValueError("'until' must be a positive integer: epoch milliseconds, as the records' ts")
        return until
    if not isinstance(for_s, int | float) or isinstance(for_s, bool) or not 0 < for_s <= MAX_MUTE_S:
        raise ValueError(f"'for_s' must be a number of seconds above 0 and at most {MAX_MUTE_S} (a year)")
    if sent_ms is None or sent_ms <= 0:
        raise ValueError("'for_s' counts from the command's Kafka timestamp, and this message has none: use 'until'")
    return int(sent_ms + for_s * 1000)
