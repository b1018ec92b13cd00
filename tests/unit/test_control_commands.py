"""Commands on incidents as the control topic carries them: what parse_command accepts, the schema accepts."""

from __future__ import annotations

import jsonschema
import orjson
import pytest

from streammoe.kafka.control import ControlError, ExpertVerdict, parse_command
from streammoe.wire.alerts import control_schema
from streammoe.wire.commands import IncidentCommand

CONTROL = jsonschema.Draft202012Validator(control_schema())
IID = "5c1f0e9a2b7d4e6f8a01"


@pytest.mark.parametrize(
    "cmd,ok",
    [
        ({"command": "acknowledge", "incident_id": IID, "operator": "alice", "note": "on it"}, True),
        ({"command": "acknowledge"}, False),
        ({"command": "acknowledge", "incident_id": ""}, False),
        ({"command": "verdict", "incident_id": IID, "verdict": "normal"}, True),
        ({"command": "verdict", "incident_id": IID, "verdict": "fault", "scope": "pump-7"}, True),
        ({"command": "verdict", "incident_id": IID, "verdict": "maybe"}, False),
        ({"command": "verdict", "incident_id": IID}, False),
        ({"command": "mute", "asset": "pump-7", "until": 1732003600000}, True),
        ({"command": "mute", "asset": "pump-7", "channel": "temp", "for_s": 3600}, True),
        ({"command": "mute", "asset": "pump-7", "channel": None, "for_s": 0.5}, True),
        ({"command": "mute", "asset": "pump-7"}, False),
        ({"command": "mute", "asset": "pump-7", "until": 1732003600000, "for_s": 60}, False),
        ({"command": "mute", "asset": "pump-7", "for_s": 0}, False),
        ({"command": "mute", "asset": "pump-7", "for_s": 10**9}, False),
        ({"command": "mute", "asset": "pump-7", "until": -5}, False),
        ({"command": "mute", "asset": "pump-7", "until": True}, False),
        ({"command": "mute", "asset": "", "for_s": 60}, False),
        ({"command": "mute", "asset": "pump-7", "channel": "", "for_s": 60}, False),
        ({"command": "unmute", "asset": "pump-7"}, True),
        ({"command": "unmute", "asset": "pump-7", "channel": "temp"}, True),
        ({"command": "unmute"}, False),
        ({"command": "reboot", "asset": "pump-7"}, False),
        ({"command": "acknowledge", "incident_id": IID, "scope": ""}, False),
        ({"command": "acknowledge", "incident_id": IID, "scope": None}, False),
    ],
)
def test_documented_incident_commands(cmd: dict, ok: bool) -> None:
    try:
        parse_command(orjson.dumps(cmd), sent_ms=1732000000000)
        accepted = True
    except ControlError:
        accepted = False
    assert accepted is ok
    assert CONTROL.is_valid(cmd) is ok


def test_a_mute_for_a_duration_counts_from_the_commands_own_timestamp() -> None:
    cmd = parse_command(b'{"command": "mute", "asset": "pump-7", "for_s": 90}', sent_ms=1_000_000)
    assert isinstance(cmd, IncidentCommand) and cmd.until == 1_090_000 and cmd.channel is None
    with pytest.raises(ControlError, match="Kafka timestamp"):
        parse_command(b'{"command": "mute", "asset": "pump-7", "for_s": 90}', sent_ms=None)


def test_a_channel_the_daemon_does_not_have_is_refused_and_a_plain_verdict_is_still_an_expert_verdict() -> None:
    with pytest.raises(ControlError, match="no channel 'tmp'"):
        parse_command(b'{"command": "unmute", "asset": "pump-7", "channel": "tmp"}', channels=["temp", "flow"])
    assert isinstance(parse_command(b'{"expert": 1, "status": "fault"}'), ExpertVerdict)
