"""The HTTP endpoints operators probe: liveness always, readiness only with partitions and recent progress."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from streammoe.metrics import Health, HttpServer, Metrics


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_readiness_follows_assignment_and_progress() -> None:
    metrics, health = Metrics(), Health(stale_s=0.3)
    server = HttpServer("127.0.0.1", 0, metrics, health)
    server.start()
    try:
        assert get(server.port, "/healthz")[0] == 200
        assert get(server.port, "/readyz") == (503, b"no partitions assigned\n")
        health.progress(assigned=4)
        assert get(server.port, "/readyz")[0] == 200
        time.sleep(0.4)
        status, body = get(server.port, "/readyz")
        assert status == 503 and body.startswith(b"no progress for")
        metrics.dead_letters.labels("not_json").inc(2)
        metrics.consumer_lag.labels("in", "3").set(17)
        status, body = get(server.port, "/metrics")
        assert status == 200
        assert b'streammoe_dead_letters_total{reason="not_json"} 2.0' in body
        assert b'streammoe_consumer_lag{partition="3",topic="in"} 17.0' in body
        assert get(server.port, "/nope")[0] == 404
    finally:
        server.stop()
