"""What the benchmarks read from a running `streammoe run` process: its memory (/proc) and its /metrics."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families


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
