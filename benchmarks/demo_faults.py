"""The demo's pump stream, offline: how many records of each injected fault alert, and whether the new mode C
becomes an expert, for given model settings and seeds.

The demo (streammoe/demo) checks the same things through the broker and the daemon, where batch sizes follow
timing; this runs the schedule in fixed batches so that two settings can be compared record for record. Built
to weigh the lock-in breaker (novelty/lockin.py) against slow, coherent faults:

    python -m benchmarks.demo_faults --seeds 0,1,2 --set novelty.lockin_share=0.03
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np
import torch

from streammoe.demo.sensors import CHANNELS, PumpSimulator, default_schedule, training_data
from streammoe.model.detector import MixtureDetector
from streammoe.model.config import ModelConfig


def with_settings(config: ModelConfig, sets: list[str]) -> ModelConfig:
    """`config` with dotted `field=value` overrides, validated like the environment's settings."""
    data = config.model_dump()
    for item in sets:
        path, _, value = item.partition("=")
        *parents, leaf = path.split(".")
        node = data
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"no settings group {part!r} in {path!r}")
            node = node[part]
        try:
            node[leaf] = json.loads(value)
        except json.JSONDecodeError:  # a bare word, e.g. a string setting
            node[leaf] = value
    return ModelConfig.model_validate(data)


def run(seed: int, sets: list[str], batch: int = 64, fit_steps: int = 1000) -> dict:
    """The demo's default schedule through a model fitted as the demo fits it (modes A and B)."""
    torch.manual_seed(seed)
    config = with_settings(ModelConfig(fit_steps=fit_steps, seed=seed), sets)
    detector = MixtureDetector(len(CHANNELS), config, CHANNELS, device="cpu")
    detector.fit(training_data(seed=seed + 1))
    records = list(PumpSimulator(seed).run(default_schedule(1)))
    x = np.asarray([list(r.values.values()) for r in records], np.float32)
    flagged = np.zeros(len(x), bool)
    added = []
    for i in range(0, len(x), batch):
        scored = detector.score_many(x[i : i + batch], refs=np.arange(i, min(i + batch, len(x))))
        flagged[i : i + batch] = scored.is_anomaly
        for event in detector.learn_many(scored).events:
            if event.kind == "mode_added":
                added.append(records[int(event.last_ref)].mode)
    alerts, total = Counter(), Counter()
    for record, flag in zip(records, flagged):
        key = record.fault or f"normal {record.mode}"
        total[key] += 1
        alerts[key] += int(flag)
    return {"seed": seed, "alerts": {k: f"{alerts[k]}/{total[k]}" for k in total}, "modes_added_in": added,
            "unlocks": detector.counters["unlocks"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2", help="comma list of simulator and model seeds")
    p.add_argument("--set", action="append", default=[], help="ModelConfig override, e.g. novelty.lockin_share=0.03")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    for seed in (int(s) for s in args.seeds.split(",")):
        print(json.dumps(run(seed, args.set, args.batch)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
