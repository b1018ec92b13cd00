"""New operating modes through the real broker: a mode_added event, then an operator's verdict on it."""

from __future__ import annotations

import threading
from pathlib import Path

import jsonschema
import numpy as np
import orjson
import pytest
from conftest import consume_all, produce
from modes_kit import mode_a, mode_b

from streammoe.config import Settings
from streammoe.daemon import Daemon
from streammoe.model.config import ModelConfig, NoveltyConfig
from streammoe.model.detector import MixtureDetector
from streammoe.state.persistence import load_detector, save_detector
from streammoe.testing.records import keyed_records
from streammoe.testing.settings import daemon_env
from streammoe.wire.alerts import event_schema

pytestmark = pytest.mark.integration

CHANNELS = [f"c{i}" for i in range(5)]


def rows(rng: np.random.Generator, n: int, mode: str) -> np.ndarray:
    """Mode A, or mode B far from it: the test kit's two-mode machine of the novelty tests."""
    return mode_b(rng, n) if mode == "B" else mode_a(rng, n)


def items(x: np.ndarray, start_ts: int) -> list[tuple[bytes, bytes]]:
    return keyed_records(x, None, assets=["pump-1"], start_ts=start_ts, digits=None)


def run_daemon(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, **bounds: float) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    daemon = Daemon(Settings())  # type: ignore[call-arg]
    t = threading.Thread(target=daemon.run, kwargs=bounds)
    t.start()
    t.join(timeout=180)
    assert not t.is_alive(), "the daemon did not stop within its bounds"


def test_new_mode_event_then_operator_marks_it_as_fault(broker, topic_name, tmp_path: Path, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    novelty = NoveltyConfig(min_records=300, window=600, memory_size=1000, candidate_steps=300)
    det = MixtureDetector(len(CHANNELS), ModelConfig(k_max=4, fit_steps=300, n_samples=4, novelty=novelty), CHANNELS)
    det.fit(rows(rng, 3000, "A"))
    boot = save_detector(det, tmp_path / "boot")
    t = {role: topic_name(role) for role in ("input", "alerts", "dead", "events", "control")}
    env = daemon_env(
        broker,
        t,
        CHANNELS,
        group=topic_name("group"),
        checkpoint_dir=tmp_path / "ckpt",
        model_dir=boot,
        kafka__session_timeout_ms=4000,
        kafka__max_poll_interval_ms=30000,
        kafka__commit_interval_s=0.3,
        checkpoint__interval_s=None,
        log_format=None,
    )

    produce(broker, t["input"], items(rows(rng, 1000, "A"), 0) + items(rows(rng, 2500, "B"), 1000))
    run_daemon(env, monkeypatch, max_records=3500, timeout_s=120)

    events = [orjson.loads(m.value) for m in consume_all(broker, t["events"])]
    added = [e for e in events if e["kind"] == "mode_added"]
    assert len(added) == 1, events
    expert = added[0]["expert"]
    first, last = added[0]["first_source"], added[0]["last_source"]
    assert first["topic"] == t["input"]
    # The run is B's records (a stray false alarm of A within the window before B may lead it).
    assert 1000 - novelty.window <= first["offset"] and last["offset"] >= 1000 + novelty.min_records // 2
    assert added[0]["size"] >= novelty.min_records

    # The operator says the new mode is a fault; one malformed command goes to the dead-letter topic.
    produce(
        broker,
        t["control"],
        [
            (b"global", orjson.dumps({"scope": "global", "expert": expert, "status": "fault", "operator": "alice"})),
            (b"global", b'{"expert": "three", "status": "fault"}'),
        ],
    )
    run_daemon(env, monkeypatch, timeout_s=8)  # no new input: only the control topic is read
    marked = [orjson.loads(m.value) for m in consume_all(broker, t["events"])]
    marked = [e for e in marked if e["kind"] == "mode_marked"]
    assert [(e["expert"], e["status"], e["operator"]) for e in marked] == [(expert, "fault", "alice")]
    dead = [m for m in consume_all(broker, t["dead"]) if m.headers.get("reason") == b"bad_control"]
    assert len(dead) == 1 and b"expert" in dead[0].headers["detail"]
    assert load_detector(tmp_path / "ckpt" / "global").expert_status()[expert] == "fault", "kept in the checkpoint"

    # After a restart from that checkpoint, mode B's records alert as a fault mode (and the verdict is not
    # applied twice: still exactly one mode_marked event).
    alerts_before = len(consume_all(broker, t["alerts"]))
    produce(broker, t["input"], items(rows(rng, 300, "B"), 5000))
    run_daemon(env, monkeypatch, max_records=300, timeout_s=60)
    alerts = [orjson.loads(m.value) for m in consume_all(broker, t["alerts"])][alerts_before:]
    assert len(alerts) == 300
    assert all(a["reason"] == "fault_mode" and a["mode"] == expert and a["mode_status"] == "fault" for a in alerts)
    events = [orjson.loads(m.value) for m in consume_all(broker, t["events"])]
    assert sum(e["kind"] == "mode_marked" for e in events) == 1
    for e in events:  # every event of the run, mode_added and mode_marked alike, as docs/alerts.md describes
        jsonschema.validate(e, event_schema())
