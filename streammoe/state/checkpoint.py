"""Learned state, saved atomically with the input offsets it has learned, and restored at start.

Each model scope (`global`, or one per asset or asset group with STREAMMOE_SCOPES__MODE) lives in
`<checkpoint.dir>/<scope>/`, a model directory written by `save_detector` (temp dir + rename), beside the
generation it replaced, `.<scope>.old/` (docs/operations.md shows the layout). Its meta carries `learned_offsets`: per input
partition, the offset before which every record is reflected in the model (learned, or judged as another scope's:
state/ownership.py). After a crash the consumer may re-read records past the last
commit that the checkpoint already learned; those are scored and published again (at-least-once) but not
learned twice. Records between a checkpoint and a later commit are never learned by the restored model:
a record is learned at most once per model.

Where a scope's first model comes from, in order: a checkpoint; the `streammoe fit` directory in
`checkpoint.bootstrap_model_dir`; else a warm-up fit on the first `warmup_records` valid records.

A damaged checkpoint (truncated, unreadable, failing its checksums), or one lost by a crash between the two
renames of a save, is replaced by the previous generation `.<scope>.old` with an error in the log; the damaged
directory is kept as `.<scope>.damaged`. An incompatible one (another format version, other channels) stops the
daemon with the reason: an older copy of it would be just as wrong, and starting afresh would throw away what
was learned without anyone deciding to.
"""

from __future__ import annotations

import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from streammoe.config import CheckpointSettings
from streammoe.logs import get_logger
from streammoe.model.detector import MixtureDetector
from streammoe.state.errors import ModelDamagedError, ModelIncompatibleError, ModelLoadError
from streammoe.state.persistence import load_detector, previous_path, read_meta, save_detector

log = get_logger("streammoe.state.checkpoint")

# The checkpoint's own layer over the model directory (meta keys beside the model's format_version):
# 1 = learned offsets only (meta without "checkpoint_version"); 2 = also the scope's incident state; 3 = also when
# the model's lineage began (`born_ms`). A version-1 checkpoint loads as one without open incidents; 1 and 2 load
# with born_ms 0 (unknown: every command that names a slot applies, as those versions did).
CHECKPOINT_VERSION = 3
READABLE_CHECKPOINTS = (1, 2, 3)


Progress = tuple[str, int, int]  # ModelState.progress: model version, offsets seen, incident state revision


@dataclass
class ModelState:
    """One scope's model and what it has learned; `detector` is None until warm-up completes."""

    scope: str
    detector: MixtureDetector | None
    lineage: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    origin: str = "warmup"  # checkpoint | bootstrap | warmup
    learned_offsets: dict[str, dict[int, int]] = field(default_factory=dict)
    recovered: str = ""  # why the previous checkpoint generation was loaded instead: "damaged" | "missing"
    incidents: dict | None = None  # the scope's IncidentTracker.to_state(): open incidents, debounce windows
    incidents_revision: int = 0  # bumped by keep_incidents on a change: one without records (a stale resolution) saves
    # When this lineage began (epoch ms, the worker's clock; 0: unknown): a command on the control topic that names
    # only a slot and was sent before it was meant for an earlier model (daemon/verdicts.py).
    born_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    @property
    def version(self) -> str:
        """`<lineage>.<records learned>`: the lineage changes only when a model starts from scratch."""
        learned = self.detector.counters["records_learned"] if self.detector else 0
        return f"{self.lineage}.{learned}"

    @property
    def progress(self) -> Progress:
        """Changes whenever the state would save differently: what the model learned, the offsets it has seen
        (records judged but not learned, control commands, move the offsets only), and its incident state."""
        return self.version, offsets_total(self.learned_offsets), self.incidents_revision

    def keep_incidents(self, incidents: dict) -> None:
        """The scope's incident state as of now (IncidentTracker.to_state), for its next checkpoint or snapshot.

        An unchanged state keeps its revision: records re-read after a handover or a restart (the tracker skips
        them) must not make the new owner write a snapshot or checkpoint of a scope that moved nowhere."""
        if incidents == self.incidents:
            return
        self.incidents = incidents
        self.incidents_revision += 1

    def predates(self, sent_ms: int | None) -> bool:
        """Whether a message sent at `sent_ms` (epoch ms) was sent before this model's lineage began: meant for an
        earlier model. False when either time is unknown (no timestamp, or a checkpoint of before born_ms)."""
        return bool(self.born_ms) and sent_ms is not None and sent_ms < self.born_ms

    def already_learned(self, topic: str, partition: int, offset: int) -> bool:
        return offset < self.learned_offsets.get(topic, {}).get(partition, 0)

    def advance(self, topic: str, partition: int, next_offset: int) -> None:
        parts = self.learned_offsets.setdefault(topic, {})
        parts[partition] = max(parts.get(partition, 0), next_offset)


