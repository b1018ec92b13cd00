"""The test kit's settings builder: the variables it writes mean the same in this process as in a child's."""

from __future__ import annotations

from pathlib import Path

from streammoe.config import load_settings
from streammoe.testing.settings import daemon_env, settings_from_env, topics_for


def test_settings_from_env_reads_what_daemon_env_writes_an_empty_value_too(tmp_path: Path, monkeypatch) -> None:
    env = daemon_env(
        "127.0.0.1:9092",
        topics_for("in"),
        ["a", "b"],
        group="g",
        checkpoint_dir=tmp_path,
        kafka__scores_topic="",
        model__threshold=1e-3,
    )
    assert env["STREAMMOE_KAFKA__SCORES_TOPIC"] == ""
    here = settings_from_env(env)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    child = load_settings()  # what a daemon started with `env=` reads
    assert here.model_dump() == child.model_dump()
    assert here.kafka.scores_topic == "" and here.records.channels == ["a", "b"] and here.model.threshold == 1e-3
