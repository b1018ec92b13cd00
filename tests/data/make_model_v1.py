import sys

import numpy as np
import torch

from streammoe.model.config import ModelConfig, NoveltyConfig
from streammoe.model.detector import MixtureDetector
from streammoe.state.persistence import save_detector

torch.set_num_threads(1)
rng = np.random.default_rng(0)


def data(n, seed):
    r = np.random.default_rng(seed)
    m = r.random(n) < 0.5
    return (np.where(m[:, None], [0.0, 5.0, 20.0], [8.0, 5.0, 35.0]) + r.normal(0, 1, (n, 3))).astype(np.float32)


cfg = ModelConfig(
    k_max=3,
    hidden=4,
    latent=1,
    n_samples=2,
    fit_steps=200,
    replay_size=16,
    calibration_size=64,
    novelty=NoveltyConfig(memory_size=32, window=32, min_records=16, rate_window=64, min_rate=0.25),
)
if len(sys.argv) > 2:  # a time context (format 3 on): `make_model_v1.py OUT WINDOW`
    from streammoe.context.settings import ContextConfig

    cfg = cfg.model_copy(update={"context": ContextConfig(window=int(sys.argv[2]))})
det = MixtureDetector(3, cfg, ["flow", "pressure", "temp"], device="cpu")
det.fit(data(1000, 1))
x = data(64, 2)
x[:4, 0] += 12.0
det.learn_many(det.score_many(x))
save_detector(det, sys.argv[1])
probe = data(32, 3)
probe[:3, 2] += 10.0
s = det.score_many(probe)
np.savez(sys.argv[1] + "-probe.npz", x=probe, nll=s.nll, log_p=s.log_p_value, mode=s.mode, is_anomaly=s.is_anomaly)
