"""An asset that stops sending raises `asset_silent` once, per its own limit and clock, and `asset_resumed` when
it sends again; a revoked partition's assets are forgotten."""

from __future__ import annotations

import pytest

from streammoe.config import SettingsError, load_settings
from streammoe.silence import SilenceSettings, SilenceWatch


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_off_by_default() -> None:
    watch = SilenceWatch(SilenceSettings())
    watch.seen(["a"], [0], [0])
    assert not watch.enabled and watch.check() == [] and len(watch) == 0


def test_record_time_silence_is_measured_against_the_newest_record_and_raised_once() -> None:
    watch = SilenceWatch(SilenceSettings(after_s=60, per_asset={"slow": 600, "never": 0}))
    ms = 1_732_000_000_000
    watch.seen(["a", "slow", "never", "b"], [ms, ms, ms, ms], [0, 1, 1, 2])
    watch.seen(["b"], [ms + 59_000], [2])
    assert watch.check() == [], "59 s of record time"
    watch.seen(["b"], [ms + 61_000], [2])
    assert watch.check() == [
        {"kind": "asset_silent", "asset": "a", "last_ts": ms, "silent_s": 61.0, "limit_s": 60, "clock": "ts"}
    ]
    watch.seen(["b"], [ms + 90_000], [2])
    assert watch.check() == [], "once per silence"
    assert watch.seen(["a"], [ms + 95_000], [0]) == [
        {"kind": "asset_resumed", "asset": "a", "last_ts": ms, "ts": ms + 95_000, "silent_s": 95.0, "clock": "ts"}
    ]
    watch.seen(["b"], [ms + 601_000], [2])
    assert [e["asset"] for e in watch.check()] == ["a", "slow"], (
        "a again (a new silence), slow at its own limit, never exempt"
    )


def test_wall_clock_silence_and_revoked_partitions_are_forgotten() -> None:
    clock = Clock()
    watch = SilenceWatch(SilenceSettings(after_s=5, clock="wall"), now=clock)
    watch.seen(["a", "b"], [1, 1], [0, 1])
    clock.t += 6
    watch.forget_partitions([1])
    events = watch.check()
    assert [(e["asset"], e["silent_s"], e["clock"]) for e in events] == [("a", 6.0, "wall")]


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMMOE_RECORDS__CHANNELS", '["a"]')
    monkeypatch.setenv("STREAMMOE_SILENCE__AFTER_S", "120")
    monkeypatch.setenv("STREAMMOE_SILENCE__PER_ASSET", '{"pump-7": 600}')
    s = load_settings().silence
    assert (s.after_s, s.clock, s.per_asset) == (120, "ts", {"pump-7": 600})
    monkeypatch.setenv("STREAMMOE_SILENCE__CLOCK", "sundial")
    with pytest.raises(SettingsError, match="^STREAMMOE_SILENCE__CLOCK"):
        load_settings()


def test_silence_and_drift_events_match_the_event_schema() -> None:
    import jsonschema

    from streammoe.wire.alerts import event_schema

    validator = jsonschema.Draft202012Validator(event_schema())
    watch = SilenceWatch(SilenceSettings(after_s=1))
    watch.seen(["a", "b"], [0, 0], [0, 0])
    watch.seen(["b"], [5000], [0])
    (silent,) = watch.check()
    (resumed,) = watch.seen(["a"], [6000], [0])
    drift = {"kind": "likelihood_drift", "detections": 1, "level": 12.5}
    for event in (silent, resumed, drift):
        validator.validate({**event, "scope": "global", "model_version": "3f9c2a1e.100"})
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({**silent, "scope": "global", "model_version": "3f9c2a1e.100", "extra": 1})
