"""OwnedScopes without a broker: routing rows to scopes, which scopes a revoke hands over, what is snapshotted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streammoe.config import Settings, SettingsError, load_settings
from streammoe.model.config import ModelConfig
from streammoe.model.detector import MixtureDetector
from streammoe.state.checkpoint import Checkpointer, ModelState
from streammoe.state.ownership import OwnedScopes
from streammoe.state.snapshot import SnapshotError

CHANNELS = ["a", "b", "c"]


def settings(tmp_path: Path, **scopes: object) -> Settings:
    return Settings(
        records={"channels": CHANNELS},
        checkpoint={"dir": tmp_path / "ckpt"},  # type: ignore[call-arg]
        scopes=scopes,
    )


class RecordingWriter:
    """Stands in for the Kafka writer: these tests are about which scopes get written, not about Kafka."""

    def __init__(self) -> None:
        self.written: list[tuple[str, int]] = []
        self.repositioned: list[tuple[str, int]] = []

    def write(self, state: ModelState, partition: int, offsets: object = None) -> None:
        self.written.append((state.scope, partition))

    def reposition(self, scope: str, offsets: object, partition: int) -> object:
        self.repositioned.append((scope, partition))
        return object()  # the manifest sent (None: nothing to send)

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def detector() -> MixtureDetector:
    d = MixtureDetector(3, ModelConfig(k_max=1, n_samples=1, fit_steps=20), CHANNELS)
    d.fit(np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32))
    return d


def test_rows_are_grouped_by_scope_in_order_of_first_appearance(tmp_path: Path) -> None:
    owned = OwnedScopes(
        settings(tmp_path, mode="group", group_pattern=r"^(line-\d+)-"),
        Checkpointer(settings(tmp_path).checkpoint, CHANNELS),
    )
    assets = ["line-2-pump", "line-1-fan", "line-2-fan", "other", "line-1-pump"]
    routes = owned.route(assets, np.array([3, 1, 3, 0, 1]))
    assert [(s, r.tolist()) for s, r in routes] == [("line-2", [0, 2]), ("line-1", [1, 4]), ("unassigned", [3])]
    assert owned.home == {"line-2": 3, "line-1": 1, "unassigned": 0}


def test_the_global_scope_takes_every_row_whatever_its_partition(tmp_path: Path) -> None:
    owned = OwnedScopes(settings(tmp_path), Checkpointer(settings(tmp_path).checkpoint, CHANNELS))
    routes = owned.route(["x", "y", "z"], np.array([0, 5, 2]))
    assert [(s, r.tolist()) for s, r in routes] == [("global", [0, 1, 2])]
    owned.revoked([0, 5, 2])
    assert owned.home == {}, "the global scope is never handed over"


def test_a_revoke_snapshots_and_drops_only_the_scopes_of_the_revoked_partitions(
    tmp_path: Path, detector: MixtureDetector
) -> None:
    s = settings(tmp_path, mode="asset")
    owned = OwnedScopes(s, Checkpointer(s.checkpoint, CHANNELS))
    owned.writer = RecordingWriter()  # type: ignore[assignment]
    owned.route(["p1", "p2", "p3"], np.array([0, 1, 1]))
    for name in ("p1", "p2", "p3"):
        owned.models[name] = ModelState(name, detector)
    owned.models["p3"].detector = None  # still warming up: nothing to hand over
    dropped: list[str] = []
    owned._on_dropped = lambda state: dropped.append(state.scope)
    owned.revoked([1])
    assert owned.writer.written == [("p2", 1)]  # type: ignore[attr-defined]
    assert set(owned.models) == {"p1"} and sorted(dropped) == ["p2", "p3"]
    owned.lost([0])
    assert owned.models == {} and owned.writer.written == [("p2", 1)], "lost partitions write nothing"  # type: ignore[attr-defined]


def test_interval_snapshots_skip_scopes_that_did_not_move(tmp_path: Path, detector: MixtureDetector) -> None:
    s = settings(tmp_path, mode="asset")
    outcomes: list[str] = []
    owned = OwnedScopes(s, Checkpointer(s.checkpoint, CHANNELS), on_snapshot=outcomes.append)
    owned.writer = RecordingWriter()  # type: ignore[assignment]
    owned.route(["p1", "p2"], np.array([0, 2]))
    owned.models = {n: ModelState(n, detector) for n in ("p1", "p2")}
    assert owned.snapshot_changed() == 2
    owned.models["p2"].advance("in", 2, 10)  # judged records move its offsets even when nothing is learned
    assert owned.snapshot_changed() == 1
    assert owned.writer.written == [("p1", 0), ("p2", 2), ("p2", 2)]  # type: ignore[attr-defined]
    assert owned.writer.repositioned == [("p1", 0)], "p1 only gets its position moved on"  # type: ignore[attr-defined]
    assert outcomes == ["written", "written", "repositioned", "written"]  # what the metrics count
    owned.writer.reposition = lambda scope, offsets, partition: None  # type: ignore[attr-defined]  # nothing to send
    assert owned.snapshot_changed() == 0 and outcomes[4:] == []


def test_a_failed_reposition_is_counted_as_a_failed_snapshot(tmp_path: Path, detector: MixtureDetector) -> None:
    s = settings(tmp_path, mode="asset")
    outcomes: list[str] = []
    owned = OwnedScopes(s, Checkpointer(s.checkpoint, CHANNELS), on_snapshot=outcomes.append)
    owned.writer = RecordingWriter()  # type: ignore[assignment]
    owned.route(["p1"], np.array([0]))
    owned.models = {"p1": ModelState("p1", detector)}
    owned.snapshot_changed()

    def refuse(scope: str, offsets: object, partition: int) -> None:
        raise SnapshotError("the broker refused it")

    owned.writer.reposition = refuse  # type: ignore[attr-defined]
    assert owned.snapshot_changed() == 0
    assert outcomes == ["written", "failed"]


def test_snapshots_with_a_single_global_scope_are_refused_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMMOE_RECORDS__CHANNELS", '["a"]')
    monkeypatch.setenv("STREAMMOE_SNAPSHOT__TOPIC", "snaps")
    with pytest.raises(SettingsError, match="STREAMMOE_SCOPES__MODE"):
        load_settings()
    monkeypatch.setenv("STREAMMOE_SCOPES__MODE", "asset")
    assert load_settings().snapshot.topic == "snaps"
