"""Property tests for the record decoder: whatever arrives, every record is decoded or dead-lettered, once.

An independent oracle (`expected_row`) says which generated records are usable and what they decode to; the
decoder must agree on every record, keep good records of a mixed batch, and never raise.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streammoe.config import RecordSettings
from streammoe.wire.records import REASONS, DecodedBatch, RecordDecoder

CHANNELS = ["flow", "temp", "vib"]
MAX_BYTES = 4096
DECODER = RecordDecoder(RecordSettings(channels=CHANNELS, max_record_bytes=MAX_BYTES))
MAX_MISSING = 1  # of 3 channels at the default max_missing_share 0.5
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Numbers as sensors and broken producers send them: ordinary, huge, tiny, beyond float32 or float64, and ints
# past int64 / uint64.
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-1e6, 1e6),
    st.sampled_from([0.0, -0.0, 1e-45, 1e-320, 3.4028235e38, 3.5e38, -1e30, 1e300]),
    st.integers(),
    st.integers(-(2**70), 2**70),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=8))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
assets = st.one_of(st.text(min_size=1, max_size=20), st.just(""), scalars)
timestamps = st.one_of(st.integers(-(2**64), 2**64), st.integers(0, 2**41), scalars)
channel_value = st.one_of(numbers, numbers, scalars)
value_lists = st.lists(channel_value, min_size=0, max_size=5)
value_dicts = st.dictionaries(st.sampled_from([*CHANNELS, "extra", "flow2"]), channel_value, max_size=5)


@st.composite
def records(draw: st.DrawFn) -> dict:
    """A valid record, then up to three hostile changes: a field missing, of a wrong type, a value beyond
    float32, a channel missing or extra, a list of the wrong length, junk beside the fields."""
    row = draw(st.lists(st.one_of(st.floats(-1e6, 1e6), st.integers(-(2**31), 2**31)), min_size=3, max_size=3))
    values: list | dict = row if draw(st.booleans()) else dict(zip(CHANNELS, row))
    obj: dict = {
        "asset_id": draw(st.text(min_size=1, max_size=20)),
        "ts": draw(st.integers(-(2**63), 2**63 - 1)),
        "values": values,
    }
    for change in draw(st.lists(st.integers(0, 7), max_size=3)):
        if change == 0:
            obj.pop(draw(st.sampled_from(["asset_id", "ts", "values"])), None)
        elif change == 1:
            obj["asset_id"] = draw(assets)
        elif change == 2:
            obj["ts"] = draw(timestamps)
        elif change == 3 and type(obj.get("values")) is list and obj["values"]:
            obj["values"][draw(st.integers(0, len(obj["values"]) - 1))] = draw(channel_value)
        elif change == 3 and type(obj.get("values")) is dict:
            obj["values"][draw(st.sampled_from(CHANNELS))] = draw(channel_value)
        elif change == 4 and type(obj.get("values")) is dict:
            obj["values"].pop(draw(st.sampled_from(CHANNELS)), None)
            obj["values"][draw(st.text(max_size=5))] = draw(channel_value)
        elif change == 5 and type(obj.get("values")) is list:
            obj["values"] = obj["values"][: draw(st.integers(0, 5))] + draw(st.lists(channel_value, max_size=2))
        elif change == 6:
            obj["values"] = draw(json_values)
        else:
            obj[draw(st.text(max_size=5))] = draw(json_values)
    return obj


def good_records(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {"asset_id": f"pump-{i}", "ts": int(t), "values": [round(float(v), 3) for v in row]}
        for i, (t, row) in enumerate(zip(rng.integers(0, 2**40, n), rng.normal(0, 5, (n, 3))))
    ]


def encode(obj: object) -> bytes:
    """As a producer might: stdlib json writes NaN/Infinity tokens and ints of any size."""
    return json.dumps(obj, allow_nan=True).encode()


def _any_non_finite(obj: object) -> bool:
    if isinstance(obj, float):
        return not math.isfinite(obj)
    if isinstance(obj, dict):
        return any(_any_non_finite(v) for v in obj.values())
    if isinstance(obj, list):
        return any(_any_non_finite(v) for v in obj)
    return False


def _float32(v: object) -> float | None:
    if type(v) not in (int, float):
        return None
    try:
        f = float(v)  # type: ignore[arg-type]
    except OverflowError:
        return None
    with np.errstate(over="ignore"):
        f32 = np.float32(f)
    return float(f32) if np.isfinite(f32) else None


def expected_row(obj: dict, raw: bytes) -> list[float] | None:
    """The oracle: the float32 row a usable record decodes to (NaN where a channel is null or absent, at most
    MAX_MISSING of them), or None if it must be dead-lettered."""
    if len(raw) > MAX_BYTES or _any_non_finite(obj):
        return None
    asset, ts, values = obj.get("asset_id"), obj.get("ts"), obj.get("values")
    if type(asset) is not str or not asset or type(ts) is not int or not -(2**63) <= ts < 2**63:
        return None
    if type(values) is dict:
        values = [values.get(c) for c in CHANNELS]
    elif type(values) is not list or len(values) != len(CHANNELS):
        return None
    if sum(v is None for v in values) > MAX_MISSING:
        return None
    row = [math.nan if v is None else _float32(v) for v in values]
    return None if any(v is None for v in row) else row  # type: ignore[misc]


def same_row(got: list[float] | None, want: list[float]) -> bool:
    return got is not None and all(g == w or (math.isnan(g) and math.isnan(w)) for g, w in zip(got, want))


def assert_partition(out: DecodedBatch, n: int) -> None:
    """Every input position is either a decoded row or a dead letter with a known reason, exactly once."""
    dead = [d.index for d in out.dead]
    assert sorted(dead + out.index.tolist()) == list(range(n))
    assert all(d.reason in REASONS and d.detail for d in out.dead)
    assert out.values.dtype == np.float32 and out.values.shape == (len(out), len(CHANNELS))
    missing = np.zeros(out.values.shape, bool) if out.missing is None else out.missing
    assert (np.isfinite(out.values) | missing).all() and (np.isnan(out.values) == missing).all()
    assert (missing.sum(axis=1) <= MAX_MISSING).all()
    assert out.ts.dtype == np.int64 and len(out.ts) == len(out.assets) == len(out)
    assert all(type(a) is str and a for a in out.assets)


@FUZZ
@given(
    st.lists(
        st.one_of(st.binary(max_size=64), st.none(), st.sampled_from([b"{", b"[]", b"null", b'"x"', b"1"])), max_size=20
    )
)
def test_arbitrary_bytes_never_raise_and_each_is_accounted(raws: list[bytes | None]) -> None:
    out = DECODER.decode(raws)
    assert_partition(out, len(raws))


@FUZZ
@given(st.lists(records(), max_size=12), st.integers(0, 2**16))
def test_agrees_with_the_oracle_and_keeps_good_records_of_a_mixed_batch(objs: list[dict], seed: int) -> None:
    good = good_records(4, seed)
    batch = [*objs[:6], *good[:2], *objs[6:], *good[2:]]
    raws = [encode(o) for o in batch]
    out = DECODER.decode(raws)
    assert_partition(out, len(raws))
    rows = {int(i): r for i, r in zip(out.index, out.values.tolist())}
    dead = {d.index: d.reason for d in out.dead}
    for i, (obj, raw) in enumerate(zip(batch, raws)):
        want = expected_row(obj, raw)
        if want is None:
            assert i in dead, (obj, rows.get(i))
        else:
            assert same_row(rows.get(i), want), (obj, dead.get(i))
            j = out.index.tolist().index(i)
            assert out.assets[j] == obj["asset_id"] and out.ts[j] == obj["ts"]


@FUZZ
@given(
    st.lists(
        st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**200), 2**200)),
        min_size=3,
        max_size=3,
    ),
    st.booleans(),
)
def test_a_value_beyond_float32_is_non_finite_and_its_neighbours_still_decode(row: list, as_dict: bool) -> None:
    good = orjson.dumps({"asset_id": "ok", "ts": 2, "values": [1, 2, 3]})
    obj = {"asset_id": "a", "ts": 1, "values": dict(zip(CHANNELS, row)) if as_dict else row}
    raw = encode(obj)
    out = DECODER.decode([good, raw, good])
    assert_partition(out, 3)
    want = expected_row(obj, raw)
    if want is None:
        assert [(d.index, d.reason) for d in out.dead] == [(1, "non_finite")]
        assert out.index.tolist() == [0, 2]
    else:
        assert out.values[1].tolist() == want and not out.dead


@FUZZ
@given(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=30))
def test_out_of_order_and_duplicate_timestamps_are_decoded_as_given(ts: list[int]) -> None:
    raws = [orjson.dumps({"asset_id": "a", "ts": t, "values": [1, 2, 3]}) for t in ts + ts[::-1]]
    out = DECODER.decode(raws)
    assert not out.dead
    assert out.ts.tolist() == ts + ts[::-1]


@FUZZ
@given(st.sampled_from(["[", '{"a":', '[{"a":']), st.integers(1000, 100_000))
def test_deep_nesting_is_not_json_and_cheap(opener: str, depth: int) -> None:
    decoder = RecordDecoder(RecordSettings(channels=CHANNELS, max_record_bytes=10_000_000))
    raw = (opener * depth).encode()
    wrapped = orjson.dumps({"asset_id": "a", "ts": 1, "values": [1, 2, 3]})[:-1] + b',"x":' + raw + b"}"
    t0 = time.perf_counter()
    out = decoder.decode([raw, wrapped, orjson.dumps({"asset_id": "a", "ts": 1, "values": [1, 2, 3]})])
    assert time.perf_counter() - t0 < 1.0
    assert [(d.index, d.reason) for d in out.dead] == [(0, "not_json"), (1, "not_json")]
    assert out.index.tolist() == [2]


def test_huge_records_are_refused_before_parsing() -> None:
    good = orjson.dumps({"asset_id": "a", "ts": 1, "values": [1, 2, 3]})
    near = good[:-1] + b',"pad":"' + b"x" * (MAX_BYTES - len(good) - 9) + b'"}'
    assert len(near) == MAX_BYTES
    huge = good[:-1] + b',"pad":[' + b"1," * 5_000_000 + b"1]}"
    t0 = time.perf_counter()
    out = DECODER.decode([near, near + b" ", huge, good])
    assert time.perf_counter() - t0 < 0.5, "a 10 MB record is refused by its length, not parsed"
    assert [(d.index, d.reason) for d in out.dead] == [(1, "oversized"), (2, "oversized")]
    assert out.index.tolist() == [0, 3]


def test_a_decoded_batch_stays_valid_after_later_batches() -> None:
    """The daemon decodes the next batch while the model still holds this one: no buffer is shared between calls."""
    decoder = RecordDecoder(RecordSettings(channels=CHANNELS, max_record_bytes=MAX_BYTES))
    kept = []
    for n in (500, 10, 300, 500, 1):
        raws = [b"\xff" * 100] * (n // 2) + [orjson.dumps({"asset_id": "a", "ts": n, "values": [n, 2, 3]})] * (
            n - n // 2
        )
        out = decoder.decode(raws)
        assert len(out) == n - n // 2
        kept.append((n, out))
    for n, out in kept:
        assert (out.values[:, 0] == n).all() and (out.ts == n).all()
