"""The demo's judge of incidents against the simulator's truth: per fault episode, the new mode, false ones."""

from __future__ import annotations

from streammoe.demo.incidents import episodes, judge, meets_goal

# ts, mode, fault: A normal, a 2-record spike, A normal, B with a 3-record vibration, then the new mode C.
TRUTH = (
    [(t, "A", None) for t in range(10)]
    + [(10, "A", "spike"), (11, "A", "spike")]
    + [(t, "A", None) for t in range(12, 20)]
    + [(t, "B", "vibration") for t in range(20, 23)]
    + [(t, "C", None) for t in range(23, 60)]
)


def inc(a: int, b: int, kind: str = "anomaly") -> dict:
    return {"first_ts": a, "last_ts": b, "kind": kind}


def test_episodes_are_runs_of_one_fault() -> None:
    eps = episodes(TRUTH)
    assert [(e.fault, e.mode, e.first_ts, e.last_ts) for e in eps] == [
        ("spike", "A", 10, 11),
        ("vibration", "B", 20, 22),
    ]


def test_judge_counts_per_episode_new_mode_and_false() -> None:
    judged = judge(TRUTH, [inc(10, 10), inc(11, 11), inc(19, 21), inc(25, 40, "new_mode"), inc(3, 3), inc(50, 52)])
    assert [e["incidents"] for e in judged["episodes"]] == [2, 1]
    assert judged["new_mode_incidents"] == 1
    assert judged["false_incidents"] == 2 and judged["false_by_mode"] == {"A": 1, "C": 1}
    assert meets_goal(judged)
    assert not meets_goal(judge(TRUTH, [inc(10, 11), inc(25, 40, "new_mode")]))  # the vibration was missed
    assert not meets_goal(judge(TRUTH, [inc(10, 11), inc(20, 22)]))  # no new_mode incident
