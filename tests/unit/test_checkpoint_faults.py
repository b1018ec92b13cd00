"""Restoring from a damaged, half-rotated or incompatible checkpoint directory.

Damaged (truncated file, garbage meta.json, a flipped bit) or lost between the renames of a save: the previous
generation is loaded, loudly. Incompatible (format version, channel set): refused with a reason that names
what to change; never replaced by an older copy, never by a fresh start.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from streammoe.config import CheckpointSettings
from streammoe.model.config import ModelConfig
from streammoe.model.detector import MixtureDetector
from streammoe.state.checkpoint import Checkpointer, ModelState
from streammoe.state.errors import ModelDamagedError, ModelIncompatibleError
from streammoe.state.persistence import load_detector, previous_path

CHANNELS = ["a", "b", "c"]


@pytest.fixture(scope="module")
def generations(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint directory with two generations: `.global.old` (older) and `global` (newer)."""
    rng = np.random.default_rng(0)
    det = MixtureDetector(3, ModelConfig(k_max=2, fit_steps=30, n_samples=2), CHANNELS, device="cpu")
    det.fit(rng.normal(0, 1, (400, 3)).astype(np.float32))
    root = tmp_path_factory.mktemp("ckpt")
    ckpt = Checkpointer(CheckpointSettings(dir=root), CHANNELS)
    state = ModelState("global", det, lineage="cafe0001", origin="warmup", learned_offsets={"in": {0: 100}})
    ckpt.save(state)
    det.learn_many(det.score_many(rng.normal(0, 1, (200, 3)).astype(np.float32)))
    state.advance("in", 0, 300)
    ckpt.save(state)
    return root


@pytest.fixture()
def root(generations: Path, tmp_path: Path) -> Path:
    shutil.copytree(generations, tmp_path / "ckpt")
    return tmp_path / "ckpt"


def restore(root: Path, channels: list[str] = CHANNELS, boot: Path | None = None) -> ModelState:
    return Checkpointer(CheckpointSettings(dir=root, bootstrap_model_dir=boot), channels).restore("global")


def versions(root: Path) -> tuple[str, str]:
    new = json.loads((root / "global" / "meta.json").read_text())
    old = json.loads((root / ".global.old" / "meta.json").read_text())
    return (f"cafe0001.{new['counters']['records_learned']}", f"cafe0001.{old['counters']['records_learned']}")


def test_intact_checkpoint_loads_the_newest_generation(root: Path) -> None:
    new, old = versions(root)
    assert new != old
    state = restore(root)
    assert (state.origin, state.version, state.recovered) == ("checkpoint", new, "")
    assert state.learned_offsets == {"in": {0: 300}}


def truncate(root: Path) -> None:
    f = root / "global" / "experts.pt"
    f.write_bytes(f.read_bytes()[:100])


def garbage_meta(root: Path) -> None:
    (root / "global" / "meta.json").write_bytes(b'{"format_version": 1, "chan')


def flip_a_bit(root: Path) -> None:
    f = root / "global" / "experts.pt"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))


def meta_not_an_object(root: Path) -> None:
    (root / "global" / "meta.json").write_text("[1, 2, 3]")


def empty_directory(root: Path) -> None:
    shutil.rmtree(root / "global")
    (root / "global").mkdir()


@pytest.mark.parametrize("damage", [truncate, garbage_meta, flip_a_bit, meta_not_an_object, empty_directory])
def test_damaged_checkpoint_falls_back_to_the_previous_generation_loudly(root: Path, damage) -> None:  # type: ignore[no-untyped-def]
    _, old = versions(root)
    damage(root)
    with capture_logs() as logs:
        state = restore(root)
    assert (state.origin, state.version, state.recovered) == ("checkpoint", old, "damaged")
    assert state.learned_offsets == {"in": {0: 100}}, "the previous generation's offsets, not the damaged one's"
    events = {e["event"]: e for e in logs}
    assert events["checkpoint_damaged"]["log_level"] == "error"
    assert events["checkpoint_fallback"]["log_level"] == "error"
    assert events["checkpoint_fallback"]["reason"] == "damaged"
    # The damaged directory is kept aside, so the next save cannot rotate it over the good previous one.
    assert not (root / "global").exists() and (root / ".global.damaged").is_dir()
    Checkpointer(CheckpointSettings(dir=root), CHANNELS).save(state)
    assert load_detector(root / ".global.old", channels=CHANNELS).counters == state.detector.counters
    assert restore(root).recovered == ""


def test_only_the_previous_generation_left_by_a_crash_mid_save_is_loaded(root: Path) -> None:
    """A crash between the two renames of a save leaves `.global.old` and no `global`."""
    _, old = versions(root)
    shutil.rmtree(root / "global")
    with capture_logs() as logs:
        state = restore(root, boot=root / "nonexistent-bootstrap")
    assert (state.origin, state.version, state.recovered) == ("checkpoint", old, "missing")
    assert [e["reason"] for e in logs if e["event"] == "checkpoint_fallback"] == ["missing"]


