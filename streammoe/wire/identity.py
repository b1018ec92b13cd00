"""An expert's own identity, `<lineage>:<slot>:<born>`, for alerts, events and control commands.

A slot number alone is not an expert: slots are reused when an expert retires or merges, and a model started
afresh (a bootstrap model, a warm-up) reuses every slot number under a new lineage. The model already keeps,
per slot, the point of the stream at which its expert was added (`MixtureOfVAEs.born`: the novelty memory's
record count; experts of the first fit have none, written `fit`), and the model's lineage is the first part of
`model_version`. Together with the slot they name one expert for the whole life of a model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

FIT = "fit"
PATTERN = re.compile(r"([^:.\s]+):([0-9]+):(fit|[0-9]+)")  # the control schema's pattern, anchored by fullmatch


def expert_id(lineage: str, slot: int, born: int) -> str:
    return f"{lineage}:{slot}:{born if born >= 0 else FIT}"


def parse_expert_id(text: str) -> tuple[str, int, int]:
    """(lineage, slot, born); born is -1 for an expert of the first fit. ValueError when malformed."""
    m = PATTERN.fullmatch(text)
    if m is None:
        raise ValueError(f"{text!r} is not an expert id '<lineage>:<slot>:<born>' (as in alerts and events)")
    born = -1 if m.group(3) == FIT else int(m.group(3))
    return m.group(1), int(m.group(2)), born


def same_expert(wanted_born: int, born_now: int) -> bool:
    """Whether the slot still holds the expert that was born at `wanted_born` (-1: the first fit's)."""
    return (born_now < 0 and wanted_born < 0) or born_now == wanted_born


def lineage_of(model_version: str) -> str:
    return model_version.split(".", 1)[0]


def expert_ids(lineage: str, born: Sequence[int], slots: Iterable[int]) -> dict[int, str]:
    """slot -> expert id for the active `slots` of a model whose per-slot birth points are `born`."""
    return {k: expert_id(lineage, k, int(born[k])) for k in slots}
