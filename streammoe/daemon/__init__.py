"""The running service: the loop that wires source, model and sink (one module per duty)."""

from streammoe.daemon.service import Daemon, RunSummary, cmd_run, event_payload, marked_event, register, tune_allocator

__all__ = ["Daemon", "RunSummary", "cmd_run", "event_payload", "marked_event", "register", "tune_allocator"]