def offsets_total(offsets: dict[str, dict[int, int]]) -> int:
    """One number that grows whenever any learned offset moves: how to compare how far two states have learned."""
    return sum(o for parts in offsets.values() for o in parts.values())


def offsets_to_json(offsets: dict[str, dict[int, int]]) -> dict[str, dict[str, int]]:
    """Learned offsets for a JSON document (checkpoint meta, snapshot manifest): partitions as string keys."""
    return {t: {str(p): o for p, o in parts.items()} for t, parts in offsets.items()}


def offsets_from_json(raw: dict[str, dict[str, int]]) -> dict[str, dict[int, int]]:
    """The inverse of `offsets_to_json`; raises TypeError/ValueError/AttributeError on a malformed document."""
    return {t: {int(p): int(o) for p, o in parts.items()} for t, parts in raw.items()}


class Checkpointer:
    def __init__(self, settings: CheckpointSettings, channels: list[str]) -> None:
        self.settings = settings
        self.channels = channels
        self.last_saved = time.monotonic()
        self._saved: dict[str, Progress] = {}  # scope -> progress at its last save (or restore)

    def path(self, scope: str) -> Path:
        return self.settings.dir / scope

    def restore(self, scope: str) -> ModelState:
        """Raises ModelLoadError when a checkpoint or bootstrap model exists but cannot be used."""
        path = self.path(scope)
        if path.exists() or previous_path(path).exists():
            state = self._restore_checkpoint(scope)
            self._saved[scope] = state.progress
        elif self.settings.bootstrap_model_dir is not None:
            boot = self.settings.bootstrap_model_dir
            try:
                state = ModelState(scope, load_detector(boot, channels=self.channels), origin="bootstrap")
            except ModelLoadError as e:
                raise type(e)(f"STREAMMOE_CHECKPOINT__BOOTSTRAP_MODEL_DIR: {e}") from e
        else:
            state = ModelState(scope, None, origin="warmup")
        log.info(
            "model_restored",
            scope=scope,
            origin=state.origin,
            version=state.version,
            experts=state.detector.model.n_active if state.detector else 0,
        )
        return state

    def learned_total(self, scope: str) -> int | None:
        """How far the scope's checkpoint here has learned (the sum of its learned offsets), from its meta alone;
        None when there is none or it cannot be read (a full restore then decides what to do about it)."""
        try:
            meta = read_meta(self.path(scope))
            return offsets_total(offsets_from_json(meta.get("learned_offsets", {})))
        except (ModelLoadError, AttributeError, TypeError, ValueError):
            return None

    def _load(self, scope: str, path: Path) -> ModelState:
        detector = load_detector(path, channels=self.channels)
        meta = read_meta(path)
        try:
            offsets = offsets_from_json(meta.get("learned_offsets", {}))
        except (AttributeError, TypeError, ValueError) as e:
            raise ModelDamagedError(f"{path}/meta.json has malformed learned_offsets: {e}") from e
        version = meta.get("checkpoint_version", 1)
        if version not in READABLE_CHECKPOINTS:
            raise ModelIncompatibleError(
                f"{path} has checkpoint version {version!r}; this streammoe reads "
                f"checkpoint versions {list(READABLE_CHECKPOINTS)}"
            )
        incidents = meta.get("incidents") if version >= 2 else None  # version 1: no incident state (migration)
        if incidents is not None and not isinstance(incidents, dict):
            raise ModelDamagedError(f"{path}/meta.json has malformed incident state")
        born_ms = meta.get("born_ms", 0) if version >= 3 else 0  # versions 1, 2: unknown (migration)
        if type(born_ms) is not int:
            raise ModelDamagedError(f"{path}/meta.json has a malformed born_ms")
        return ModelState(
            scope, detector, meta.get("lineage", "unknown"), "checkpoint", offsets, incidents=incidents, born_ms=born_ms
        )

    def _restore_checkpoint(self, scope: str) -> ModelState:
        """The current checkpoint, else (damaged or missing) the previous generation; incompatible: refused."""
        path = self.path(scope)
        old = previous_path(path)
        where = f"STREAMMOE_CHECKPOINT__DIR={self.settings.dir}"
        damage: ModelDamagedError | None = None
        for candidate in (path, old):
            if not candidate.exists():
                continue
            try:
                state = self._load(scope, candidate)
            except ModelIncompatibleError as e:
                raise ModelIncompatibleError(
                    f"{e} ({where}, STREAMMOE_RECORDS__CHANNELS). Run the streammoe version and channels it was "
                    f"made for, or move {path} and {old} aside to start a new model."
                ) from e
            except ModelDamagedError as e:
                log.error("checkpoint_damaged", scope=scope, path=str(candidate), error=str(e))
                damage = damage or e
                continue
            if candidate == old:
                if damage is None:  # a crash between the renames of a save: this is the last completed one
                    state.recovered = "missing"
                    log.warning(
                        "checkpoint_fallback", scope=scope, reason="missing", loaded=str(old), version=state.version
                    )
                else:
                    state.recovered = "damaged"
                    log.error(
                        "checkpoint_fallback",
                        scope=scope,
                        reason="damaged",
                        loaded=str(old),
                        version=state.version,
                        hint="what was learned after it is lost; check the disk",
                    )
                    self._set_aside(path)
            return state
        raise ModelDamagedError(
            f"{damage} and no usable previous checkpoint at {old} ({where}). Restore a backup into {path}, or move "
            f"{path} aside to start from STREAMMOE_CHECKPOINT__BOOTSTRAP_MODEL_DIR or a warm-up."
        )

    def _set_aside(self, path: Path) -> None:
        """Keep a damaged checkpoint for inspection, out of the way of the next save's rotation."""
        aside = path.with_name(f".{path.name}.damaged")
        try:
            if aside.exists():
                shutil.rmtree(aside)
            path.rename(aside)
        except OSError as e:
            log.error("checkpoint_set_aside_failed", path=str(path), error=str(e))
            return
        log.warning("checkpoint_set_aside", path=str(path), kept_as=str(aside))

    def due(self) -> bool:
        return time.monotonic() - self.last_saved >= self.settings.interval_s

    def save(self, state: ModelState, offsets: dict[str, dict[int, int]] | None = None) -> Path | None:
        """Write the scope's checkpoint, unless nothing changed since it was last written or read; with `offsets` as
        its learned offsets (default: the state's own; OwnedScopes.reflected moves them on to what was judged)."""
        self.last_saved = time.monotonic()
        if state.detector is None or self._saved.get(state.scope) == state.progress:
            return None
        meta = {
            "scope": state.scope,
            "lineage": state.lineage,
            "learned_offsets": offsets_to_json(state.learned_offsets if offsets is None else offsets),
            "saved_at": time.time(),
            "checkpoint_version": CHECKPOINT_VERSION,
            "incidents": state.incidents,
            "born_ms": state.born_ms,
        }
        path = save_detector(state.detector, self.path(state.scope), meta)
        self._saved[state.scope] = state.progress
        log.info("checkpoint_saved", scope=state.scope, version=state.version, path=str(path))
        return path