def test_wrong_format_version_is_refused_without_falling_back(root: Path) -> None:
    meta = json.loads((root / "global" / "meta.json").read_text())
    (root / "global" / "meta.json").write_text(json.dumps({**meta, "format_version": 999}))
    with pytest.raises(ModelIncompatibleError, match="format 999") as e:
        restore(root)
    assert "STREAMMOE_CHECKPOINT__DIR" in str(e.value) and str(root / "global") in str(e.value)
    assert (root / "global").is_dir() and (root / ".global.old").is_dir(), "nothing is moved"


def test_a_model_another_version_wrote_is_refused_not_treated_as_damage(root: Path) -> None:
    """Intact files (checksums match) that this code cannot read: a newer config field, say."""
    import hashlib

    d = root / "global"
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "from_the_future": 1}))
    meta = json.loads((d / "meta.json").read_text())
    meta["sha256"]["config.json"] = hashlib.sha256((d / "config.json").read_bytes()).hexdigest()
    meta["streammoe_version"] = "9.9.9"
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelIncompatibleError, match="(?s)written by .9.9.9.*from_the_future"):
        restore(root)
    assert (root / "global").is_dir() and not (root / ".global.damaged").exists()


def test_other_channel_set_is_refused_naming_the_setting(root: Path) -> None:
    with pytest.raises(ModelIncompatibleError, match=r"fitted on channels \['a', 'b', 'c'\]") as e:
        restore(root, channels=["a", "b", "x"])
    assert "STREAMMOE_RECORDS__CHANNELS" in str(e.value)


def test_a_previous_generation_for_other_channels_is_never_the_fallback(root: Path, generations: Path) -> None:
    other = MixtureDetector(3, ModelConfig(k_max=2, fit_steps=10, n_samples=2), ["x", "y", "z"], device="cpu")
    other.fit(np.random.default_rng(1).normal(0, 1, (100, 3)).astype(np.float32))
    from streammoe.state.persistence import save_detector

    shutil.rmtree(root / ".global.old")
    save_detector(other, root / ".global.old")
    truncate(root)
    with pytest.raises(ModelIncompatibleError, match="fitted on channels"):
        restore(root)


def test_damaged_with_no_usable_previous_generation_is_a_clear_error(root: Path) -> None:
    truncate(root)
    shutil.rmtree(root / ".global.old")
    with pytest.raises(ModelDamagedError) as e:
        restore(root, boot=root / "boot")
    text = str(e.value)
    assert "checksum" in text and str(previous_path(root / "global")) in text
    assert "STREAMMOE_CHECKPOINT__DIR" in text and "move" in text
    assert (root / "global").is_dir(), "a damaged checkpoint without a fallback stays where it is"


def test_both_generations_damaged_is_a_clear_error(root: Path) -> None:
    garbage_meta(root)
    f = root / ".global.old" / "calibration.pt"
    f.write_bytes(f.read_bytes()[:50])
    with pytest.raises(ModelDamagedError, match="meta.json is unreadable"):
        restore(root)


def test_damaged_bootstrap_model_names_its_setting(root: Path, tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    shutil.copytree(root / "global", boot)
    (boot / "meta.json").write_text("{")
    with pytest.raises(ModelDamagedError, match="STREAMMOE_CHECKPOINT__BOOTSTRAP_MODEL_DIR: .*unreadable"):
        restore(tmp_path / "empty", boot=boot)


def test_incident_state_is_saved_and_restored_with_the_model(root: Path) -> None:
    state = restore(root)
    state.incidents = {"version": 1, "next_offsets": {"in": {"0": 300}}, "assets": {}}
    state.advance("in", 0, 301)
    Checkpointer(CheckpointSettings(dir=root), CHANNELS).save(state)
    again = restore(root)
    assert again.incidents == state.incidents
    assert json.loads((root / "global" / "meta.json").read_text())["checkpoint_version"] == 3


def test_a_checkpoint_from_before_incidents_loads_without_open_incidents(root: Path) -> None:
    """Version 1 (the fixture's generations are rewritten as the previous streammoe wrote them)."""
    meta_path = root / "global" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta.pop("checkpoint_version", None)
    meta.pop("incidents", None)
    meta_path.write_text(json.dumps(meta))
    state = restore(root)
    assert state.incidents is None and state.learned_offsets == {"in": {0: 300}}


def test_a_newer_checkpoint_version_is_refused_naming_it(root: Path) -> None:
    meta_path = root / "global" / "meta.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "checkpoint_version": 7}))
    with pytest.raises(ModelIncompatibleError, match="checkpoint version 7"):
        restore(root)
