"""Assets gone silent -> `asset_silent` / `asset_resumed` on the events topic (streammoe/silence.py decides)."""

from __future__ import annotations

import time

import numpy as np

from streammoe.daemon.publish import Publisher
from streammoe.logs import get_logger
from streammoe.metrics import Metrics
from streammoe.silence import SilenceWatch
from streammoe.state.ownership import OwnedScopes
from streammoe.wire.records import DecodedBatch

log = get_logger("streammoe.daemon")

CHECK_EVERY_S = 1.0  # how often assets are checked for silence


class Silences:
    def __init__(self, watch: SilenceWatch, scopes: OwnedScopes, publisher: Publisher, metrics: Metrics) -> None:
        self.watch, self.scopes, self.publisher, self.metrics = watch, scopes, publisher, metrics
        self._check_at = 0.0

    def seen(self, decoded: DecodedBatch, partitions: np.ndarray) -> None:
        """A batch's valid records (`partitions`: one per record); assets that were silent say they are back."""
        self._publish(self.watch.seen(decoded.assets, decoded.ts, partitions))

    def check(self) -> None:
        """Once a second: assets silent past their limit (an event each, once per silence)."""
        if not self.watch.enabled or time.monotonic() < self._check_at:
            return
        self._check_at = time.monotonic() + CHECK_EVERY_S
        events = self.watch.check()
        self.metrics.asset_silences.inc(len(events))
        for e in events:
            log.warning("asset_silent", **e)
        self._publish(events)

    def _publish(self, events: list[dict]) -> None:
        """On the events topic, keyed by the asset's scope (acknowledged with the batch that carries them, or by
        the next flush)."""
        for event in events:
            scope = self.scopes.map.scope_of(event["asset"])
            state = self.scopes.models.get(scope)
            self.publisher.send_plain_event(event, scope, state.version if state is not None else "none.0")
