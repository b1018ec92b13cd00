"""Issue 18's demo goal measured offline at demo seeds 0, 1 and 2 (benchmarks/demo_faults.py: the demo's
schedule and fit, fixed batches, the daemon's incident tracker): every fault episode one incident (at most two)
and the new mode one `new_mode` incident. The goal's "at most 3 false incidents" is not met (7, 7 and 2
measured); the bound below catches a flood, and the figures say where the false ones come from."""

from __future__ import annotations

import pytest

from benchmarks.demo_faults import run

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_fault_episode_is_one_incident_and_the_new_mode_one_new_mode_incident(seed: int) -> None:
    judged = run(seed, [])["incidents"]
    assert [e["fault"] for e in judged["episodes"]] == ["spike", "vibration", "drift", "stuck", "spike"]
    assert all(1 <= e["incidents"] <= 2 for e in judged["episodes"]), judged
    assert judged["new_mode_incidents"] == 1, judged
    assert judged["false_incidents"] <= 10, judged
