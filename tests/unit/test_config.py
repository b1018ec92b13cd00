"""Settings: env nesting, one clear error naming the variable, secrets never printed, librdkafka rendering."""

from __future__ import annotations

from pathlib import Path

import pytest

from streammoe.cli import main
from streammoe.config import SettingsError, consumer_config, load_settings, producer_config


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("STREAMMOE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("STREAMMOE_RECORDS__CHANNELS", '["flow", "temp"]')


def test_nested_variables_reach_their_sections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMMOE_KAFKA__BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("STREAMMOE_BATCHING__MAX_BATCH", "512")
    monkeypatch.setenv("STREAMMOE_MODEL__THRESHOLD", "1e-4")
    monkeypatch.setenv("STREAMMOE_MODEL__NOVELTY__ENABLED", "false")
    monkeypatch.setenv("STREAMMOE_HTTP__HOST", "0.0.0.0")
    monkeypatch.setenv("STREAMMOE_KAFKA__EXTRA", '{"fetch.min.bytes": "1024"}')
    s = load_settings()
    assert s.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert s.batching.max_batch == 512 and s.batching.max_wait_ms == 100
    assert s.model.threshold == 1e-4 and s.model.novelty.enabled is False
    assert s.records.channels == ["flow", "temp"]
    assert s.http.host == "0.0.0.0" and s.http.port == 9308
    assert consumer_config(s.kafka)["fetch.min.bytes"] == "1024"
    assert "fetch.min.bytes" not in producer_config(s.kafka)


def test_env_file_is_read_and_environment_wins(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = tmp_path / "site.env"
    env.write_text("STREAMMOE_KAFKA__GROUP_ID=from-file\nSTREAMMOE_BATCHING__MAX_WAIT_MS=20\n")
    monkeypatch.setenv("STREAMMOE_BATCHING__MAX_WAIT_MS", "30")
    s = load_settings(env)
    assert s.kafka.group_id == "from-file" and s.batching.max_wait_ms == 30
    monkeypatch.setenv("STREAMMOE_ENV_FILE", str(env))
    assert load_settings().kafka.group_id == "from-file"


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("STREAMMOE_BATCHING__MAX_BATCH", "0", "STREAMMOE_BATCHING__MAX_BATCH: Input should be greater than 0"),
        ("STREAMMOE_HTTP__PORT", "http", "STREAMMOE_HTTP__PORT: Input should be a valid integer"),
        ("STREAMMOE_MODEL__K_MAX", "0", "STREAMMOE_MODEL__K_MAX: Input should be greater than or equal to 1"),
        ("STREAMMOE_KAFKA__SECURITY_PROTOCOL", "SASL_SSL", "STREAMMOE_KAFKA: security_protocol SASL_SSL needs"),
        ("STREAMMOE_RECORDS__CHANNELS", "[]", "STREAMMOE_RECORDS__CHANNELS: List should have at least 1 item"),
    ],
)
def test_invalid_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch, var: str, value: str, message: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert str(err.value).startswith(message)
    assert len(str(err.value).splitlines()) == 1


def test_missing_channels_and_bad_settings_exit_2_with_one_line(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.delenv("STREAMMOE_RECORDS__CHANNELS")
    assert main(["run"]) == 2
    assert capsys.readouterr().err.strip() == "streammoe run: invalid setting: STREAMMOE_RECORDS: Field required"
    monkeypatch.setenv("STREAMMOE_RECORDS__CHANNELS", '["a"]')
    monkeypatch.setenv("STREAMMOE_BATCHING__MAX_BATCH", "-5")
    assert main(["run"]) == 2
    assert "STREAMMOE_BATCHING__MAX_BATCH: Input should be greater than 0" in capsys.readouterr().err


def test_secrets_are_redacted_but_reach_librdkafka(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMMOE_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("STREAMMOE_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("STREAMMOE_KAFKA__SASL_USERNAME", "streammoe")
    monkeypatch.setenv("STREAMMOE_KAFKA__SASL_PASSWORD", "hunter2-secret")
    monkeypatch.setenv("STREAMMOE_KAFKA__SSL_CA_LOCATION", "/etc/ssl/ca.pem")
    monkeypatch.setenv("STREAMMOE_KAFKA__SSL_KEY_PASSWORD", "keypass-secret")
    monkeypatch.setenv("STREAMMOE_KAFKA__EXTRA", '{"sasl.oauthbearer.client.secret": "oauth-secret"}')
    s = load_settings()
    for shown in (str(s.safe_dump()), repr(s), str(s)):
        for secret in ("hunter2-secret", "keypass-secret", "oauth-secret"):
            assert secret not in shown
    assert s.safe_dump()["kafka"]["sasl_password"] == "**********"
    for conf in (consumer_config(s.kafka), producer_config(s.kafka)):
        assert conf["security.protocol"] == "SASL_SSL"
        assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
        assert conf["sasl.username"] == "streammoe" and conf["sasl.password"] == "hunter2-secret"
        assert conf["ssl.ca.location"] == "/etc/ssl/ca.pem" and conf["ssl.key.password"] == "keypass-secret"
        assert conf["sasl.oauthbearer.client.secret"] == "oauth-secret"


def test_consumer_config_is_at_least_once_and_cooperative() -> None:
    conf = consumer_config(load_settings().kafka)
    assert conf["enable.auto.commit"] is False and conf["enable.auto.offset.store"] is False
    assert conf["partition.assignment.strategy"] == "cooperative-sticky"
    assert conf["statistics.interval.ms"] > 0
    assert "sasl.password" not in conf
    assert producer_config(load_settings().kafka)["acks"] == "all"


def test_poll_interval_below_session_timeout_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMMOE_KAFKA__SESSION_TIMEOUT_MS", "10000")
    monkeypatch.setenv("STREAMMOE_KAFKA__MAX_POLL_INTERVAL_MS", "5000")
    with pytest.raises(SettingsError, match="^STREAMMOE_KAFKA: max_poll_interval_ms must be >= session_timeout_ms"):
        load_settings()


@pytest.mark.parametrize("env_file", sorted(Path(__file__).parents[2].glob("configs/*.env")))
def test_shipped_env_files_load(env_file, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STREAMMOE_RECORDS__CHANNELS")
    assert load_settings(env_file).records.channels
