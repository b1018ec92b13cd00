"""Settings: env nesting, one clear error naming the variable, secrets never printed, librdkafka rendering."""

from __future__ import annotations

import re
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
def test_invalid_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, message: str
) -> None:
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
    kafka = {
        "SECURITY_PROTOCOL": "SASL_SSL",
        "SASL_MECHANISM": "SCRAM-SHA-512",
        "SASL_USERNAME": "streammoe",
        "SASL_PASSWORD": "hunter2-secret",
        "SSL_CA_LOCATION": "/etc/ssl/ca.pem",
        "SSL_KEY_PASSWORD": "keypass-secret",
        "EXTRA": '{"sasl.oauthbearer.client.secret": "oauth-secret"}',
    }
    for name, value in kafka.items():
        monkeypatch.setenv(f"STREAMMOE_KAFKA__{name}", value)
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


@pytest.mark.parametrize(
    ("var", "value", "nearest"),
    [
        ("STREAMMOE_KAFKA_BOOTSTRAP_SERVERS", "broker:9092", "STREAMMOE_KAFKA__BOOTSTRAP_SERVERS"),
        ("STREAMMOE_TORCH_THREAD", "4", "STREAMMOE_TORCH_THREADS"),
        ("STREAMMOE_MODEL__NOVELTY__MIN_RECORD", "300", "STREAMMOE_MODEL__NOVELTY__MIN_RECORDS"),
        ("STREAMMOE_HTTP_PORT", "9308", "STREAMMOE_HTTP__PORT"),  # shaped like a service link, but no tcp:// value
        ("streammoe_batching__max_bach", "64", "STREAMMOE_BATCHING__MAX_BATCH"),
    ],
)
def test_a_misspelt_variable_stops_start_up_naming_the_nearest_setting(
    monkeypatch: pytest.MonkeyPatch, capsys, var: str, value: str, nearest: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert str(err.value) == f"{var}: not a setting (did you mean {nearest}?)"
    assert main(["run"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"streammoe run: invalid setting: {var}: not a setting (did you mean {nearest}?)"
    )


def test_a_misspelt_key_in_the_env_file_is_refused(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = tmp_path / "site.env"
    env.write_text("STREAMMOE_KAFKA__GROUP_ID=site\nSTREAMMOE_KAFKA__GROUPID=typo\n")
    with pytest.raises(
        SettingsError, match=r"^STREAMMOE_KAFKA__GROUPID: not a setting \(did you mean STREAMMOE_KAFKA__GROUP_ID\?\)$"
    ):
        load_settings(env)


def test_legitimate_variables_that_are_not_settings_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """The project's own non-setting variables, Kubernetes service links of streammoe-* Services, dict keys."""
    from streammoe.variables import NON_SETTINGS

    allowed = {
        **{name: "x" for name in NON_SETTINGS},
        "STREAMMOE_SERVICE_HOST": "10.0.0.9",
        "STREAMMOE_SERVICE_PORT": "9308",
        "STREAMMOE_PORT": "tcp://10.0.0.9:9308",
        "STREAMMOE_METRICS_SERVICE_PORT_METRICS": "9308",
        "STREAMMOE_METRICS_PORT_9308_TCP_PROTO": "tcp",
        "STREAMMOE_SCOPES__GROUPS__pump-7": "line-2",
    }
    allowed.pop("STREAMMOE_ENV_FILE")  # it must name a file; tested with one above
    for name, value in allowed.items():
        monkeypatch.setenv(name, value)
    assert load_settings().scopes.groups == {"pump-7": "line-2"}


def test_every_streammoe_variable_the_repository_reads_is_known() -> None:
    """Each STREAMMOE_* name that code or docs read but is not a setting is in NON_SETTINGS (else it would be
    refused at start-up); found by grepping the repository for os.environ reads and *_VARIABLE constants."""
    from streammoe.config import Settings
    from streammoe.variables import NON_SETTINGS, setting_names

    root = Path(__file__).parents[2]
    names, _ = setting_names(Settings)
    read = set()
    for path in [*root.glob("streammoe/**/*.py"), *root.glob("benchmarks/*.py"), root / "Dockerfile", root / "dev"]:
        text = path.read_text()
        read |= set(re.findall(r"(?:environ(?:\.get)?[\[(]\s*|_VARIABLE = )[\"'](STREAMMOE_[A-Z0-9_]+)", text))
    assert read, "the grep found nothing: its pattern is stale"
    assert read - names <= set(NON_SETTINGS)
    assert set(NON_SETTINGS) <= read, "a NON_SETTINGS entry nothing reads"


def test_extra_properties_in_the_shell_form_and_per_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """JSON in STREAMMOE_KAFKA__EXTRA is the form bash accepts; STREAMMOE_KAFKA__EXTRA__<property> (a name with
    dots: env files, `env`, Kubernetes) works too; both at once is refused (one would be dropped)."""
    import subprocess
    import sys

    script = "from streammoe.config import load_settings, producer_config; print(producer_config(load_settings().kafka)['linger.ms'])"
    line = f'export STREAMMOE_KAFKA__EXTRA=\'{{"linger.ms": "7"}}\'; "{sys.executable}" -c "{script}"'
    run = subprocess.run(["bash", "-c", line], check=False, capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "7", run.stderr
    bash_refuses = subprocess.run(
        ["bash", "-c", "export STREAMMOE_KAFKA__EXTRA__linger.ms=5"],
        check=False,
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert bash_refuses.returncode != 0 and "not a valid identifier" in bash_refuses.stderr
    monkeypatch.setenv("STREAMMOE_KAFKA__EXTRA__linger.ms", "9")
    assert producer_config(load_settings().kafka)["linger.ms"] == "9"
    monkeypatch.setenv("STREAMMOE_KAFKA__EXTRA", '{"compression.type": "lz4"}')
    with pytest.raises(SettingsError, match="^STREAMMOE_KAFKA__EXTRA: set librdkafka properties either as JSON"):
        load_settings()


def test_each_client_gets_only_its_own_extra_properties() -> None:
    """Producer-only properties never reach a consumer and the other way round: librdkafka prints no raw CONFWARN
    line outside the JSON log (checked on real clients in a subprocess, whose stderr is librdkafka's)."""
    import subprocess
    import sys

    from streammoe.kafka.properties import CONSUMER_ONLY, PRODUCER_ONLY

    extra = {
        "linger.ms": "5",
        "compression.type": "lz4",
        "batch.size": "100000",
        "acks": "1",
        "heartbeat.interval.ms": "2000",
        "fetch.min.bytes": "1",
        "isolation.level": "read_committed",
        "socket.keepalive.enable": "true",
    }
    script = f"""
import json
from confluent_kafka import Consumer, Producer
from streammoe.config import KafkaSettings, consumer_config, producer_config
kafka = KafkaSettings(bootstrap_servers="127.0.0.1:9", extra={extra!r})
c, p = consumer_config(kafka), producer_config(kafka)
Consumer(c).close(); Producer(p).flush(0)
print(json.dumps([sorted(c), sorted(p)]))
"""
    run = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "CONFWARN" not in run.stderr, run.stderr
    consumer, producer = (set(keys) for keys in __import__("json").loads(run.stdout))
    assert not consumer & PRODUCER_ONLY and not producer & CONSUMER_ONLY
    assert {"socket.keepalive.enable"} <= consumer & producer
    assert {"heartbeat.interval.ms", "isolation.level"} <= consumer and {"linger.ms", "acks"} <= producer


def test_outputs_are_partitioned_as_java_clients_do_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert producer_config(load_settings().kafka)["partitioner"] == "murmur2_random"
    monkeypatch.setenv("STREAMMOE_KAFKA__PARTITIONER", "consistent_random")
    assert producer_config(load_settings().kafka)["partitioner"] == "consistent_random"
