"""What the demo shows: state gathered from the broker's output topics and the daemon's /metrics, rendered as
a live `rich` view on a terminal or as one line per second elsewhere.

`DemoState` is written by the demo's threads (producer, topic reader, metrics scraper) and read by the view;
each writer touches its own fields, and the view only reads, under one lock.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

from rich import box
from rich.columns import Columns
from rich.console import Group, JustifyMethod
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

BAR = "█"


def truth_label(mode: str | None, fault: str | None) -> str:
    """Ground truth of a simulated record, e.g. 'B+vibration' or 'C' ('?' when the record is unknown)."""
    if mode is None:
        return "?"
    return f"{mode}+{fault}" if fault else mode


@dataclass
class DemoState:
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # producer
    produced: int = 0
    malformed_sent: int = 0  # extra records missing channels, both kinds
    partial_sent: int = 0  # of those, the ones missing one channel (scored on the rest, not dead-lettered)
    playing: str = "-"  # ground truth of the record being produced now
    producer_done: bool = False
    # daemon, from /metrics
    scored: int = 0
    experts_active: int = 0
    weights: dict[int, float] = field(default_factory=dict)
    # topics
    alerts: int = 0
    alerts_by_truth: Counter = field(default_factory=Counter)
    alerts_by_severity: Counter = field(default_factory=Counter)
    recent_alerts: deque = field(default_factory=lambda: deque(maxlen=6))
    events: list[dict] = field(default_factory=list)
    incidents: dict[str, dict] = field(default_factory=dict)  # incident_id -> its latest message
    incident_messages: int = 0  # distinct (incident_id, sequence) read
    dead_letters: int = 0
    dead_by_reason: Counter = field(default_factory=Counter)
    # rates (records/s over the last second), updated by `tick`
    produced_rate: float = 0.0
    scored_rate: float = 0.0
    _last_tick: tuple[float, int, int] | None = None

    def tick(self) -> None:
        now = time.monotonic()
        with self.lock:
            if self._last_tick is not None:
                t, p, s = self._last_tick
                dt = max(now - t, 1e-6)
                self.produced_rate = (self.produced - p) / dt
                self.scored_rate = (self.scored - s) / dt
            self._last_tick = (now, self.produced, self.scored)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def incidents_open(self) -> int:
        return sum(1 for i in self.incidents.values() if i.get("status") != "resolved")

    def events_by_kind(self) -> dict[str, int]:
        return dict(Counter(e.get("kind", "?") for e in self.events))

    def line(self) -> str:
        """The one-line progress report printed each second without a terminal."""
        with self.lock:
            w = " ".join(f"{k}:{v:.2f}" for k, v in sorted(self.weights.items()))
            ev = ",".join(f"{k}={v}" for k, v in sorted(self.events_by_kind().items())) or "none"
            return (
                f"t={self.elapsed():5.1f}s playing={self.playing:<12} produced={self.produced} "
                f"({self.produced_rate:.0f}/s) scored={self.scored} ({self.scored_rate:.0f}/s) "
                f"experts={self.experts_active} weights=[{w}] alerts={self.alerts} "
                f"incidents={len(self.incidents)} (open {self.incidents_open()}) events={ev} "
                f"dead_letters={self.dead_letters}"
            )


def _fmt(x: object, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec) if isinstance(x, (int, float)) else str(x)


def _clock(ts: object) -> str:
    """A record's `ts` (epoch ms) as UTC time of day."""
    if not isinstance(ts, int):
        return "-"
    return datetime.fromtimestamp(ts / 1000, tz=UTC).strftime("%H:%M:%S")


def _status(state: DemoState) -> Table:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    t.add_row("elapsed", f"{state.elapsed():.1f} s")
    t.add_row("now playing", f"[cyan]{state.playing}[/]" + ("  (schedule done)" if state.producer_done else ""))
    t.add_row("produced", f"{state.produced}  ({state.produced_rate:.0f} rec/s)  malformed {state.malformed_sent}")
    t.add_row("scored", f"{state.scored}  ({state.scored_rate:.0f} rec/s)  lag {max(0, state.produced - state.scored)}")
    t.add_row("experts active", str(state.experts_active))
    sev = ", ".join(f"{k} {v}" for k, v in sorted(state.alerts_by_severity.items())) or "-"
    t.add_row("alerts", f"{state.alerts}  ({sev})")
    t.add_row("incidents", f"{len(state.incidents)}  (open {state.incidents_open()})")
    t.add_row(
        "dead letters", f"{state.dead_letters}  " + ", ".join(f"{k} {v}" for k, v in state.dead_by_reason.items())
    )
    return t


