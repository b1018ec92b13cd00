"""Decode raw JSON sensor records into one float32 array per batch; every unusable record becomes a dead letter.

Accepted shapes (field names configurable)::

    {"asset_id": "pump-7", "ts": 1732000000123, "values": {"flow": 31.2, "temp": 61.0}}
    {"asset_id": "pump-7", "ts": 1732000000123, "values": [31.2, 61.0]}   # in the configured channel order

Channels in a dict that the configuration does not name are ignored (a sensor gaining a channel must not
stop the line); a configured channel that is missing dead-letters the record. `ts` is an integer (epoch
milliseconds by convention; the daemon passes it through). The decoder never raises: a record it cannot use
comes back as a `DeadLetter` with a reason code from `REASONS` and a human-readable detail.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import orjson

from streammoe.config import RecordSettings

REASONS = (
    "empty",
    "oversized",
    "not_json",
    "not_object",
    "missing_asset",
    "bad_asset",
    "missing_ts",
    "bad_ts",
    "missing_values",
    "bad_values",
    "missing_channel",
    "missing_value",
    "bad_value_type",
    "wrong_length",
    "non_finite",
)

_NUMBERS = frozenset((int, float))


@dataclass(frozen=True)
class DeadLetter:
    index: int  # position in the input batch
    reason: str  # one of REASONS
    detail: str


@dataclass
class DecodedBatch:
    """Valid records as parallel arrays; `index` maps each row back to its position in the input batch."""

    values: np.ndarray  # (n, C) float32
    ts: np.ndarray  # (n,) int64
    assets: list[str]
    index: np.ndarray  # (n,) int64
    dead: list[DeadLetter] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.assets)


class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        self.reason, self.detail = reason, detail


class RecordDecoder:
    """Reusable decoder for one channel layout; keeps a preallocated buffer that grows to the largest batch."""

    def __init__(self, settings: RecordSettings) -> None:
        self.settings = settings
        self.channels = list(settings.channels)
        self._buffer = np.empty((0, len(self.channels)), np.float32)

    def _row(self, raw: bytes | None) -> tuple[str, int, list]:
        s = self.settings
        if not raw:
            raise _Reject("empty", "record has no value")
        if len(raw) > s.max_record_bytes:
            raise _Reject("oversized", f"{len(raw)} bytes > max_record_bytes {s.max_record_bytes}")
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            reason = "non_finite" if "infinity" in str(e) else "not_json"
            raise _Reject(reason, str(e)) from None
        if type(obj) is not dict:
            raise _Reject("not_object", f"top level is {type(obj).__name__}, not an object")
        asset = obj.get(s.asset_field)
        if asset is None:
            raise _Reject("missing_asset", f"no {s.asset_field!r}")
        if type(asset) is not str or not asset:
            raise _Reject("bad_asset", f"{s.asset_field!r} must be a non-empty string")
        ts = obj.get(s.ts_field)
        if ts is None:
            raise _Reject("missing_ts", f"no {s.ts_field!r}")
        if type(ts) is not int:
            raise _Reject("bad_ts", f"{s.ts_field!r} must be an integer, got {type(ts).__name__}")
        if not -(2**63) <= ts < 2**63:
            raise _Reject("bad_ts", f"{s.ts_field!r} out of int64 range")
        values = obj.get(s.values_field)
        if values is None:
            raise _Reject("missing_values", f"no {s.values_field!r}")
        if type(values) is dict:
            try:
                row = [values[c] for c in self.channels]
            except KeyError as e:
                raise _Reject("missing_channel", f"channel {e.args[0]!r} missing") from None
        elif type(values) is list:
            if len(values) != len(self.channels):
                raise _Reject("wrong_length", f"{len(values)} values for {len(self.channels)} channels")
            row = values
        else:
            raise _Reject("bad_values", f"{s.values_field!r} must be an object or a list")
        if not set(map(type, row)) <= _NUMBERS:
            for name, v in zip(self.channels, row):
                if v is None:
                    raise _Reject("missing_value", f"channel {name!r} is null")
                if type(v) not in _NUMBERS:
                    raise _Reject("bad_value_type", f"channel {name!r} is {type(v).__name__}, not a number")
        return asset, ts, row

    def decode(self, raws: Sequence[bytes | None]) -> DecodedBatch:
        n = len(raws)
        if self._buffer.shape[0] < n:
            self._buffer = np.empty((n, len(self.channels)), np.float32)
        out = self._buffer
        ts = np.empty(n, np.int64)
        index = np.empty(n, np.int64)
        assets: list[str] = []
        dead: list[DeadLetter] = []
        j = 0
        with np.errstate(over="ignore"):  # a float64 beyond float32 becomes inf, reported below as non_finite
            for i, raw in enumerate(raws):
                try:
                    asset, t, row = self._row(raw)
                    out[j] = row
                except _Reject as r:
                    dead.append(DeadLetter(i, r.reason, r.detail))
                    continue
                except (OverflowError, ValueError, TypeError) as e:  # e.g. an int too large for float32
                    dead.append(DeadLetter(i, "bad_value_type", str(e)))
                    continue
                assets.append(asset)
                ts[j], index[j] = t, i
                j += 1
        values = out[:j].copy()
        finite = np.isfinite(values).all(axis=1)
        if not finite.all():
            for row in np.flatnonzero(~finite):
                bad = [self.channels[c] for c in np.flatnonzero(~np.isfinite(values[row]))]
                dead.append(DeadLetter(int(index[row]), "non_finite", f"not finite as float32: {bad}"))
            values, ts, index = values[finite], ts[:j][finite], index[:j][finite]
            assets = [a for a, ok in zip(assets, finite) if ok]
        else:
            ts, index = ts[:j], index[:j]
        dead.sort(key=lambda d: d.index)
        return DecodedBatch(values=values, ts=ts, assets=assets, index=index, dead=dead)
