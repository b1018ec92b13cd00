"""Security basics: credentials reach librdkafka and nothing else; the HTTP endpoint listens where it is told."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from confluent_kafka import Consumer, Producer

from streammoe.config import consumer_config, load_settings, producer_config
from streammoe.metrics import Health, HttpServer, Metrics
from streammoe.testing.broker import free_port

SECRETS = {
    "STREAMMOE_KAFKA__SASL_PASSWORD": "hunter2-sasl-secret",
    "STREAMMOE_KAFKA__SSL_KEY_PASSWORD": "keypass-secret",
    "STREAMMOE_KAFKA__EXTRA": '{"sasl.oauthbearer.client.secret": "oauth-secret-value"}',
}


def test_librdkafka_accepts_the_rendered_security_properties(monkeypatch: pytest.MonkeyPatch) -> None:
    """librdkafka rejects unknown property names and bad values at construction: render, then build real clients."""
    for k, v in {
        **SECRETS,
        "STREAMMOE_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "STREAMMOE_KAFKA__SASL_MECHANISM": "SCRAM-SHA-256",
        "STREAMMOE_KAFKA__SASL_USERNAME": "svc",
        "STREAMMOE_KAFKA__EXTRA": "{}",
    }.items():
        monkeypatch.setenv(k, v)
    kafka = load_settings(records={"channels": ["a"]}).kafka
    consumer = Consumer(consumer_config(kafka))
    consumer.close()
    Producer(producer_config(kafka)).flush(0)

    monkeypatch.setenv("STREAMMOE_KAFKA__SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("STREAMMOE_KAFKA__SSL_CERTIFICATE_LOCATION", "/etc/streammoe/client.pem")
    monkeypatch.setenv("STREAMMOE_KAFKA__SSL_KEY_LOCATION", "/etc/streammoe/client.key")
    monkeypatch.setenv("STREAMMOE_KAFKA__SSL_ENDPOINT_IDENTIFICATION_ALGORITHM", "https")
    conf = producer_config(load_settings(records={"channels": ["a"]}).kafka)
    assert conf["security.protocol"] == "SSL"
    assert conf["ssl.certificate.location"] == "/etc/streammoe/client.pem"
    assert conf["ssl.key.location"] == "/etc/streammoe/client.key"
    assert conf["ssl.endpoint.identification.algorithm"] == "https"


def test_a_running_daemon_never_shows_secrets_in_logs_or_metrics(tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    env = {
        **os.environ,
        **SECRETS,
        "STREAMMOE_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",  # nobody listens: errors get logged
        "STREAMMOE_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "STREAMMOE_KAFKA__SASL_MECHANISM": "PLAIN",
        "STREAMMOE_KAFKA__SASL_USERNAME": "svc",
        "STREAMMOE_RECORDS__CHANNELS": '["a", "b"]',
        "STREAMMOE_CHECKPOINT__DIR": str(tmp_path / "ckpt"),
        "STREAMMOE_HTTP__PORT": str(port),
        "STREAMMOE_LOG_FORMAT": "json",
        "STREAMMOE_LOG_LEVEL": "DEBUG",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "streammoe.cli", "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        metrics = b""
        deadline = time.monotonic() + 30
        while not metrics and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    metrics = r.read()
            except OSError:
                time.sleep(0.2)
        time.sleep(1.5)  # let librdkafka fail to connect a few times, so its errors are in the log too
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    logs = out + err
    assert b"streammoe_records_in_total" in metrics
    assert b'"event": "settings"' in logs and b"kafka_error" in logs, logs[-2000:]
    assert b'"sasl_password": "**********"' in logs
    for secret in ("hunter2-sasl-secret", "keypass-secret", "oauth-secret-value"):
        assert secret.encode() not in logs and secret.encode() not in metrics


def test_http_endpoint_listens_only_on_the_configured_address() -> None:
    server = HttpServer("127.0.0.2", 0, Metrics(), Health(30.0))
    server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.2:{server.port}/healthz", timeout=2) as r:
            assert r.status == 200
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", server.port), timeout=2):
            pass
    finally:
        server.stop()
