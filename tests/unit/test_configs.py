"""The example env files in configs/: every key is a real setting, every file loads, every key is documented.

load_settings refuses an unknown STREAMMOE_* name at start-up (streammoe/variables.py); walking the nested pydantic
models here also catches a key that is only mentioned in a comment, and a whole section set as one variable.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from streammoe.config import ENV_PREFIX, Settings, SettingsError, load_settings

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.env"))
ASSIGNMENT = re.compile(r"^(STREAMMOE_[A-Z0-9_]+)=")
MENTION = re.compile(r"\bSTREAMMOE_[A-Z0-9_]+\*?")  # a trailing * is a family (STREAMMOE_MODEL__*)


def is_setting(variable: str) -> bool:
    """Whether `STREAMMOE_A__B__C` names a field of Settings (nested sections joined by `__`)."""
    model: type[BaseModel] | None = Settings
    parts = variable.removeprefix(ENV_PREFIX).lower().split("__")
    for i, part in enumerate(parts):
        if model is None or part not in model.model_fields:
            return False
        annotation = model.model_fields[part].annotation
        nested = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if i < len(parts) - 1 and not nested:
            return False  # only sections nest
        if i == len(parts) - 1 and nested:
            return False  # a whole section is set through its fields, not as one variable
        model = annotation if nested else None
    return True


def assignments(path: Path) -> list[tuple[int, str]]:
    lines = path.read_text().splitlines()
    return [(i, m.group(1)) for i, line in enumerate(lines) if (m := ASSIGNMENT.match(line))]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)


def test_the_examples_are_there() -> None:
    assert {p.name for p in CONFIGS} >= {"local.env", "production.env", "gpu.env", "scaleout.env"}


def test_the_walk_knows_real_settings_from_typos() -> None:
    for real in (
        "STREAMMOE_KAFKA__BOOTSTRAP_SERVERS",
        "STREAMMOE_MODEL__NOVELTY__MIN_RECORDS",
        "STREAMMOE_TORCH_THREADS",
        "STREAMMOE_KAFKA__EXTRA",
    ):
        assert is_setting(real), real
    for bogus in (
        "STREAMMOE_KAFKA__BOOTSTRAP_SERVER",
        "STREAMMOE_MODEL__NOVELTY",
        "STREAMMOE_MODEL__N_SAMPLES__X",
        "STREAMMOE_NOVELTY__MIN_RECORDS",
        "STREAMMOE_KAFKA",
        "STREAMMOE_TORCH__THREADS",
    ):
        assert not is_setting(bogus), bogus


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_key_set_or_mentioned_is_a_real_setting(path: Path) -> None:
    keys = {key for _, key in assignments(path)}
    assert keys, f"{path.name} sets nothing"
    mentioned = {m for m in MENTION.findall(path.read_text()) if not m.endswith("*")} - {"STREAMMOE_ENV_FILE"}
    assert [k for k in sorted(keys | mentioned) if not is_setting(k)] == []
    assert len(keys) == len(assignments(path)), "a key set twice: the last one wins silently"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_each_file_loads_on_its_own(path: Path) -> None:
    settings = load_settings(path)
    assert settings.records.channels
    if settings.kafka.security_protocol.startswith("SASL"):  # the password comes from the secret store
        assert settings.kafka.sasl_password is None


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_each_key_is_documented_by_the_comment_above_it(path: Path) -> None:
    """A comment block directly above every assignment (or above the run of assignments it belongs to) names
    the setting, by its field name as in the variable or in lower case."""
    lines = path.read_text().splitlines()
    undocumented = []
    for i, key in assignments(path):
        j = i - 1
        while j >= 0 and ASSIGNMENT.match(lines[j]):  # a run of related keys shares the comment above it
            j -= 1
        block = []
        while j >= 0 and lines[j].startswith("#"):
            block.append(lines[j])
            j -= 1
        field = key.removeprefix(ENV_PREFIX).split("__")[-1]
        comment = "\n".join(block)
        if not block or not (field in comment or field.lower() in comment):
            undocumented.append(key)
    assert undocumented == [], f"{path.name}: no comment above names these settings"


def test_scaleout_example_is_a_scaleout_worker() -> None:
    """scaleout.env: per-group models handed over through a snapshot topic, on the same cluster as production.env."""
    configs = {p.name: p for p in CONFIGS}
    worker = load_settings(configs["scaleout.env"])
    assert worker.scopes.mode != "global" and worker.snapshot.topic, "scale-out needs scopes and a snapshot topic"
    from streammoe.state.scopes import ScopeMap

    scopes = ScopeMap(worker.scopes)
    assert scopes.scope_of("line-2-pump-7") == "line-2", "the example in the comment"
    assert scopes.scope_of("pump-7") == worker.scopes.default_group
    production = load_settings(configs["production.env"])
    assert production.scopes.mode == "global" and production.snapshot.topic is None
    assert worker.kafka.model_dump(exclude={"client_id"}) == production.kafka.model_dump(exclude={"client_id"}), (
        "the same cluster, group and topics as production.env"
    )


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_a_snapshot_topic_comes_with_a_scope_mode(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings refuse STREAMMOE_SNAPSHOT__TOPIC with the global mode; an env file that sets the topic must
    therefore set the mode itself rather than rely on the environment."""
    keys = {key for _, key in assignments(path)}
    if "STREAMMOE_SNAPSHOT__TOPIC" in keys:
        assert "STREAMMOE_SCOPES__MODE" in keys
        monkeypatch.setenv("STREAMMOE_SCOPES__MODE", "global")  # the environment wins over the file
        with pytest.raises(SettingsError, match="STREAMMOE_SCOPES__MODE"):
            load_settings(path)
