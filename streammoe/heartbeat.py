"""Progress reports from long steps deep inside the model, to whoever watches liveness (metrics.Health).

Training a candidate expert or reading a scope's snapshot can hold the daemon's loop for a while; /healthz must
tell that from a hung loop. Those steps call `beat(step)` as they go; the daemon registers its Health with
`listen`. A process-wide hook rather than a callback threaded through every signature between the loop and the
step: liveness is a property of the process, and the steps stay free of daemon types.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

_listeners: list[Callable[[str], None]] = []
_lock = threading.Lock()


def listen(listener: Callable[[str], None]) -> Callable[[], None]:
    """Call `listener(step)` on every beat; returns the function that stops it."""
    with _lock:
        _listeners.append(listener)

    def stop() -> None:
        with _lock:
            if listener in _listeners:
                _listeners.remove(listener)

    return stop


def beat(step: str) -> None:
    """A long step is still making progress (cheap: call it every few iterations)."""
    with _lock:
        listeners = _listeners.copy()  # a listener may stop (unregister) while others are called
    for listener in listeners:
        listener(step)