def _mode_mix(state: DemoState) -> Table:
    t = _table("mode mix (weight per expert)", None)
    t.add_column("expert", justify="right")
    t.add_column("weight", justify="right")
    t.add_column("")
    for k, w in sorted(state.weights.items()):
        t.add_row(str(k), f"{w:.3f}", Text(BAR * max(0, round(w * 24)), style="green"))
    if not state.weights:
        t.add_row("-", "-", "waiting for the daemon")
    return t


def _table(title: str, edges: box.Box | None = box.SIMPLE_HEAD) -> Table:
    """One of the view's tables: its title on the left, one space between columns."""
    return Table(title=title, title_justify="left", box=edges, padding=(0, 1))


def _top_channels(top: list[dict]) -> str:
    return " ".join(f"{c['channel']} {c['share']:.0%}" for c in top)


def _truth_counts(state: DemoState) -> Table:
    t = _table("alerts by truth", None)
    t.add_column("truth")
    t.add_column("alerts", justify="right")
    for label, n in sorted(state.alerts_by_truth.items()):
        t.add_row(Text(label, style="red" if "+" in label else ""), str(n))
    return t


def _alerts(state: DemoState) -> Table:
    t = _table("latest alerts (ent/epi/ale: mode entropy, epistemic, aleatoric; red: critical)")
    columns: list[tuple[str, JustifyMethod, int]] = [
        ("time", "right", 8),
        ("truth", "left", 11),
        ("score", "right", 5),
        ("p", "right", 5),
        ("mode", "right", 4),
        ("ent", "right", 4),
        ("epi", "right", 4),
        ("ale", "right", 4),
    ]
    for name, justify, width in columns:
        t.add_column(name, justify=justify, no_wrap=True, min_width=width)
    t.add_column("top channels (misfit share)", no_wrap=True, overflow="ellipsis")
    for a in reversed(state.recent_alerts):
        top = _top_channels(a.get("top_channels", []))
        score = a.get("score")
        t.add_row(
            _clock(a.get("ts")),
            Text(a.get("truth", "?"), style="red" if "+" in a.get("truth", "") else ""),
            Text(
                _fmt(score, ".0f" if (score or 0) >= 10 else ".1f"),
                style="bold red" if a.get("severity") == "critical" else "yellow",
            ),
            _fmt(a.get("p_value"), ".0e"),
            _fmt(a.get("mode")),
            _fmt(a.get("mode_entropy"), ".2f"),
            _fmt(a.get("epistemic"), ".2f"),
            _fmt(a.get("aleatoric"), ".2f"),
            top,
        )
    return t


def _events(state: DemoState) -> Table:
    t = _table("mode events")
    for name, width in (("kind", 12), ("expert", 6), ("records", 7), ("truth of first / last record", 28)):
        t.add_column(name, no_wrap=True)
    t.add_column("detail", no_wrap=True)
    for e in state.events[-3:]:
        detail = ", ".join(f"{k} {v:.3g}" for k, v in (e.get("detail") or {}).items() if isinstance(v, (int, float)))
        t.add_row(
            Text(e.get("kind", "?"), style="bold magenta"),
            _fmt(e.get("expert")),
            _fmt(e.get("size")),
            f"{e.get('truth_first', '?')} / {e.get('truth_last', '?')}",
            detail[:60],
        )
    if not state.events:
        t.add_row("-", "", "", "none yet", "")
    return t


def _incidents(state: DemoState) -> Table:
    t = _table("incidents (one per problem: opened, updated, resolved)")
    for name in ("opened", "kind", "status", "severity", "alerts", "truth of first / last record", "top channels"):
        t.add_column(name, no_wrap=True)
    for i in list(state.incidents.values())[-4:]:
        top = _top_channels(i.get("top_channels", [])[:2])
        kind = i.get("kind", "?")
        t.add_row(
            _clock(i.get("opened_ts")),
            Text(kind, style="bold magenta" if kind == "new_mode" else ""),
            Text(i.get("status", "?"), style="green" if i.get("status") == "resolved" else "bold"),
            Text(i.get("severity", "?"), style="bold red" if i.get("severity") == "critical" else "yellow"),
            _fmt(i.get("count")),
            f"{i.get('truth_first', '?')} / {i.get('truth_last', '?')}",
            top,
        )
    if not state.incidents:
        t.add_row("-", "", "", "", "", "none yet", "")
    return t


def render(state: DemoState) -> Panel:
    """The whole live view as one renderable."""
    with state.lock:
        top = Columns([_status(state), _mode_mix(state), _truth_counts(state)], padding=(0, 4))
        body = Group(top, _incidents(state), _alerts(state), _events(state))
    return Panel(
        body,
        title="streammoe demo: pump with modes A, B (known), C (new) and injected faults",
        subtitle="Ctrl-C to stop",
    )
