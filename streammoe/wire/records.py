"""Decode raw JSON sensor records into one float32 array per batch; every unusable record becomes a dead letter.

Accepted shapes (field names configurable)::

    {"asset_id": "pump-7", "ts": 1732000000123, "values": {"flow": 31.2, "temp": 61.0}}
    {"asset_id": "pump-7", "ts": 1732000000123, "values": [31.2, 61.0]}   # in the configured channel order

Channels in a dict that the configuration does not name are ignored (a sensor gaining a channel must not
stop the line). A configured channel that is `null`, or absent from a dict, is missing: up to
`max_missing_share` of the channels may be (the record is then scored on the channels present, and
`DecodedBatch.missing` marks which are not); a record missing more is dead-lettered (`missing_channel` when one
is absent, else `missing_value`). `ts` is an integer (epoch milliseconds by convention; the daemon passes it
through). The decoder never raises: a record it cannot use comes back as a `DeadLetter` with a reason code from
`REASONS` and a human-readable detail.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter

import numpy as np
import orjson

from streammoe.config import RecordSettings

REASONS = (
    "tombstone",
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

    values: np.ndarray  # (n, C) float32; NaN where a channel is missing
    ts: np.ndarray  # (n,) int64
    assets: list[str]
    index: np.ndarray  # (n,) int64
    dead: list[DeadLetter] = field(default_factory=list)
    missing: np.ndarray | None = None  # (n, C) bool, True where a channel is missing; None: nothing is

    def __len__(self) -> int:
        return len(self.assets)

    def missing_rows(self, rows: np.ndarray) -> np.ndarray | None:
        """The missing mask of `rows`, or None when none of them misses a channel."""
        if self.missing is None:
            return None
        mask = self.missing[rows]
        return mask if mask.any() else None


class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        self.reason, self.detail = reason, detail


class RecordDecoder:
    """Reusable decoder for one channel layout.

    The hot path makes no numbers per record: each record is parsed and checked for its shape, its values
    are kept as orjson gave them, and one pass over the whole batch converts them into a single float32
    array. Only a batch holding a value that is not a plain int or float goes record by record, to name
    the offending records."""

    def __init__(self, settings: RecordSettings) -> None:
        self.settings = settings
        self.channels = list(settings.channels)
        pick = itemgetter(*self.channels)
        self._pick = pick if len(self.channels) > 1 else (lambda values: (pick(values),))
        # A record may miss this many channels (the rest are enough to score it on).
        self.max_missing = int(settings.max_missing_share * len(self.channels) + 1e-9)

    def _too_many_missing(self, reason: str, missing: list[str]) -> _Reject:
        return _Reject(
            reason,
            f"channels {missing} missing: {len(missing)} of {len(self.channels)}, more than max_missing_share "
            f"{self.settings.max_missing_share} allows ({self.max_missing})",
        )

    def _fields(self, raw: bytes | None) -> tuple[str, int, Sequence]:
        """Parse one record and check everything but the type of each value."""
        s = self.settings
        if raw is None:
            raise _Reject("tombstone", "record has a null value (a tombstone)")
        if not raw:
            raise _Reject("empty", "record has an empty value")
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
                row = self._pick(values)
            except KeyError:
                row = [values.get(c) for c in self.channels]  # absent channels as null: scored if few enough
                missing = [c for c, v in zip(self.channels, row) if v is None]
                if len(missing) > self.max_missing:
                    raise self._too_many_missing("missing_channel", missing) from None
        elif type(values) is list:
            if len(values) != len(self.channels):
                raise _Reject("wrong_length", f"{len(values)} values for {len(self.channels)} channels")
            row = values
        else:
            raise _Reject("bad_values", f"{s.values_field!r} must be an object or a list")
        return asset, ts, row

    def _check_values(self, row: Sequence) -> list[bool] | None:
        """Raise for a value that is no number; the row's missing channels (None when it has none)."""
        if set(map(type, row)) <= _NUMBERS:
            return None
        for name, v in zip(self.channels, row):
            if v is not None and type(v) not in _NUMBERS:
                raise _Reject("bad_value_type", f"channel {name!r} is {type(v).__name__}, not a number")
        missing = [v is None for v in row]
        if sum(missing) > self.max_missing:
            raise self._too_many_missing("missing_value", [c for c, m in zip(self.channels, missing) if m])
        return missing

    def decode(self, raws: Sequence[bytes | None]) -> DecodedBatch:
        n = len(raws)
        ts = np.empty(n, np.int64)
        index = np.empty(n, np.int64)
        assets: list[str] = []
        rows: list[Sequence] = []
        dead: list[DeadLetter] = []
        for i, raw in enumerate(raws):
            try:
                asset, t, row = self._fields(raw)
            except _Reject as r:
                dead.append(DeadLetter(i, r.reason, r.detail))
                continue
            ts[len(rows)], index[len(rows)] = t, i
            rows.append(row)
            assets.append(asset)
        j = len(rows)
        values = self._batch_values(rows)
        missing = None
        if values is None:  # a value is missing, not a plain number or too large: the records one by one
            values, missing, keep = self._row_by_row(rows, index[:j], dead)
            ts, index, assets = ts[:j][keep], index[:j][keep], [a for a, k in zip(assets, keep) if k]
            j = len(assets)
            if not missing.any():
                missing = None
        ts, index = ts[:j], index[:j]
        present = np.isfinite(values) if missing is None else np.isfinite(values) | missing
        finite = present.all(axis=1)
        if not finite.all():
            for bad_row in np.flatnonzero(~finite):
                bad = [self.channels[c] for c in np.flatnonzero(~present[bad_row])]
                dead.append(DeadLetter(int(index[bad_row]), "non_finite", f"not finite as float32: {bad}"))
            values, ts, index = values[finite], ts[finite], index[finite]
            assets = [a for a, ok in zip(assets, finite) if ok]
            if missing is not None:
                missing = missing[finite]
        dead.sort(key=lambda d: d.index)
        return DecodedBatch(values=values, ts=ts, assets=assets, index=index, dead=dead, missing=missing)

    def _batch_values(self, rows: list[Sequence]) -> np.ndarray | None:
        """All rows as one (n, C) float32 array in one pass, or None when a value is not a plain int or float."""
        c = len(self.channels)
        if not set(map(type, chain.from_iterable(rows))) <= _NUMBERS:
            return None
        try:
            with np.errstate(over="ignore"):  # a float64 beyond float32 becomes inf, reported as non_finite
                return np.fromiter(chain.from_iterable(rows), np.float32, count=len(rows) * c).reshape(len(rows), c)
        except (OverflowError, ValueError, TypeError):  # e.g. an int too large for a float
            return None

    def _row_by_row(
        self, rows: list[Sequence], index: np.ndarray, dead: list[DeadLetter]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Values, missing mask and which rows were kept."""
        out = np.empty((len(rows), len(self.channels)), np.float32)
        missing = np.zeros(out.shape, bool)
        keep = np.zeros(len(rows), bool)
        with np.errstate(over="ignore"):
            for r, row in enumerate(rows):
                try:
                    absent = self._check_values(row)
                    if absent is None:
                        out[r] = row
                    else:
                        out[r] = [np.nan if v is None else v for v in row]
                        missing[r] = absent
                except _Reject as e:
                    dead.append(DeadLetter(int(index[r]), e.reason, e.detail))
                    continue
                except (OverflowError, ValueError, TypeError) as e:  # e.g. an int too large for float32
                    dead.append(DeadLetter(int(index[r]), "bad_value_type", str(e)))
                    continue
                keep[r] = True
        return out[keep], missing[keep], keep
