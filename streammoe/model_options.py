"""The model options of `streammoe fit` and `score`: every ModelConfig field, from the command line or from the
same `STREAMMOE_MODEL__*` variables the daemon reads, so a daemon's model can be reproduced offline.

Options are derived from ModelConfig (a field added there is an option here): `--k-max`, `--threshold`, ...,
and the novelty section's as `--novelty-min-records`. The command line wins over the environment, which wins
over ModelConfig's defaults. A model loaded with `score --model` keeps the configuration it was made with: an
option given on the command line that differs from it is refused (it would be ignored), one from the
environment is named in a warning.

`score`'s `incident` column reads the daemon's `STREAMMOE_INCIDENTS__*` variables the same way
(`incident_settings`), so the incidents in SCORES.csv are the ones a daemon so configured would open.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from streammoe.incidents.settings import IncidentSettings
from streammoe.model.config import ModelConfig
from streammoe.variables import PREFIX, unknown_variables

SECTION = "model"
ENV_SECTION = f"{PREFIX}{SECTION.upper()}__"
INCIDENTS_ENV = f"{PREFIX}INCIDENTS__"
SCALARS = (int, float, bool)


class UsageError(Exception):
    """A command line that cannot be run as given; the message says what to change."""


class _ModelSettings(BaseSettings):
    """Only the `model` section of the daemon's settings (the rest does not concern fit and score)."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX, env_nested_delimiter="__", extra="ignore", case_sensitive=False
    )

    model: ModelConfig = Field(default_factory=ModelConfig)


class _IncidentSettings(BaseSettings):
    """Only the `incidents` section of the daemon's settings, for `score`'s incident column."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX, env_nested_delimiter="__", extra="ignore", case_sensitive=False
    )

    incidents: IncidentSettings = Field(default_factory=IncidentSettings)


def incident_settings() -> IncidentSettings:
    """IncidentSettings from `STREAMMOE_INCIDENTS__*` over the defaults; UsageError naming a bad variable."""
    from streammoe.config import Settings

    section = {k: v for k, v in os.environ.items() if k.upper().startswith(INCIDENTS_ENV)}
    problems = unknown_variables(Settings, section)
    if problems:
        raise UsageError(problems[0])
    try:
        return _IncidentSettings().incidents
    except ValidationError as e:
        err = e.errors()[0]
        where = INCIDENTS_ENV + "__".join(str(p) for p in err["loc"][1:]).upper() if len(err["loc"]) > 1 else None
        raise UsageError(f"{where or 'STREAMMOE_INCIDENTS__*'}: {err['msg'].removeprefix('Value error, ')}") from None


def option_fields(model: type[BaseModel] = ModelConfig, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], type]:
    """Field path -> type, for every scalar field of ModelConfig and of its sections."""
    out: dict[tuple[str, ...], type] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out.update(option_fields(annotation, (*path, name)))
        elif isinstance(annotation, type) and annotation in SCALARS:
            out[(*path, name)] = annotation
    return out


def _flag(path: tuple[str, ...]) -> str:
    return "--" + "-".join(path).replace("_", "-")


def _dest(path: tuple[str, ...]) -> str:
    return "model__" + "__".join(path)


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"true or false, got {text!r}")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "model (every ModelConfig field; defaults from STREAMMOE_MODEL__* variables, else ModelConfig)"
    )
    for path, typ in option_fields().items():
        field = _field(path)
        group.add_argument(
            _flag(path),
            dest=_dest(path),
            type=_boolean if typ is bool else typ,
            default=None,
            metavar=typ.__name__.upper(),
            help=f"{field.description or ''} (default {field.default})".replace("%", "%%"),
        )


def _field(path: tuple[str, ...]) -> FieldInfo:
    model: Any = ModelConfig
    for part in path[:-1]:
        model = model.model_fields[part].annotation
    return model.model_fields[path[-1]]


def given_options(args: argparse.Namespace) -> dict[tuple[str, ...], Any]:
    """The model options on the command line, by field path."""
    return {p: getattr(args, _dest(p)) for p in option_fields() if getattr(args, _dest(p), None) is not None}


def _nest(flat: dict[tuple[str, ...], Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, value in flat.items():
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def model_config(args: argparse.Namespace, environ: dict[str, str] | None = None) -> ModelConfig:
    """ModelConfig from the command line over `STREAMMOE_MODEL__*` over the defaults; UsageError when invalid."""
    from streammoe.config import Settings

    env = dict(os.environ if environ is None else environ)
    model_vars = {k: v for k, v in env.items() if k.upper().startswith(ENV_SECTION)}
    problems = unknown_variables(Settings, model_vars)
    if problems:
        raise UsageError(problems[0])
    try:
        return _ModelSettings(model=_nest(given_options(args))).model
    except ValidationError as e:
        err = e.errors()[0]
        where = _flag(tuple(str(p) for p in err["loc"][1:])) if len(err["loc"]) > 1 else "model options"
        raise UsageError(f"{where}: {err['msg'].removeprefix('Value error, ')}") from None


def environment_paths(environ: dict[str, str] | None = None) -> set[tuple[str, ...]]:
    """The field paths (or sections) the `STREAMMOE_MODEL__*` variables set."""
    env = os.environ if environ is None else environ
    return {
        tuple(k.upper().removeprefix(ENV_SECTION).lower().split("__")) for k in env if k.upper().startswith(ENV_SECTION)
    }


def _value(config: ModelConfig, path: tuple[str, ...]) -> Any:
    node: Any = config
    for part in path:
        node = getattr(node, part)
    return node


def check_saved_model(saved: ModelConfig, wanted: ModelConfig, args: argparse.Namespace) -> None:
    """A loaded model keeps its own configuration: refuse command-line options it would ignore, warn about
    environment settings it ignores."""
    typed = given_options(args)
    differ = {
        p: (_value(saved, p), _value(wanted, p)) for p in option_fields() if _value(saved, p) != _value(wanted, p)
    }
    refused = {p: v for p, v in differ.items() if p in typed}
    if refused:
        listed = ", ".join(f"{_flag(p)} {new} (the model has {old})" for p, (old, new) in sorted(refused.items()))
        raise UsageError(
            f"the saved model keeps its own configuration, so these options would be ignored: {listed}; "
            "leave them out, or fit a new model with them (streammoe fit)"
        )
    from_env = {p: v for p, v in differ.items() if any(p[: len(q)] == q for q in environment_paths())}
    if from_env:
        listed = ", ".join(
            f"{ENV_SECTION}{'__'.join(p).upper()}={new} (the model has {old})"
            for p, (old, new) in sorted(from_env.items())
        )
        print(f"score: warning: the saved model keeps its own configuration; ignored: {listed}", file=sys.stderr)
