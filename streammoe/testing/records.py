"""The record encoder that tests, benchmarks and the demo share: input records as a sensor gateway writes them.

Values are rounded to `digits` decimals from their float value, so a float32 row becomes `31.2`, not
`31.200000762939453`: the records are as long as a real producer's, which is what the decoder's speed depends on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import orjson


def encode(
    asset: str, ts: int, row: Iterable[float], channels: Sequence[str] | None = None, digits: int | None = 4
) -> bytes:
    """One record: `values` by channel name when `channels` is given, else a list in the configured order."""
    values = [float(v) if digits is None else round(float(v), digits) for v in row]
    return orjson.dumps({"asset_id": asset, "ts": ts, "values": dict(zip(channels, values)) if channels else values})


def keyed_records(
    rows: np.ndarray,
    channels: Sequence[str] | None,
    *,
    assets: int | Sequence[str] = 50,
    start_ts: int = 0,
    step_ts: int = 1,
    as_list: Callable[[int], bool] | None = None,
    digits: int | None = 4,
) -> list[tuple[bytes, bytes]]:
    """(key, value) per row, keyed by asset: row i is asset `asset-{i % assets}` (or `assets[i % len]`) at
    `start_ts + i * step_ts`; `as_list(i)` true writes row i's values as a list instead of by channel name."""
    names = [f"asset-{a}" for a in range(assets)] if isinstance(assets, int) else list(assets)
    out = []
    for i, row in enumerate(rows):
        asset = names[i % len(names)]
        by_name = channels if as_list is None or not as_list(i) else None
        out.append((asset.encode(), encode(asset, start_ts + i * step_ts, row, by_name, digits)))
    return out
