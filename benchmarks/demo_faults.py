"""The demo's pump stream, offline: how many records of each injected fault alert, whether the new mode C
becomes an expert, and the incidents (streammoe/incidents, judged by streammoe/demo/incidents.py: one per
fault episode, one `new_mode`, the false ones), for given model and incident settings and seeds.

The demo (streammoe/demo) checks the same things through the broker and the daemon, where batch sizes follow
timing; this runs the schedule in fixed batches so that two settings can be compared record for record. Built
to weigh the lock-in breaker (novelty/lockin.py) against slow, coherent faults:

    python -m benchmarks.demo_faults --seeds 0,1,2 --set novelty.lockin_share=0.03
    python -m benchmarks.demo_faults --seeds 0,1,2 --incidents '{"quiet_records": 200}'
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np
import torch

from streammoe.daemon.incidents import scored_batch
from streammoe.demo.incidents import judge
from streammoe.demo.sensors import CHANNELS, PumpSimulator, default_schedule, training_data
from streammoe.files.offline import CRITICAL_P_VALUE
from streammoe.incidents import IncidentSettings, IncidentTracker, Source
from streammoe.kafka.source import Positions
from streammoe.model.config import ModelConfig
from streammoe.model.detector import MixtureDetector


def with_settings(config: ModelConfig, sets: list[str]) -> ModelConfig:
    """`config` with dotted `field=value` overrides, validated like the environment's settings."""
    data = config.model_dump()
    for item in sets:
        path, _, value = item.partition("=")
        *parents, leaf = path.split(".")
        node = data
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"no settings group {part!r} in {path!r}")  # noqa: TRY004 - a wrong --set path
            node = node[part]
        try:
            node[leaf] = json.loads(value)
        except json.JSONDecodeError:  # a bare word, e.g. a string setting
            node[leaf] = value
    return ModelConfig.model_validate(data)


def run(
    seed: int, sets: list[str], batch: int = 64, fit_steps: int = 1000, incidents: IncidentSettings | None = None
) -> dict:
    """The demo's default schedule through a model fitted as the demo fits it (modes A and B)."""
    torch.manual_seed(seed)
    config = with_settings(ModelConfig(fit_steps=fit_steps, seed=seed), sets)
    detector = MixtureDetector(len(CHANNELS), config, CHANNELS, device="cpu")
    detector.fit(training_data(seed=seed + 1))
    records = list(PumpSimulator(seed).run(default_schedule(1)))
    x = np.asarray([list(r.values.values()) for r in records], np.float32)
    flagged = np.zeros(len(x), bool)
    added = []
    tracker = IncidentTracker("global", incidents or IncidentSettings(), CHANNELS, topic="sensor-records")
    critical_log_p = float(np.log(CRITICAL_P_VALUE))
    changes = []
    for i in range(0, len(x), batch):
        refs = np.arange(i, min(i + batch, len(x)))
        scored = detector.score_many(x[i : i + batch], refs=refs)
        flagged[i : i + batch] = scored.is_anomaly
        at = Positions("sensor-records", np.zeros(len(refs), np.int32), refs)
        ts = np.array([records[r].ts for r in refs])
        assets = [records[0].asset_id] * len(refs)
        changes += tracker.observe(
            scored_batch(scored, critical_log_p, assets, ts, at, tracker.settings.spike_deviation)
        )
        for event in detector.learn_many(scored).events:
            if event.kind == "mode_added" and event.first_ref is not None and event.last_ref is not None:
                added.append(records[int(event.last_ref)].mode)
                changes += tracker.link_mode_added(
                    event.expert,
                    Source("sensor-records", 0, int(event.first_ref)),
                    Source("sensor-records", 0, int(event.last_ref)),
                )
    alerts: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for record, flag in zip(records, flagged):
        key = record.fault or f"normal {record.mode}"
        total[key] += 1
        alerts[key] += int(flag)
    latest = {c.body["incident_id"]: c.body for c in changes}
    for inc in tracker.open_incidents():
        latest[inc.id] = inc.body(CHANNELS, 3)
    judged = judge([(r.ts, r.mode, r.fault) for r in records], list(latest.values()))
    return {
        "seed": seed,
        "alerts": {k: f"{alerts[k]}/{total[k]}" for k in total},
        "modes_added_in": added,
        "unlocks": detector.counters["unlocks"],
        "incidents": judged,
        "n_incidents": len(latest),
        "incident_list": [
            (
                b["kind"],
                (b["first_ts"] - records[0].ts) // 1000,
                (b["last_ts"] - records[0].ts) // 1000,
                b["count"],
                b["peak_score"],
            )
            for b in latest.values()
        ],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2", help="comma list of simulator and model seeds")
    p.add_argument("--set", action="append", default=[], help="ModelConfig override, e.g. novelty.lockin_share=0.03")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--incidents", default="{}", help="IncidentSettings overrides as JSON, e.g. '{\"quiet_records\": 60}'"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = IncidentSettings(**json.loads(args.incidents))
    for seed in (int(s) for s in args.seeds.split(",")):
        print(json.dumps(run(seed, args.set, args.batch, incidents=settings)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
