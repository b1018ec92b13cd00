"""Scope snapshots on a Kafka topic: how a worker hands a model scope to the worker that takes its partitions.

A snapshot is the scope's model directory (the same files a checkpoint holds, `persistence.save_detector`) and its
incident state (`incidents.json`) as one tar blob, cut into chunks, plus a manifest that names them and carries the
input offsets the model has learned. The incident state rides in the blob, not the manifest: with its kept record
positions and resolved incidents it can pass 1 MB, Kafka's default message limit, and only chunks are cut to fit.
The topic is meant to be compacted, so keys are chosen for compaction to keep a whole snapshot:

    manifest   key  "<scope>"                       JSON: id, slot, chunk count, size, sha256, learned offsets
    chunk      key  "<scope>\\x1f<slot>\\x1f<i>"    bytes; header `snapshot_id`

Chunks alternate between two slots (0, 1) from one snapshot to the next, and the manifest is written only after
every chunk is acknowledged. A writer that dies half way overwrites chunks of the slot no manifest points to, so
the latest manifest still finds its chunks whole, with or without compaction (a new owner's first snapshot takes
the slot its restored manifest does not use). A scope that learned nothing while its partition was read on gets a
new manifest for the same chunks, same id, with the new position (`reposition`). The reader folds the topic to the
latest message per key (Tansu never compacts; Kafka may not have yet) and verifies the checksum; when the newest
manifest's chunks do not check out, it tries the scope's older manifests still in the log.

This module is the encoding. The topic itself (bytes in, bytes out) is a `SnapshotTransport`, by default
streammoe.kafka.snapshots.SnapshotTopic, given to the writer and the reader by whoever builds them.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import orjson

from streammoe.kafka.sink import Headers
from streammoe.kafka.snapshots import SnapshotError, SnapshotMessage
from streammoe.logs import get_logger
from streammoe.state.checkpoint import ModelState, offsets_from_json, offsets_to_json
from streammoe.state.errors import ModelLoadError
from streammoe.state.persistence import load_detector, save_detector

log = get_logger("streammoe.state.snapshot")

SEP = "\x1f"
DEFAULT_CHUNK_BYTES = 512 * 1024  # under Kafka's default 1 MB message limit, with room for headers

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "SEP",
    "Manifest",
    "SnapshotError",
    "SnapshotTransport",
    "SnapshotWriter",
    "chunk_key",
    "pack",
    "read_latest",
    "unpack",
]


class SnapshotTransport(Protocol):
    """The snapshot topic as bytes (streammoe.kafka.snapshots.SnapshotTopic); raises SnapshotError."""

    def send(self, key: str, value: bytes, headers: Headers | None = None, input_partition: int = -1) -> None: ...
    def read(self, input_partitions: set[int] | None = None) -> Iterable[SnapshotMessage]: ...
    def close(self) -> None: ...


# 1: model and learned offsets; 2: also the scope's incident state (a version-1 manifest has none); 3: also when
# the model's lineage began (`born_ms`; versions 1 and 2 read as 0, unknown); 4: the incident state moved from the
# manifest into the chunked blob (member INCIDENTS_MEMBER), so the manifest stays small (versions 2 and 3: inline).
MANIFEST_VERSION = 4
READABLE_MANIFESTS = (1, 2, 3, 4)
INCIDENTS_MEMBER = "incidents.json"


@dataclass
class Manifest:
    scope: str
    snapshot_id: str
    slot: int
    chunks: int
    size: int
    sha256: str
    lineage: str
    learned_offsets: dict[str, dict[int, int]]
    written_at: float = field(default_factory=time.time)
    partition: int = -1  # the input partition the scope's records arrive on; -1: not tied to one
    incidents: dict | None = None  # versions 2 and 3 only: the incident state inline (version 4: in the blob)
    born_ms: int = 0  # ModelState.born_ms: when the model's lineage began (0: unknown)
    version: int = MANIFEST_VERSION

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.__dict__ | {"learned_offsets": offsets_to_json(self.learned_offsets)})

    @classmethod
    def from_bytes(cls, raw: bytes) -> Manifest:
        """Version 1 (no `version`, no incident state) is read as a manifest without open incidents; versions 1 and
        2 (no `born_ms`) with born_ms 0; versions 2 and 3 carry the incident state inline, which `unpack` uses."""
        d = orjson.loads(raw)
        d["learned_offsets"] = offsets_from_json(d["learned_offsets"])
        d.setdefault("version", 1)
        if d["version"] not in READABLE_MANIFESTS:
            raise ValueError(
                f"snapshot manifest version {d['version']!r} of scope {d.get('scope')!r}; this "
                f"streammoe reads {list(READABLE_MANIFESTS)}"
            )
        return cls(**d)


def chunk_key(scope: str, slot: int, index: int) -> str:
    return f"{scope}{SEP}{slot}{SEP}{index}"


def pack(state: ModelState) -> bytes:
    """The scope's model directory and incident state as an uncompressed tar (torch tensors barely compress)."""
    if state.detector is None:
        raise SnapshotError(f"scope {state.scope!r} has no model yet (warming up): nothing to snapshot")
    with tempfile.TemporaryDirectory() as tmp:
        model = save_detector(
            state.detector, Path(tmp) / "model", {"scope": state.scope, "lineage": state.lineage}, durable=False
        )
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for f in sorted(model.iterdir()):
                tar.add(f, arcname=f.name)
            if state.incidents is not None:
                raw = orjson.dumps(state.incidents)
                info = tarfile.TarInfo(INCIDENTS_MEMBER)
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
    return buf.getvalue()


