"""How the benchmarks start a `streammoe run` process, and what they read from it: its memory (/proc) and its
/metrics."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from prometheus_client.parser import text_string_to_metric_families


def start_daemon(
    bootstrap: str, topics: Mapping[str, str], channels: Sequence[str], tmp: Path, log: IO[bytes], **overrides: object
) -> tuple[subprocess.Popen, int]:
    """`streammoe run` as a child process, as deployed but for the test broker: group <input topic>-group, the
    bootstrap model in tmp/model, checkpoints in tmp/ckpt, /metrics on a free port (returned with the process),
    warnings and worse written to `log`. `overrides` are more of daemon_env's settings."""
    from streammoe.testing.broker import free_port
    from streammoe.testing.settings import daemon_env

    port = free_port()
    env = daemon_env(
        bootstrap,
        topics,
        channels,
        group=f"{topics['input']}-group",
        checkpoint_dir=tmp / "ckpt",
        model_dir=tmp / "model",
        kafka__extra=None,
        http__enabled=None,
        http__port=port,
        log_level="WARNING",
        **overrides,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "streammoe.cli", "run"], env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
    )
    return proc, port


def rss_mb(pid: int, field_name: str = "VmRSS") -> float:
    """A memory field of /proc/<pid>/status in MB (VmRSS now, VmHWM the peak); 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def samples(port: int, name: str, timeout: float = 2.0) -> dict[tuple[str, ...], float]:
    """The samples called `name` (e.g. `streammoe_alerts_total`) on the daemon's /metrics, by their label values;
    empty when the endpoint does not answer or the metric has no sample yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
            text = r.read().decode()
    except OSError:
        return {}
    return {
        tuple(s.labels.values()): float(s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }
