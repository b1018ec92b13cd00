"""`streammoe demo` end to end: injected faults raise alerts, the sustained new mode C raises `mode_added`,
malformed records are dead-lettered, and nothing is left running afterwards (demo, daemon, Tansu).

The demo's broker dies with it, so the demo itself reports what its operator consumer read from the alerts,
events and dead-letter topics (`--summary-json`, each alert matched to the simulator's ground truth by ts).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _demo(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "streammoe.cli", "demo", "--no-view", "--pid-file", str(tmp_path / "pids.json"), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen, timeout: float, first: Callable[[], None] = lambda: None) -> str:
    """Run `first`, then wait for the demo to exit 0 and return its stdout; a demo still running is killed."""
    try:
        first()
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    return out


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def _processes_naming(text: str) -> list[int]:
    """Live processes whose command line mentions `text` (the broker's listener address)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and _alive(int(d.name)):
            found.append(int(d.name))
    return found


def _assert_nothing_left(pids: dict) -> None:
    assert not _alive(pids["demo"])
    deadline = time.monotonic() + 5
    while _alive(pids["broker"]) and time.monotonic() < deadline:  # reaped by init once orphaned
        time.sleep(0.1)
    assert not _alive(pids["broker"]), "the demo's Tansu broker is still running"
    assert _processes_naming(pids["bootstrap"]) == []


def test_demo_shows_faults_and_the_new_mode(tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    t0 = time.monotonic()
    proc = _demo(tmp_path, "--rate", "400", "--duration", "120", "--summary-json", str(summary_path))
    lines = _finish(proc, 170).strip().splitlines()
    assert len(lines) >= 2 and lines[0].startswith("t=")  # a progress line per second, then the summary
    final = json.loads(lines[-1])
    summary = json.loads(summary_path.read_text())
    print(f"demo took {time.monotonic() - t0:.1f} s:", json.dumps(final))

    assert summary["stopped_by"] == "done" and summary["failed"] is None
    assert summary["records_produced"] == 8262  # the whole default schedule
    assert summary["records_scored"] == summary["records_produced"] + summary["malformed_sent"]
    faults = summary["faults"]
    for kind in ("spike", "drift", "stuck", "vibration"):
        assert faults[kind]["alerts"] >= 1, (kind, faults)
    for kind in ("stuck", "vibration"):  # sustained faults: most of their records alert
        assert faults[kind]["alerts"] >= faults[kind]["records"] // 2, (kind, faults)
    # Every alert is accounted for by the demo's own reading of the alerts topic, with its ground truth.
    assert len(summary["alert_list"]) == summary["alerts"] == summary["daemon"]["alerts"]
    assert all(a["truth"] != "?" for a in summary["alert_list"])
    # The sustained new mode C became an expert, and the records behind the event are mode C.
    added = [e for e in summary["event_list"] if e["kind"] == "mode_added"]
    assert added and any(e["truth_last"] == "C" for e in added), summary["event_list"]
    assert summary["events"].get("mode_added", 0) == len(added)
    # Records missing one channel were scored on the others; those missing more than the share went to the
    # dead-letter topic, each with its reason.
    dropped = summary["malformed_sent"] - summary["partial_sent"]
    assert summary["partial_sent"] >= 1 and dropped >= 1
    assert summary["dead_letters"] == dropped
    assert summary["dead_letters_by_reason"] == {"missing_channel": dropped}
    # Incidents, not floods: each fault episode is one incident (at most two), mode C one new_mode incident.
    judged = summary["incidents"]["judged"]
    assert len(judged["episodes"]) == 5 and all(1 <= e["incidents"] <= 2 for e in judged["episodes"]), judged
    assert judged["new_mode_incidents"] == 1, judged
    assert summary["incidents"]["by_kind"].get("new_mode") == 1
    # Issue 18's goal, at most 3 false incidents, is asserted where batches are fixed: offline at seeds 0-2
    # (tests/unit/test_demo_incidents_offline.py; 3, 3, 2). Live, batches follow timing (up to 256 records), so
    # the count moves with the load of the box: 3 and 3 in two runs at dabdde9, 4 in a CI run at c88e346 (the
    # first records while the simulated temperature settles, the A->B and B->A switches, once one in mode C).
    # This bound catches a flood or a regression of the opening rule (the rule before dabdde9 gave 8 here).
    assert judged["false_incidents"] <= 5, judged
    assert summary["incidents"]["open"] <= 1  # at most the last one, if the stream ended inside it

    _assert_nothing_left(json.loads((tmp_path / "pids.json").read_text()))


def test_demo_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    proc = _demo(tmp_path, "--rate", "200")

    def interrupt_once_scoring() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:  # wait until the daemon is scoring
            if line.startswith("t=") and " scored=0 " not in line:
                break
        proc.send_signal(signal.SIGINT)

    final = json.loads(_finish(proc, 60, interrupt_once_scoring).strip().splitlines()[-1])
    assert final["stopped_by"] == "signal"
    assert 0 < final["records_scored"] <= final["records_produced"] + final["malformed_sent"]
    assert final["daemon"]["records_in"] == final["records_scored"]  # the daemon finished its run and reported
    _assert_nothing_left(json.loads((tmp_path / "pids.json").read_text()))