def unpack(blob: bytes, manifest: Manifest, channels: list[str]) -> ModelState:
    """The model state of a snapshot; the incident state from the blob (version 4) or the manifest (2 and 3)."""
    incidents = manifest.incidents
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
            members = tar.getmembers()
            model = [m for m in members if m.name != INCIDENTS_MEMBER]
            tar.extractall(tmp, members=model, filter="data")
            for m in members:
                if m.name == INCIDENTS_MEMBER and (f := tar.extractfile(m)) is not None:
                    try:
                        incidents = orjson.loads(f.read())
                    except orjson.JSONDecodeError as e:
                        raise ModelLoadError(f"snapshot of scope {manifest.scope!r}: unreadable incident state: {e}")
        detector = load_detector(tmp, channels=channels)
    return ModelState(
        manifest.scope,
        detector,
        manifest.lineage,
        "snapshot",
        {t: dict(ps) for t, ps in manifest.learned_offsets.items()},
        incidents=incidents,
        born_ms=manifest.born_ms,
    )


class SnapshotWriter:
    """Writes scope snapshots to `topic`; remembers each scope's last manifest, so the next snapshot goes to the other
    slot and a scope that learned nothing can be given a new position with a manifest alone."""

    def __init__(self, topic: SnapshotTransport, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        self.topic, self.chunk_bytes = topic, chunk_bytes
        self.last: dict[str, Manifest] = {}  # scope -> its newest manifest in the topic (written or restored here)

    def restored(self, manifest: Manifest) -> None:
        """A scope restored from `manifest`: its chunks stand in the topic, so the next snapshot takes the other slot
        (never overwriting the last whole one) and a reposition may point at them."""
        self.last[manifest.scope] = manifest

    def reposition(self, scope: str, offsets: dict[str, dict[int, int]], partition: int = -1) -> Manifest | None:
        """A new manifest for the scope's newest snapshot, same chunks, with the learned offsets `offsets`, for a
        state that did not change since: its partition was judged further. Nothing is sent when the offsets did not
        move or this writer knows no snapshot of the scope; returns the manifest sent."""
        last = self.last.get(scope)
        if last is None or last.learned_offsets == offsets:
            return None
        manifest = replace(
            last,
            learned_offsets={t: dict(ps) for t, ps in offsets.items()},
            written_at=time.time(),
            partition=partition,
        )
        self.topic.send(scope, manifest.to_bytes(), None, partition)
        self.last[scope] = manifest
        log.debug("snapshot_repositioned", scope=scope, snapshot_id=manifest.snapshot_id, partition=partition)
        return manifest

    def write(
        self, state: ModelState, partition: int = -1, offsets: dict[str, dict[int, int]] | None = None
    ) -> Manifest:
        """Snapshot `state`, tied to input `partition` (its records' partition; -1: any, the key decides), with
        `offsets` as its learned offsets (default: the state's own; OwnedScopes.reflected moves them on)."""
        blob = pack(state)
        last = self.last.get(state.scope)
        slot = 0 if last is None else 1 - last.slot
        n = max(1, -(-len(blob) // self.chunk_bytes))
        manifest = Manifest(
            state.scope,
            uuid.uuid4().hex[:12],
            slot,
            n,
            len(blob),
            hashlib.sha256(blob).hexdigest(),
            state.lineage,
            {t: dict(ps) for t, ps in (state.learned_offsets if offsets is None else offsets).items()},
            partition=partition,
            born_ms=state.born_ms,
        )
        headers: Headers = [("snapshot_id", manifest.snapshot_id.encode())]
        for i in range(n):
            part = blob[i * self.chunk_bytes : (i + 1) * self.chunk_bytes]
            self.topic.send(chunk_key(state.scope, slot, i), part, headers, partition)
        self.topic.send(state.scope, manifest.to_bytes(), None, partition)
        self.last[state.scope] = manifest
        detector = state.detector
        log.info(
            "snapshot_written",
            scope=state.scope,
            snapshot_id=manifest.snapshot_id,
            bytes=len(blob),
            chunks=n,
            partition=partition,
            version=state.version,
            experts=detector.model.n_active if detector else 0,
            weights=[float(w) for w in detector.mixture_weights()] if detector else [],
        )
        return manifest

    def close(self) -> None:
        self.topic.close()


def read_latest(
    topic: SnapshotTransport, channels: list[str], scopes: set[str] | None = None, partitions: set[int] | None = None
) -> tuple[dict[str, ModelState], dict[str, Manifest]]:
    """The newest whole snapshot of each scope (of `scopes`, or all) in `topic`, as model states, with manifests.

    With `partitions` (input partitions), only the snapshot partitions they map to are read, and only scopes whose
    newest manifest names one of them are returned: what a worker needs when it is assigned those partitions."""
    manifests: dict[str, list[Manifest]] = {}
    chunks: dict[str, tuple[str, bytes]] = {}  # latest per chunk key: (snapshot id, bytes)
    for key, value, headers in topic.read(partitions):
        if SEP in key:
            if scopes is None or key.split(SEP, 1)[0] in scopes:
                chunks[key] = (headers.get("snapshot_id", b"").decode(), value)
        elif scopes is None or key in scopes:
            try:
                manifests.setdefault(key, []).append(Manifest.from_bytes(value))
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                log.error("snapshot_manifest_unreadable", scope=key, error=str(e))
    if partitions is not None:  # a scope that moved to another partition since is no longer ours
        manifests = {s: h for s, h in manifests.items() if h[-1].partition in partitions}
    states: dict[str, ModelState] = {}
    chosen: dict[str, Manifest] = {}
    for scope, history in manifests.items():
        for manifest in reversed(history):
            blob = _assemble(manifest, chunks)
            if blob is None:
                log.warning("snapshot_incomplete", scope=scope, snapshot_id=manifest.snapshot_id)
                continue
            try:
                states[scope] = unpack(blob, manifest, channels)
            except ModelLoadError as e:
                log.error("snapshot_unusable", scope=scope, snapshot_id=manifest.snapshot_id, error=str(e))
                continue
            chosen[scope] = manifest
            break
    return states, chosen


def _assemble(manifest: Manifest, chunks: dict[str, tuple[str, bytes]]) -> bytes | None:
    parts = []
    for i in range(manifest.chunks):
        got = chunks.get(chunk_key(manifest.scope, manifest.slot, i))
        if got is None or got[0] != manifest.snapshot_id:
            return None
        parts.append(got[1])
    blob = b"".join(parts)
    if len(blob) != manifest.size or hashlib.sha256(blob).hexdigest() != manifest.sha256:
        return None
    return blob
