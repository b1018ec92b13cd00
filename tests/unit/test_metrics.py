"""/metrics through prometheus_client's handler, the standard collectors, liveness that tells stuck from busy, lag
series that leave with their partitions and per-scope gauges that stay bounded."""

from __future__ import annotations

import gzip
import time
import urllib.error
import urllib.request

from streammoe.metrics import Health, HttpServer, Metrics


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def serve(metrics: Metrics, health: Health) -> HttpServer:
    server = HttpServer("127.0.0.1", 0, metrics, health)
    server.start()
    return server


def test_metrics_are_served_by_prometheus_clients_handler_with_gzip_and_openmetrics() -> None:
    metrics = Metrics()
    server = serve(metrics, Health(stale_s=30))
    try:
        status, headers, body = get(server.port, "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = body.decode()
        for family in (
            "process_resident_memory_bytes",
            "python_info",
            "python_gc_collections_total",
            "streammoe_build_info",
            "streammoe_records_in_total",
        ):
            assert family in text, family
        build = next(line for line in text.splitlines() if line.startswith("streammoe_build_info{"))
        assert 'version="' in build and 'torch="' in build and 'librdkafka="' in build

        status, headers, body = get(server.port, "/metrics", {"Accept-Encoding": "gzip"})
        assert headers.get("Content-Encoding") == "gzip" and b"streammoe_build_info" in gzip.decompress(body)
        status, headers, body = get(server.port, "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})
        assert headers["Content-Type"].startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")
        status, _, body = get(server.port, "/metrics?name[]=streammoe_records_in_total")
        assert b"streammoe_records_in_total" in body and b"process_cpu" not in body
    finally:
        server.stop()


def test_healthz_fails_on_a_stalled_loop_not_during_a_long_step_that_reports_progress() -> None:
    health = Health(stale_s=30, live_stale_s=0.3)
    server = serve(Metrics(), health)
    try:
        health.progress(assigned=2)
        assert get(server.port, "/healthz")[:3:2] == (200, b"ok\n")
        for _ in range(6):  # a snapshot restore of 0.6 s, reporting after each chunk
            time.sleep(0.1)
            health.working("restoring snapshots")
        assert get(server.port, "/healthz")[0] == 200, "busy, not stuck"
        time.sleep(0.4)
        status, _, body = get(server.port, "/healthz")
        assert status == 503 and body.startswith(b"stalled: no progress for") and b"restoring snapshots" in body
        health.progress(assigned=2)
        assert get(server.port, "/healthz")[0] == 200
    finally:
        server.stop()


def test_lag_series_go_with_their_partitions() -> None:
    metrics = Metrics()
    for p in range(4):
        metrics.consumer_lag.labels("in", str(p)).set(10 + p)
    metrics.forget_partitions("in", [1, 3, 7])
    r = metrics.registry
    assert [r.get_sample_value("streammoe_consumer_lag", {"topic": "in", "partition": str(p)}) for p in range(4)] == [
        10,
        None,
        12,
        None,
    ]


def test_per_scope_gauges_are_bounded() -> None:
    metrics = Metrics(max_scope_series=3)
    allowed = [s for s in (f"pump-{i}" for i in range(10)) if metrics.scope_series(s)]
    assert allowed == ["pump-0", "pump-1", "pump-2"] and metrics.scope_series("pump-1")
    metrics.held_scopes(10)
    assert metrics.registry.get_sample_value("streammoe_scopes_without_series") == 7
    metrics.experts_active.labels("pump-0").set(2)
    metrics.forget_scope("pump-0", k_max=4)
    assert metrics.registry.get_sample_value("streammoe_experts_active", {"scope": "pump-0"}) is None
    assert metrics.scope_series("pump-9"), "a dropped scope frees its place"


def test_a_dropped_scope_takes_its_open_incidents_gauge_with_it() -> None:
    metrics = Metrics()
    metrics.incidents_open.labels("pump-0").set(2)
    metrics.incidents_open.labels("pump-1").set(1)
    metrics.forget_scope("pump-0", k_max=4)  # its new owner reports them: a sum over workers must not count them twice
    r = metrics.registry
    assert r.get_sample_value("streammoe_incidents_open", {"scope": "pump-0"}) is None
    assert r.get_sample_value("streammoe_incidents_open", {"scope": "pump-1"}) == 1
