"""The record decoder: both value forms decode; every unusable record is a dead letter with its reason."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from streammoe.config import RecordSettings
from streammoe.wire.records import REASONS, RecordDecoder

CHANNELS = ["flow", "temp", "vib"]


@pytest.fixture()
def decoder() -> RecordDecoder:
    return RecordDecoder(RecordSettings(channels=CHANNELS, max_record_bytes=2000))


def test_dict_and_list_forms_decode_in_channel_order(decoder: RecordDecoder) -> None:
    raws = [
        orjson.dumps({"asset_id": "pump-7", "ts": 1732000000123, "values": {"vib": 3, "flow": 1.5, "temp": 2.0}}),
        orjson.dumps({"asset_id": "pump-8", "ts": 5, "values": [4.0, 5, 6.25]}),
        orjson.dumps({"asset_id": "pump-9", "ts": 6, "values": {"flow": 1, "temp": 2, "vib": 3, "new": 9}}),
    ]
    out = decoder.decode(raws)
    assert not out.dead
    assert out.values.dtype == np.float32
    np.testing.assert_array_equal(out.values, [[1.5, 2.0, 3.0], [4.0, 5.0, 6.25], [1, 2, 3]])
    assert out.assets == ["pump-7", "pump-8", "pump-9"]
    assert out.ts.tolist() == [1732000000123, 5, 6]
    assert out.index.tolist() == [0, 1, 2]


INVALID = [
    (None, "tombstone"),
    (b"", "empty"),
    (b'{"asset_id": "a", "ts": 1, "values": [1, 2, 3], "pad": "' + b"x" * 3000 + b'"}', "oversized"),
    (b"{oops", "not_json"),
    (b'{"asset_id": "a", "ts": 1, "values": [1, 2, NaN]}', "not_json"),
    (b'"just a string"', "not_object"),
    (b"[1, 2, 3]", "not_object"),
    (b'{"ts": 1, "values": [1, 2, 3]}', "missing_asset"),
    (b'{"asset_id": "", "ts": 1, "values": [1, 2, 3]}', "bad_asset"),
    (b'{"asset_id": 42, "ts": 1, "values": [1, 2, 3]}', "bad_asset"),
    (b'{"asset_id": "a", "values": [1, 2, 3]}', "missing_ts"),
    (b'{"asset_id": "a", "ts": "2024-01-01", "values": [1, 2, 3]}', "bad_ts"),
    (b'{"asset_id": "a", "ts": 1.5, "values": [1, 2, 3]}', "bad_ts"),
    (b'{"asset_id": "a", "ts": true, "values": [1, 2, 3]}', "bad_ts"),
    (b'{"asset_id": "a", "ts": 1}', "missing_values"),
    (b'{"asset_id": "a", "ts": 1, "values": 7}', "bad_values"),
    # 3 channels, max_missing_share 0.5: one may be missing, two may not
    (b'{"asset_id": "a", "ts": 1, "values": {"flow": 1}}', "missing_channel"),
    (b'{"asset_id": "a", "ts": 1, "values": {"flow": 1, "temp": null}}', "missing_channel"),
    (b'{"asset_id": "a", "ts": 1, "values": {"flow": 1, "temp": null, "vib": null}}', "missing_value"),
    (b'{"asset_id": "a", "ts": 1, "values": [null, 2, null]}', "missing_value"),
    (b'{"asset_id": "a", "ts": 1, "values": [null, null, null]}', "missing_value"),
    (b'{"asset_id": "a", "ts": 1, "values": [1, true, 3]}', "bad_value_type"),
    (b'{"asset_id": "a", "ts": 1, "values": [1, "2", 3]}', "bad_value_type"),
    (b'{"asset_id": "a", "ts": 1, "values": [1, [2], 3]}', "bad_value_type"),
    (b'{"asset_id": "a", "ts": 1, "values": [1, 2]}', "wrong_length"),
    (b'{"asset_id": "a", "ts": 1, "values": [1, 2, 3, 4]}', "wrong_length"),
    (b'{"asset_id": "a", "ts": 1, "values": [1, 2, 1e400]}', "non_finite"),
    (b'{"asset_id": "a", "ts": 1, "values": [1, 2, 1e39]}', "non_finite"),
    (b'{"asset_id": "a", "ts": 1, "values": [1, 2, 123456789012345678901234567890123456789012]}', "non_finite"),
]


@pytest.mark.parametrize(("raw", "reason"), INVALID)
def test_each_invalid_kind_gets_its_reason(decoder: RecordDecoder, raw: bytes | None, reason: str) -> None:
    good = orjson.dumps({"asset_id": "ok", "ts": 1, "values": [1, 2, 3]})
    out = decoder.decode([good, raw, good])
    assert [(d.index, d.reason) for d in out.dead] == [(1, reason)]
    assert out.dead[0].detail
    assert reason in REASONS
    assert out.index.tolist() == [0, 2] and len(out.values) == 2


def test_a_whole_batch_of_garbage_never_raises(decoder: RecordDecoder) -> None:
    raws = [raw for raw, _ in INVALID] * 3
    out = decoder.decode(raws)
    assert len(out) == 0 and out.values.shape == (0, 3)
    assert [d.index for d in out.dead] == list(range(len(raws)))


def test_buffer_is_reused_without_leaking_rows_between_batches(decoder: RecordDecoder) -> None:
    first = decoder.decode([orjson.dumps({"asset_id": "a", "ts": 1, "values": [1, 2, 3]})] * 4)
    second = decoder.decode([orjson.dumps({"asset_id": "b", "ts": 2, "values": [7, 8, 9]})])
    assert first.values.tolist() == [[1, 2, 3]] * 4 and second.values.tolist() == [[7, 8, 9]]


def test_the_batch_conversion_gives_the_same_rows_as_record_by_record(decoder: RecordDecoder) -> None:
    """A batch of plain numbers is converted in one pass; one bad value sends the batch record by record.
    Both paths must give the same float32 rows (ints, large ints, floats past float32 included)."""
    rng = np.random.default_rng(3)
    rows = [[float(v) for v in rng.normal(0, 1e3, 3)] for _ in range(50)]
    rows += [[2**53 + 1, -(2**60), 7], [3.4028235e38, 1e39, -1e-46], [1, 2.5, 16777217]]
    good = [orjson.dumps({"asset_id": "a", "ts": i, "values": r}) for i, r in enumerate(rows)]
    bad = orjson.dumps({"asset_id": "a", "ts": 0, "values": [1, "2", 3]})
    fast = decoder.decode(good)
    slow = decoder.decode([bad] + good)
    assert [d.reason for d in slow.dead] == ["bad_value_type", "non_finite"]
    assert [d.reason for d in fast.dead] == ["non_finite"]
    np.testing.assert_array_equal(fast.values, slow.values)
    assert fast.ts.tolist() == slow.ts.tolist() and (slow.index - 1).tolist() == fast.index.tolist()
    want = np.array([r for r in rows if r != rows[-2]], np.float64).astype(np.float32)
    np.testing.assert_array_equal(fast.values, want)


def test_records_missing_up_to_the_share_decode_with_their_mask(decoder: RecordDecoder) -> None:
    """A null or absent channel, up to max_missing_share, is kept: NaN in the values, True in `missing`."""
    raws = [
        orjson.dumps({"asset_id": "a", "ts": 1, "values": [1, 2, 3]}),
        orjson.dumps({"asset_id": "a", "ts": 2, "values": {"flow": 1, "temp": 2}}),  # vib absent
        orjson.dumps({"asset_id": "a", "ts": 3, "values": {"flow": None, "temp": 2, "vib": 3}}),  # flow null
        orjson.dumps({"asset_id": "a", "ts": 4, "values": [1, None, 3]}),  # list form, temp null
        orjson.dumps({"asset_id": "a", "ts": 5, "values": [None, None, 3]}),  # two of three: dead
        orjson.dumps({"asset_id": "a", "ts": 6, "values": [1, "x", None]}),  # a bad value is still bad
    ]
    out = decoder.decode(raws)
    assert [(d.index, d.reason) for d in out.dead] == [(4, "missing_value"), (5, "bad_value_type")]
    assert "['flow', 'temp']" in out.dead[0].detail and "max_missing_share" in out.dead[0].detail
    assert out.ts.tolist() == [1, 2, 3, 4]
    assert out.missing is not None
    assert out.missing.tolist() == [[False] * 3, [False, False, True], [True, False, False], [False, True, False]]
    np.testing.assert_array_equal(np.isnan(out.values), out.missing)
    np.testing.assert_array_equal(out.values[1, :2], [1, 2])
    assert out.missing_rows(np.array([0])) is None and out.missing_rows(np.array([0, 2])) is not None


def test_a_complete_batch_has_no_missing_mask(decoder: RecordDecoder) -> None:
    out = decoder.decode([orjson.dumps({"asset_id": "a", "ts": 1, "values": [1, 2, 3]})])
    assert out.missing is None


@pytest.mark.parametrize(("share", "allowed"), [(0.0, 0), (0.34, 1), (0.5, 1), (0.67, 2), (0.99, 2)])
def test_max_missing_share_sets_how_many_channels_may_be_missing(share: float, allowed: int) -> None:
    dec = RecordDecoder(RecordSettings(channels=CHANNELS, max_missing_share=share))
    raws = [orjson.dumps({"asset_id": "a", "ts": n, "values": [None] * n + [1.0] * (3 - n)}) for n in range(4)]
    out = dec.decode(raws)
    assert out.ts.tolist() == list(range(allowed + 1))
    assert {d.reason for d in out.dead} <= {"missing_value"} and len(out.dead) == 3 - allowed


def test_max_missing_share_of_one_is_refused() -> None:
    with pytest.raises(ValueError):
        RecordSettings(channels=CHANNELS, max_missing_share=1.0)
