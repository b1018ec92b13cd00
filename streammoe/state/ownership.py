"""The model scopes a worker holds, and how they move between workers with the input partitions they live on.

A scope's records arrive on one input partition (producers key records by asset or asset group), so whoever owns
the partition owns the scope. Where a scope's model comes from, in order: the snapshot topic, read when its
partition is assigned, unless this worker's checkpoint of it learned further (a restart on the same disk); this
worker's checkpoint directory; the bootstrap model; a warm-up fit. On revoke, the
scopes of the revoked partitions are snapshotted and dropped; the next owner restores them before it scores a
record of theirs.

A snapshot (and a checkpoint) carries, per input partition, the position up to which the state reflects every
record of that partition: its scope's records before it were learned, the others judged as not its own. On the
scope's home partition that is how far this worker had judged the partition when it wrote the state (`judged`,
never what was only fetched), not just after the scope's own last record, so a quiet scope does not pull its
partition back to its last record. A scope that learned nothing since its last snapshot gets only a new manifest
with the new position (`SnapshotWriter.reposition`), cheaply, at every snapshot tick. Normally the position is at
least the committed one (learning comes before acknowledging, and a revoke snapshots before it commits). After a
crash the last snapshot may be older than the last commit; then the new owner starts the partition at the lowest
position of its scopes' snapshots instead, so the records in between are scored again (duplicates,
at-least-once) and learned once, never skipped: a record of a scope after its snapshot's position is re-read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np

from streammoe.config import Settings
from streammoe.logs import get_logger
from streammoe.state.checkpoint import Checkpointer, ModelState, Progress, offsets_total
from streammoe.state.scopes import GLOBAL_SCOPE, ScopeMap
from streammoe.state.snapshot import Manifest, SnapshotError, SnapshotTransport, SnapshotWriter, read_latest

log = get_logger("streammoe.state.ownership")


class JudgedPositions:
    """How far this worker has judged each input partition since it was last given it: every record before that
    point is in the held scopes' states (learned by its scope, judged as not their own by the others)."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.next: dict[int, int] = {}  # input partition -> the first offset not judged yet

    def batch(self, partitions: np.ndarray, offsets: np.ndarray) -> None:
        """A batch was judged (scored, learned, or taken as not a scope's): its records are in the held states."""
        for p in np.unique(partitions):
            key = int(p)
            self.next[key] = max(self.next.get(key, 0), int(offsets[partitions == p].max()) + 1)

    def forget(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self.next.pop(p, None)

    def reflected(self, state: ModelState, home: int | None) -> dict[str, dict[int, int]]:
        """`state`'s learned offsets with its home partition's moved up to how far it was judged here, since every
        record before that point is in the state. Never lowered, and only where the state already has a position
        there (one it was restored with or learned itself): a quiet scope then holds its partition back no more."""
        offsets = {t: dict(ps) for t, ps in state.learned_offsets.items()}
        parts = offsets.get(self.topic, {})
        if home is not None and home in self.next and home in parts:
            parts[home] = max(parts[home], self.next[home])
        return offsets


def log_restored(state: ModelState, manifest: Manifest, learned: int | None) -> None:
    detector = state.detector
    log.info(
        "scope_restored",
        scope=state.scope,
        origin="snapshot",
        snapshot_id=manifest.snapshot_id,
        partition=manifest.partition,
        version=state.version,
        learned_to=learned,
        experts=detector.model.n_active if detector else 0,
        weights=[float(w) for w in detector.mixture_weights()] if detector else [],
    )


class OwnedScopes:
    """Model states by scope name, with the input partition each scope's records arrive on."""

    def __init__(
        self,
        settings: Settings,
        checkpointer: Checkpointer,
        snapshots: SnapshotTransport | None = None,
        on_restored: Callable[[ModelState], None] | None = None,
        on_dropped: Callable[[ModelState], None] | None = None,
        on_snapshot: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.checkpointer = checkpointer
        self.channels = list(settings.records.channels)
        self.map = ScopeMap(settings.scopes)
        self.models: dict[str, ModelState] = {}
        self.home: dict[str, int] = {}  # scope -> the input partition its records arrive on
        self._split_warned: set[str] = set()
        self._on_restored = on_restored
        self._on_dropped = on_dropped
        self._on_snapshot = on_snapshot or (lambda outcome: None)  # per write: "written", "repositioned", "failed"
        self.snapshots = snapshots  # the snapshot topic (None: snapshots off)
        self.writer = SnapshotWriter(snapshots, settings.snapshot.chunk_bytes) if snapshots is not None else None
        self._snapshotted: dict[str, Progress] = {}  # scope -> its progress at its last snapshot
        self.judged = JudgedPositions(settings.kafka.input_topic)  # the pipeline reports each judged batch here
        self._last_snapshot = time.monotonic()

    @property
    def single(self) -> bool:
        """One global scope: every record goes to it, whatever its partition (the default)."""
        return self.settings.scopes.mode == "global"

    def get(self, scope: str) -> ModelState:
        """The scope's state, restored on first use from the checkpoint dir, the bootstrap model or nothing (warm-up).
        Raises ModelLoadError for a checkpoint or bootstrap model that exists but cannot be used."""
        state = self.models.get(scope)
        if state is None:
            state = self.models[scope] = self.checkpointer.restore(scope)
            if self._on_restored is not None:
                self._on_restored(state)
        return state

    def route(self, assets: list[str], partitions: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """The rows of a decoded batch grouped by scope, in order of first appearance."""
        if self.single:
            return [(GLOBAL_SCOPE, np.arange(len(assets)))]
        names = [self.map.scope_of(a) for a in assets]
        unique, first, inverse = np.unique(np.asarray(names, dtype=object), return_index=True, return_inverse=True)
        # One stable sort groups the rows (each scope's rows stay in batch order), instead of a pass per scope.
        by_scope = np.argsort(inverse.ravel(), kind="stable")
        chunks = np.split(by_scope, np.flatnonzero(np.diff(inverse.ravel()[by_scope])) + 1)
        groups = []
        for u in np.argsort(first):
            rows = chunks[u]
            scope = str(unique[u])
            self._note_partitions(scope, partitions[rows])
            groups.append((scope, rows))
        return groups

    def _note_partitions(self, scope: str, partitions: np.ndarray) -> None:
        home = self.home.setdefault(scope, int(partitions[0]))
        if scope not in self._split_warned and (partitions != home).any():
            self._split_warned.add(scope)
            log.warning(
                "scope_spans_partitions",
                scope=scope,
                partitions=sorted({home, *map(int, partitions)}),
                hint="key input records by the scope's asset or group; snapshots follow the first partition",
            )

    def reflected(self, state: ModelState) -> dict[str, dict[int, int]]:
        """The learned offsets to write with `state` (a snapshot, a checkpoint): JudgedPositions.reflected."""
        return self.judged.reflected(state, None if self.single else self.home.get(state.scope))

    # ---- handover ------------------------------------------------------------------------------------------

    def assigned(self, topic: str, partitions: Iterable[int]) -> tuple[dict[int, int], list[ModelState]]:
        """Restore the scopes of newly assigned input partitions from the snapshot topic (before any of their
        records is scored). Returns the restored states and, per partition, the lowest offset a restored scope has
        learned up to, so the caller can start there if the group's committed position is further on."""
        parts = set(partitions)
        self.judged.forget(parts)  # what was judged of them before belongs to an earlier ownership
        if self.snapshots is None or not parts:
            return {}, []
        t0 = time.monotonic()
        try:
            states, manifests = read_latest(self.snapshots, self.channels, partitions=parts)
        except SnapshotError as e:
            log.error(
                "snapshot_read_failed",
                partitions=sorted(parts),
                error=str(e),
                hint="the scopes start from the checkpoint directory, the bootstrap model or a warm-up",
            )
            return {}, []
        start: dict[int, int] = {}
        restored = []
        for scope, state in states.items():
            manifest = manifests[scope]
            held = self.models.get(scope)
            if held is not None and offsets_total(held.learned_offsets) >= offsets_total(state.learned_offsets):
                continue  # never gave it up (a revoke and assign back): what is in memory is as new
            local = self.checkpointer.learned_total(scope)
            if held is None and local is not None and local > offsets_total(state.learned_offsets):
                log.info(
                    "scope_snapshot_older_than_checkpoint",
                    scope=scope,
                    snapshot_id=manifest.snapshot_id,
                    hint="this worker's checkpoint learned further (a restart on the same disk): it is used",
                )
                continue
            self.models[scope] = state
            restored.append(state)
            self.home[scope] = manifest.partition
            self._snapshotted[scope] = state.progress
            if self.writer is not None:
                self.writer.restored(manifest)
            learned = state.learned_offsets.get(topic, {}).get(manifest.partition)
            if learned is not None:
                start[manifest.partition] = min(learned, start.get(manifest.partition, learned))
            if self._on_restored is not None:
                self._on_restored(state)
            log_restored(state, manifest, learned)
        log.info(
            "snapshots_read", partitions=sorted(parts), scopes=len(states), seconds=round(time.monotonic() - t0, 3)
        )
        return start, restored

    def revoked(self, partitions: Iterable[int], snapshot: bool = True) -> None:
        """Hand over the scopes of revoked partitions: snapshot each (when snapshots are on), then drop it."""
        parts = set(partitions)
        if self.single:
            return
        for scope in [s for s, p in self.home.items() if p in parts]:
            state = self.models.pop(scope, None)
            home = self.home.pop(scope)
            if state is None:
                continue
            if snapshot:
                self._snapshot_or_reposition(state, home)
            self._snapshotted.pop(scope, None)
            if self._on_dropped is not None:
                self._on_dropped(state)
            log.info("scope_released", scope=scope, version=state.version)
        self.judged.forget(parts)  # after the snapshots, which say how far the partitions were judged

    def lost(self, partitions: Iterable[int]) -> None:
        """Lost partitions already have another owner: drop their scopes without writing anything."""
        self.revoked(partitions, snapshot=False)

    def snapshot_due(self) -> bool:
        return self.writer is not None and time.monotonic() - self._last_snapshot >= self.settings.snapshot.interval_s

    def snapshot_changed(self) -> int:
        """Snapshot every held scope that learned since its last snapshot, and move the others' snapshot position on
        to how far their partition was judged (a new manifest only); returns how many snapshots were written."""
        self._last_snapshot = time.monotonic()
        return sum(
            self._snapshot_or_reposition(state, self.home.get(state.scope, -1)) for state in list(self.models.values())
        )

    def _snapshot_or_reposition(self, state: ModelState, partition: int) -> bool:
        """A whole snapshot of a scope whose state moved since its last one, else only its position (True: written)."""
        if self._snapshotted.get(state.scope) != state.progress:
            return self._snapshot(state, partition)
        if self.writer is not None and state.detector is not None:
            try:
                moved = self.writer.reposition(state.scope, self.judged.reflected(state, partition), partition)
            except SnapshotError as e:
                log.warning("snapshot_reposition_failed", scope=state.scope, error=str(e), hint="the last one stands")
                self._on_snapshot("failed")
            else:
                if moved is not None:
                    self._on_snapshot("repositioned")
        return False

    def _snapshot(self, state: ModelState, partition: int) -> bool:
        if self.writer is None or state.detector is None:
            return False
        try:
            self.writer.write(state, partition, self.judged.reflected(state, partition))
        except SnapshotError as e:
            log.error(
                "snapshot_failed",
                scope=state.scope,
                error=str(e),
                hint="the next owner restores an older snapshot and re-reads from its position",
            )
            self._on_snapshot("failed")
            return False
        self._snapshotted[state.scope] = state.progress
        self._on_snapshot("written")
        return True

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
