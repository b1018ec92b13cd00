"""Which `STREAMMOE_*` environment variables the daemon knows, so that a misspelt one stops start-up.

pydantic-settings ignores a variable that names no field: `STREAMMOE_KAFKA_BOOTSTRAP_SERVERS` (one underscore)
would leave the daemon on the default broker. `unknown_variables` names each such variable with the nearest
valid name. Legitimate variables that are not settings pass:

- the project's own (`NON_SETTINGS`): they configure a command, not the daemon's settings;
- those Kubernetes injects for a Service named `streammoe` or `streammoe-*` (service links:
  `STREAMMOE_METRICS_SERVICE_HOST`, `..._SERVICE_PORT[_<name>]`, `..._PORT=tcp://...`,
  `..._PORT_<n>_TCP[_PROTO|_PORT|_ADDR]`). A `_PORT` variable counts as one only with a `tcp://` (udp, sctp)
  value, so `STREAMMOE_HTTP_PORT=9308` (a typo of STREAMMOE_HTTP__PORT) is still refused. The shipped
  manifests turn service links off (`enableServiceLinks: false`) anyway.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable, Mapping

from pydantic import BaseModel

PREFIX = "STREAMMOE_"
DELIMITER = "__"

NON_SETTINGS = {
    "STREAMMOE_ENV_FILE": "the env file `streammoe run` reads settings from",
    "STREAMMOE_DATA": "the datasets folder of `streammoe bench`",
}

_LINK = r"^STREAMMOE(?:_[A-Z0-9_]+?)?"
_SERVICE_HOST = re.compile(_LINK + r"_SERVICE_HOST$")
_SERVICE_PORT = re.compile(_LINK + r"_SERVICE_PORT(?:_[A-Z0-9_]+)?$")
_PORT = re.compile(_LINK + r"_PORT$")
_PORT_DETAIL = re.compile(_LINK + r"_PORT_[0-9]+_(?:TCP|UDP|SCTP)(?:_PROTO|_PORT|_ADDR)?$")
_URL = re.compile(r"^(?:tcp|udp|sctp)://\S+:[0-9]+$")


def _nested(annotation: object) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _is_mapping(annotation: object) -> bool:
    """dict[..] or dict[..] | None: such a field also takes one variable per key (`FIELD__<key>`)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_mapping(a) for a in typing.get_args(annotation))
    return typing.get_origin(annotation) is dict or annotation is dict


def setting_names(model: type[BaseModel], prefix: str = PREFIX) -> tuple[set[str], set[str]]:
    """Every variable naming a field of `model` (a section too: pydantic-settings takes it as JSON), and the
    prefixes under which any name is a key of a dict field (`STREAMMOE_KAFKA__EXTRA__`)."""
    names: set[str] = set()
    open_prefixes: set[str] = set()
    for name, field in model.model_fields.items():
        variable = prefix + name.upper()
        names.add(variable)
        section = _nested(field.annotation)
        if section is not None:
            inner, inner_open = setting_names(section, variable + DELIMITER)
            names |= inner
            open_prefixes |= inner_open
        elif _is_mapping(field.annotation):
            open_prefixes.add(variable + DELIMITER)
    return names, open_prefixes


def is_service_link(name: str, value: str) -> bool:
    """A variable Kubernetes injects for a Service whose name starts with `streammoe`."""
    if _SERVICE_HOST.match(name) or _PORT_DETAIL.match(name):
        return True
    if _SERVICE_PORT.match(name):
        return value.strip().isdigit()
    return bool(_PORT.match(name) and _URL.match(value.strip()))


def nearest(name: str, candidates: Iterable[str]) -> str | None:
    """The valid name a typo most likely meant (underscores count little: `KAFKA_X` vs `KAFKA__X`)."""
    pool = sorted(candidates)
    squashed = {c.replace("_", ""): c for c in pool}
    match = difflib.get_close_matches(name.replace("_", ""), list(squashed), n=1, cutoff=0.75)
    if match:
        return squashed[match[0]]
    close = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
    return close[0] if close else None


def unknown_variables(settings_model: type[BaseModel], variables: Mapping[str, str | None]) -> list[str]:
    """One line per `STREAMMOE_*` variable that is neither a setting nor a known non-setting."""
    names, open_prefixes = setting_names(settings_model)
    lines = []
    for raw, value in sorted(variables.items()):
        name = raw.upper()
        if not name.startswith(PREFIX) or name in names or name in NON_SETTINGS:
            continue
        if any(name.startswith(p) and len(name) > len(p) for p in open_prefixes):
            continue
        if is_service_link(name, value or ""):
            continue
        guess = nearest(name, names)
        hint = f"did you mean {guess}?" if guess else "see streammoe/config.py for the settings"
        lines.append(f"{raw}: not a setting ({hint})")
    return lines
