"""Save and load a detector as a directory that loads back bit-identically.

Layout (format version 5)::

    meta.json         format and package version, channel names, counters
    config.json       the ModelConfig that shaped the model
    experts.pt        expert weights, each expert's location and scale per channel, the active mask
    em.pt             Dirichlet statistics (gamma), operator status per expert
    scaler.pt         per-channel running mean/variance of the fit (clustering, the uncertainty unit)
    calibration.pt    per-mode reference scores (NLL on the original scale) and each mode's tail as the fit
                      measured it (its anchor)
    replay.pt         per-expert replay reservoirs (raw records)
    novelty.pt        short-term memory of unexplained records (raw), retirement and merge counters
    context.pt        each asset's recent records and their times (streammoe/context/), so a restored model
                      judges the next record of an asset with the same past
    optimizer.pt      Adam state, so online learning continues exactly where it stopped
    rng.pt            sampler state, so a reloaded model draws the same importance samples (on the same kind
                      of device: a model moving between a GPU and a CPU worker is reseeded from it)

Tensors are stored with `torch.save` and read with `weights_only=True` (no pickle code runs on load). A save
writes a sibling temporary directory, fsyncs it, then renames it into place, so a crash never leaves a
half-written model where a good one was. The model it replaced stays beside it as `.NAME.old` (one
generation), for rollback. meta.json holds a SHA-256 of every other file: a flipped bit loads as different
weights without any error from torch, so a file that does not match is refused as damaged.

Format 1 (one global scaler; replay and memory held scaled, clipped records) is migrated on load: every expert
gets the global scaler's location and scale (so it computes what it computed), stored records are unscaled, and
calibration scores gain the log-Jacobian the format-2 likelihoods include. Records format 1 clipped at +-50
stay clipped. Format 2 (no time context) is read as a model without one: its config gets `context.window` 1
(the context it was made with), so it scores and learns as before; formats 1 and 2 have no context.pt.
Formats 1-3 have no calibration anchors: they load unanchored, so their p-values stay what they were (a refit
anchors them). Formats 1-4 have no `context.decoder`: they load with `full`, the decoder they were made with
(format 5 may hold the experts' linear part for the features, model/experts.py). A config.json saved before
`learn_min_resp` and `cascade` existed (formats 1 and 2, the first format-3 saves) loads with 0 and the
cascade off, the dense steps and full pass it was made with; one saved before `learn_min_rows` loads with 1, a
step on every batch as it learned then. Every later save writes all three, so no model changes its meaning when
their defaults do (the format stays 5).

Load errors come in two kinds, because they call for different actions: `ModelDamagedError` (truncated,
unreadable, checksum mismatch: another copy of the same model may be used instead) and
`ModelIncompatibleError` (another format version or another channel set: no copy of it may be used).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from streammoe import __version__
from streammoe.logs import get_logger
from streammoe.model.calibration import unanchored
from streammoe.model.config import ModelConfig
from streammoe.model.detector import MixtureDetector
from streammoe.state.errors import ModelDamagedError, ModelIncompatibleError

log = get_logger("streammoe.state.persistence")

FORMAT_VERSION = 5
# Format 1 is migrated on load (`_migrate_v1`); 1 and 2 have no context, 1-4 decode every input (`_config_of`);
# 1-3 have no anchors.
READABLE = (1, 2, 3, 4, 5)
PARTS: dict[str, str | tuple[str, ...]] = {
    "experts": "experts.",
    "em": ("weights.", "status"),
    "scaler": "scaler.",
    "calibration": "calibration.",
    "replay": "replay.",
    "novelty": ("memory.", "below_floor", "since_merge", "born"),
}


def _split_state(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    parts: dict[str, dict[str, torch.Tensor]] = {name: {} for name in PARTS}
    for key, value in state.items():
        for name, prefix in PARTS.items():
            if key.startswith(prefix):
                parts[name][key] = value
                break
        else:
            raise KeyError(f"state entry {key!r} belongs to no part of the model directory")
    return parts


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_detector(
    detector: MixtureDetector, path: str | Path, extra_meta: dict | None = None, durable: bool = True
) -> Path:
    """Write `detector` to directory `path` atomically (replacing what was there). `durable=False` skips the fsyncs,
    for a directory that is read back at once and thrown away (a snapshot being packed): they cost 5-100 ms."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        state = {k: v.detach().cpu().clone() for k, v in detector.model.state_dict().items()}
        for name, part in _split_state(state).items():
            torch.save(part, tmp / f"{name}.pt")
        torch.save(detector.learner.optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(detector.inputs.state(), tmp / "context.pt")
        torch.save({"generator": detector.generator.get_state().cpu()}, tmp / "rng.pt")
        (tmp / "config.json").write_text(detector.config.model_dump_json(indent=2))
        meta = {
            "format_version": FORMAT_VERSION,
            "streammoe_version": __version__,
            "channels": detector.channels,
            "counters": detector.counters,
            "sha256": {f.name: _sha256(f) for f in sorted(tmp.iterdir())},
            **(extra_meta or {}),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        if durable:
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            _fsync_dir(tmp)
        old = previous_path(path)
        moved = False
        if path.exists():
            if old.exists():
                shutil.rmtree(old)
            os.rename(path, old)
            moved = True
        try:
            os.rename(tmp, path)
        except BaseException:
            if moved and not path.exists():
                os.rename(old, path)
            raise
        if durable:
            _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def previous_path(path: str | Path) -> Path:
    """Where the model that a save replaced is kept: the rollback target, and the fallback after a crash
    between the two renames of a save (when `path` itself is missing)."""
    path = Path(path)
    return path.with_name(f".{path.name}.old")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_meta(path: str | Path) -> dict:
    """meta.json of a model directory, checked for the fields a load relies on (ModelDamagedError if not)."""
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except FileNotFoundError as e:
        raise ModelDamagedError(f"{path} is not a streammoe model directory (no meta.json)") from e
    except (OSError, ValueError) as e:
        raise ModelDamagedError(f"{path}/meta.json is unreadable: {e}") from e
    if not isinstance(meta, dict) or not isinstance(meta.get("format_version"), int):
        raise ModelDamagedError(f"{path}/meta.json is not a model's meta (no integer format_version)")
    channels = meta.get("channels")
    if meta["format_version"] in READABLE and (
        not isinstance(channels, list) or not channels or not all(isinstance(c, str) for c in channels)
    ):
        raise ModelDamagedError(f"{path}/meta.json has no list of channel names")
    if not isinstance(meta.get("sha256", {}), dict):
        raise ModelDamagedError(f"{path}/meta.json has a malformed sha256 table")
    return meta


def _verify(path: Path, meta: dict) -> bool:
    """Every file meta.json has a checksum for must be there and match it; False if it has none (older saves)."""
    for name, digest in meta.get("sha256", {}).items():
        try:
            actual = _sha256(path / name)
        except OSError as e:
            raise ModelDamagedError(f"{path} could not be loaded: {name} is unreadable: {e}") from e
        if actual != digest:
            raise ModelDamagedError(f"{path} could not be loaded: {name} does not match its checksum in meta.json")
    return bool(meta.get("sha256"))


def restore_sampler(generator: torch.Generator, state: torch.Tensor) -> bool:
    """Give `generator` the saved sampler state; False when it was reseeded from it instead.

    A CPU generator's state (5056 bytes) and a CUDA generator's (16) do not fit each other, so a model moving
    between a GPU and a CPU worker cannot continue the saved stream. It gets a seed derived from the saved state:
    every worker restoring the same checkpoint on the same kind of device still draws the same samples."""
    if state.numel() == generator.get_state().numel():
        generator.set_state(state)
        return True
    generator.manual_seed(int.from_bytes(hashlib.sha256(state.numpy().tobytes()).digest()[:8], "little") >> 1)
    log.info(
        "sampler_reseeded",
        device=generator.device.type,
        saved_state_bytes=int(state.numel()),
        reason="the model was saved on another kind of device",
    )
    return False


def _migrate_v1(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A format-1 state dict as format 2: per-expert scales from the global scaler, raw stored records,
    calibration scores on the original scale. Scores and decisions stay what they were (up to float rounding),
    except for readings format 1 clipped at 50 spreads."""
    from streammoe.model.scaler import std_floor

    count, mean, m2 = state["scaler.count"], state["scaler.mean"], state["scaler.m2"]
    std = torch.maximum((m2 / count.clamp(min=1.0)).sqrt(), std_floor(mean))
    k = state["experts.active"].shape[0]
    out = dict(state)
    out["experts.loc"] = mean.to(torch.float32).expand(k, -1).clone()
    out["experts.scale"] = std.to(torch.float32).expand(k, -1).clone()
    mean32, std32 = mean.to(torch.float32), std.to(torch.float32)
    out["replay.records"] = state["replay.records"] * std32 + mean32
    out["memory.x"] = state["memory.x"] * std32 + mean32
    out["calibration.scores"] = state["calibration.scores"] + float(torch.log(std).sum())
    return out


def _config_of(path: Path, version: int) -> ModelConfig:
    """The saved ModelConfig; a model of format 1 or 2 was made without a time context, one of format 3 or 4 with
    its features decoded like the values (`context.decoder` full), one saved before `learn_min_resp` and
    `cascade` existed with dense steps and the full pass, and one saved before the holdout settings
    with a tenth held out unguarded, whatever the defaults."""
    raw = json.loads((path / "config.json").read_text())
    if isinstance(raw, dict):
        raw.setdefault("learn_min_resp", 0.0)
        raw.setdefault("learn_min_rows", 1)  # saved before the step waited for rows: a step on every batch
        raw.setdefault("holdout_rows", 0)  # saved before holdout_rows: a refit holds out a tenth, unguarded
        raw.setdefault("holdout_share", 0.1)
        raw.setdefault("holdout_guard", 0)
        cascade = raw.setdefault("cascade", {})
        if isinstance(cascade, dict):
            cascade.setdefault("enabled", False)
    if version < 3 and isinstance(raw, dict):
        raw["context"] = {"window": 1}
    if version < 5 and isinstance(raw, dict) and isinstance(raw.get("context"), dict):
        raw["context"] = {**raw["context"], "decoder": "full"}
    return ModelConfig.model_validate(raw)


def load_detector(
    path: str | Path, device: torch.device | str | None = None, channels: list[str] | None = None
) -> MixtureDetector:
    """Load a model directory. With `channels`, refuse a model made for a different channel set.

    If `path` is missing but the model it replaced is still there (a crash between the renames of a save),
    that previous model is loaded."""
    path = Path(path)
    if not path.exists() and previous_path(path).exists():
        path = previous_path(path)
    meta = read_meta(path)
    if meta["format_version"] not in READABLE:
        raise ModelIncompatibleError(
            f"{path} has model format {meta['format_version']!r}; this streammoe reads formats "
            f"{', '.join(map(str, READABLE))}: refit it with `streammoe fit`"
        )
    if channels is not None and list(channels) != list(meta["channels"]):
        raise ModelIncompatibleError(f"{path} was fitted on channels {meta['channels']}, not {list(channels)}")
    intact = _verify(path, meta)
    try:
        config = _config_of(path, meta["format_version"])
        detector = MixtureDetector(len(meta["channels"]), config, meta["channels"], device)
        state: dict[str, torch.Tensor] = {}
        for name in PARTS:
            state.update(torch.load(path / f"{name}.pt", map_location=detector.device, weights_only=True))
        if meta["format_version"] == 1:
            state = _migrate_v1(state)
        if meta["format_version"] < 4:
            state["calibration.anchor"] = unanchored(state["calibration.count"].shape[0]).to(detector.device)
        detector.model.load_state_dict(state, strict=True)
        optimizer = detector.learner.optimizer
        saved = torch.load(path / "optimizer.pt", map_location=detector.device, weights_only=True)
        for group in saved["param_groups"]:  # how Adam runs is this version's choice (older ones saved it unfused)
            group.update({k: optimizer.param_groups[0][k] for k in ("fused", "foreach")})
        optimizer.load_state_dict(saved)
        if meta["format_version"] >= 3:
            detector.inputs.load_state(torch.load(path / "context.pt", map_location="cpu", weights_only=True))
        rng = torch.load(path / "rng.pt", map_location="cpu", weights_only=True)
        restore_sampler(detector.generator, rng["generator"])
    except Exception as e:  # a truncated or foreign file surfaces as many exception types; name the model
        if intact:  # the files are as they were written: another streammoe version wrote them
            raise ModelIncompatibleError(
                f"{path} could not be loaded by this streammoe ({__version__}; it was written by "
                f"{meta.get('streammoe_version')!r}): {type(e).__name__}: {e}"
            ) from e
        raise ModelDamagedError(f"{path} could not be loaded: {type(e).__name__}: {e}") from e
    detector.counters.update(meta.get("counters", {}))
    return detector
