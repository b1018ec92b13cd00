"""Learned state, saved atomically with the input offsets it has learned, and restored at start.

Each model scope ("global" for now; later one per asset group) lives in `<checkpoint.dir>/<scope>/`, a model
directory written by `save_detector` (temp dir + rename). Its meta carries `learned_offsets`: per input
partition, the next offset not yet learned. After a crash the consumer may re-read records past the last
commit that the checkpoint already learned; those are scored and published again (at-least-once) but not
learned twice. Records between a checkpoint and a later commit are never learned by the restored model:
a record is learned at most once per model.

Where a scope's first model comes from, in order: a checkpoint; the `streammoe fit` directory in
`checkpoint.bootstrap_model_dir`; else a warm-up fit on the first `warmup_records` valid records.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from streammoe.config import CheckpointSettings
from streammoe.detector import MixtureDetector
from streammoe.logs import get_logger
from streammoe.persistence import ModelLoadError, load_detector, read_meta, save_detector

log = get_logger("streammoe.checkpoint")

GLOBAL_SCOPE = "global"


@dataclass
class ModelState:
    """One scope's model and what it has learned; `detector` is None until warm-up completes."""

    scope: str
    detector: MixtureDetector | None
    lineage: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    origin: str = "warmup"  # checkpoint | bootstrap | warmup
    learned_offsets: dict[str, dict[int, int]] = field(default_factory=dict)

    @property
    def version(self) -> str:
        """`<lineage>.<records learned>`: the lineage changes only when a model starts from scratch."""
        learned = self.detector.counters["records_learned"] if self.detector else 0
        return f"{self.lineage}.{learned}"

    def already_learned(self, topic: str, partition: int, offset: int) -> bool:
        return offset < self.learned_offsets.get(topic, {}).get(partition, 0)

    def advance(self, topic: str, partition: int, next_offset: int) -> None:
        parts = self.learned_offsets.setdefault(topic, {})
        parts[partition] = max(parts.get(partition, 0), next_offset)


class Checkpointer:
    def __init__(self, settings: CheckpointSettings, channels: list[str]) -> None:
        self.settings = settings
        self.channels = channels
        self.last_saved = time.monotonic()

    def path(self, scope: str) -> Path:
        return self.settings.dir / scope

    def restore(self, scope: str) -> ModelState:
        """Raises ModelLoadError when a checkpoint or bootstrap model exists but cannot be used."""
        path = self.path(scope)
        if (path / "meta.json").exists():
            detector = load_detector(path, channels=self.channels)
            meta = read_meta(path)
            offsets = {t: {int(p): int(o) for p, o in parts.items()} for t, parts in meta.get("learned_offsets", {}).items()}
            state = ModelState(scope, detector, meta.get("lineage", "unknown"), "checkpoint", offsets)
        elif self.settings.bootstrap_model_dir is not None:
            boot = self.settings.bootstrap_model_dir
            if not (boot / "meta.json").exists():
                raise ModelLoadError(f"STREAMMOE_CHECKPOINT__BOOTSTRAP_MODEL_DIR: {boot} is not a model directory")
            state = ModelState(scope, load_detector(boot, channels=self.channels), origin="bootstrap")
        else:
            state = ModelState(scope, None, origin="warmup")
        log.info("model_restored", scope=scope, origin=state.origin, version=state.version,
                 experts=state.detector.model.n_active if state.detector else 0)
        return state

    def due(self) -> bool:
        return time.monotonic() - self.last_saved >= self.settings.interval_s

    def save(self, state: ModelState) -> Path | None:
        self.last_saved = time.monotonic()
        if state.detector is None:
            return None
        meta = {
            "scope": state.scope,
            "lineage": state.lineage,
            "learned_offsets": {t: {str(p): o for p, o in parts.items()} for t, parts in state.learned_offsets.items()},
            "saved_at": time.time(),
        }
        path = save_detector(state.detector, self.path(state.scope), meta)
        log.info("checkpoint_saved", scope=state.scope, version=state.version, path=str(path))
        return path
