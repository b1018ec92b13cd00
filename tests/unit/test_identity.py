"""Expert ids: one per expert for a model's life, so a verdict never lands on whatever expert reused a slot."""

from __future__ import annotations

import pytest

from streammoe.wire.identity import expert_id, expert_ids, lineage_of, parse_expert_id, same_expert


def test_ids_round_trip_and_tell_a_reused_slot_from_its_old_expert() -> None:
    assert expert_id("3f9c2a1e", 3, -(2**40)) == "3f9c2a1e:3:fit"
    assert parse_expert_id("3f9c2a1e:3:fit") == ("3f9c2a1e", 3, -1)
    assert parse_expert_id(expert_id("3f9c2a1e", 2, 51200)) == ("3f9c2a1e", 2, 51200)
    assert same_expert(-1, -(2**40)) and same_expert(51200, 51200)
    assert not same_expert(51200, 90112) and not same_expert(-1, 51200)
    assert expert_ids("ab", [-(2**40), 7, -(2**40)], [0, 1]) == {0: "ab:0:fit", 1: "ab:1:7"}
    assert lineage_of("3f9c2a1e.13312") == "3f9c2a1e"


@pytest.mark.parametrize("bad", ["3f9c2a1e:3", "a:b:c", "a:1:2\n", "a.b:1:2", ":1:2", "a:1:-2"])
def test_malformed_ids_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="is not an expert id"):
        parse_expert_id(bad)
