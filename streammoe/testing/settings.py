"""The settings builder that tests, benchmarks and the demo share: a daemon on the loopback test broker.

`daemon_env()` writes the settings as the `STREAMMOE_*` variables an operator sets, so one builder serves a daemon
in this process (`settings_from_env()`, or the variables set with pytest's monkeypatch) and a daemon in a child
process (`env=`). Its defaults suit the embedded broker on a busy 2-core box: group timeouts short enough that a
join does not stall a test (Tansu's group joins are slow at the client defaults, docs/platform.md), a 10 ms fetch
wait, batches of 256 within 50 ms, checkpoints only on stop, no HTTP server and JSON logs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ParamSpec

from streammoe.config import Settings

P = ParamSpec("P")
PREFIX = "STREAMMOE_"
ROLES = {
    "input": "input_topic",
    "alerts": "alerts_topic",
    "dead": "dead_letter_topic",
    "scores": "scores_topic",
    "events": "events_topic",
    "control": "control_topic",
}
DEFAULTS: dict[str, object] = {
    "kafka__session_timeout_ms": 6000,
    "kafka__fetch_wait_max_ms": 10,
    "kafka__commit_interval_s": 0.5,
    "kafka__extra": {"heartbeat.interval.ms": "1000"},
    "batching__max_batch": 256,
    "batching__max_wait_ms": 50,
    "checkpoint__interval_s": 3600,
    "http__enabled": False,
    "log_format": "json",
}


def topics_for(input_topic: str, roles: Sequence[str] = ("alerts", "dead", "events", "control")) -> dict[str, str]:
    """The input topic and its outputs named after it: `{input}-alerts`, `{input}-dead`, ..."""
    return {"input": input_topic, **{role: f"{input_topic}-{role}" for role in roles}}


def daemon_env(
    bootstrap: str,
    topics: Mapping[str, str],
    channels: Sequence[str],
    *,
    group: str,
    checkpoint_dir: Path,
    model_dir: Path | None = None,
    **overrides: object,
) -> dict[str, str]:
    """The variables of one daemon. `topics` maps roles (input, alerts, dead, scores, events, control) to topic
    names; `model_dir` is the bootstrap model; `overrides` are `section__field=value`, as the variables are named
    (`kafka__session_timeout_ms=4000`, `http__port=0`, `torch_threads=1`); a value of None drops a default."""
    unknown = set(topics) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown topic roles {sorted(unknown)}; known: {sorted(ROLES)}")
    given: dict[str, object] = {
        "kafka__bootstrap_servers": bootstrap,
        "kafka__group_id": group,
        **{f"kafka__{ROLES[role]}": name for role, name in topics.items()},
        "records__channels": list(channels),
        "checkpoint__dir": checkpoint_dir,
        **({"checkpoint__bootstrap_model_dir": model_dir} if model_dir is not None else {}),
        **DEFAULTS,
        **overrides,
    }
    return {PREFIX + name.upper(): _text(value) for name, value in given.items() if value is not None}


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """Settings from `STREAMMOE_*` variables given here rather than in the process environment."""
    nested: dict[str, Any] = {}
    for name, text in env.items():
        if not name.startswith(PREFIX):
            continue
        *sections, field = name[len(PREFIX) :].lower().split("__")
        at = nested
        for section in sections:
            at = at.setdefault(section, {})
        at[field] = json.loads(text) if text[:1] in ("[", "{") else text  # "" is a value, not JSON
    return Settings(**nested)


def _in_process(env_builder: Callable[P, dict[str, str]]) -> Callable[P, Settings]:
    """An env builder whose variables are read as Settings here, with the builder's own signature."""

    def build(*args: P.args, **kwargs: P.kwargs) -> Settings:
        return settings_from_env(env_builder(*args, **kwargs))

    build.__doc__ = f"`{env_builder.__name__}()` as Settings, for a daemon in this process."
    return build


daemon_settings = _in_process(daemon_env)


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list | tuple):
        return json.dumps(value)
    return str(value)
