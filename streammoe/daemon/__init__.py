"""The running service: the loop that wires source, model and sink (one module per duty, see service.py)."""

from streammoe.daemon.accounting import RunSummary
from streammoe.daemon.clients import Clients, KafkaClients, SourceHooks
from streammoe.daemon.pipeline import REF_PARTITION_SHIFT
from streammoe.daemon.publish import event_payload
from streammoe.daemon.service import Daemon, cmd_run, tune_allocator
from streammoe.daemon.verdicts import marked_event

__all__ = [
    "REF_PARTITION_SHIFT",
    "Clients",
    "Daemon",
    "KafkaClients",
    "RunSummary",
    "SourceHooks",
    "cmd_run",
    "event_payload",
    "marked_event",
    "tune_allocator",
]
