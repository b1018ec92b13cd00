"""The M-step for the experts: responsibility-weighted ELBO gradient steps, guarded against poison."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from streammoe.model.config import ModelConfig
from streammoe.model.mixture import MixtureOfVAEs
from streammoe.model.sparse import sparse_loss

MAX_GRAD_NORM = 10.0


def adam(params: ParamsT, lr: float) -> torch.optim.Optimizer:
    """Adam with its fused kernel: one pass over every parameter instead of a dozen small ops per tensor (with
    one check fewer, the learning step 8-18 % faster at K=1-16 on a CPU; BENCHMARKS.md). Same update rule."""
    return torch.optim.Adam(params, lr=lr, fused=True)


@dataclass
class StepResult:
    applied: bool
    loss: float
    reason: str = ""


class ExpertLearner:
    """Owns the optimizer of one mixture. Offline fitting and online learning share this step."""

    def __init__(self, model: MixtureOfVAEs, generator: torch.Generator | None = None) -> None:
        self.model = model
        self.generator = generator
        self.optimizer = adam(model.experts.parameters(), model.config.learning_rate)

    @torch.no_grad()
    def reset_expert_state(self, k: int) -> None:
        """Forget Adam's moments for slot k, so a new expert does not inherit a retired one's momentum."""
        for p in self.model.experts.parameters():
            state = self.optimizer.state.get(p)
            if state:
                state["exp_avg"][k].zero_()
                state["exp_avg_sq"][k].zero_()

    def step(
        self,
        x: Tensor,
        resp: Tensor | None = None,
        elog_pi: Tensor | None = None,
        rates: Tensor | None = None,
        min_resp: float | None = None,
    ) -> StepResult:
        """One step on raw records `x` (N, C) (each expert standardises them itself).

        With `resp` (N, k_max) the responsibilities are given (hard labels, replay); otherwise they come from
        this very forward pass (E-step on the detached ELBOs plus E[log pi]), as in stochastic variational EM.
        A step that would put a non-finite number into the weights is skipped, never applied. `rates` (k_max,)
        scales each expert's move by the optimizer (`expert_rates`); Adam's moments are kept as they are.
        `min_resp` (None: `ModelConfig.learn_min_resp`) drops the pairs under it from the loss (model/sparse.py).
        """
        model = self.model
        idx = torch.nonzero(model.active).flatten()
        if x.shape[0] == 0 or idx.numel() == 0:
            return StepResult(False, 0.0, "empty")
        min_resp = model.config.learn_min_resp if min_resp is None else min_resp
        if resp is not None and min_resp > 0:  # given responsibilities: only the pairs that matter (model/sparse.py)
            loss = sparse_loss(model.experts, x, resp[:, idx].T.to(x.dtype), idx, min_resp, self.generator)
        else:
            elbo = model.experts.elbo(x, idx, self.generator)  # (Ka, N)
            if resp is None:
                prior = elog_pi if elog_pi is not None else model.weights.expected_log_pi(model.active)
                r = torch.softmax(elbo.detach() + prior[idx].to(elbo.dtype)[:, None], dim=0)
            else:
                r = resp[:, idx].T.to(elbo.dtype)
            loss = -(r * elbo).sum() / x.shape[0]
        if not torch.isfinite(loss):
            return StepResult(False, float("nan"), "non-finite loss")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # The total norm is non-finite whenever any gradient element is (NaN or inf propagates through the sum
        # of squares), so this one check stands for a pass over every gradient tensor.
        norm = torch.nn.utils.clip_grad_norm_(model.experts.parameters(), MAX_GRAD_NORM)
        if not torch.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            return StepResult(False, float(loss.detach()), "non-finite gradient")
        if rates is None:
            self.optimizer.step()
        else:
            scaled_step(self.optimizer, list(model.experts.parameters()), rates)
        return StepResult(True, float(loss.detach()))


@torch.no_grad()
def scaled_step(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], rates: Tensor) -> None:
    """The optimizer's step with each expert slot's move scaled by its rate: Adam's step is invariant to the
    gradient's scale, so the move itself is scaled (the stacked parameters lead with the slot)."""
    before = [p.detach().clone() for p in params]
    optimizer.step()
    for p, old in zip(params, before):
        f = rates.to(p.dtype).view(-1, *([1] * (p.dim() - 1)))
        p.sub_(old).mul_(f).add_(old)


def expert_rates(model: MixtureOfVAEs) -> Tensor | None:
    """Each expert's online step-size factor min(1, online_lr_count / n) for its effective count n (its
    weight statistic gamma), or None when the schedule is off (0). At the fit's step size every online step of a
    long-fitted mode is a step of noise (a stationary stream's false alarms rose 0.18 -> 0.22 % from the steps
    alone); an expert that has seen few records still learns at the full rate."""
    n0 = model.config.online_lr_count
    if n0 <= 0:
        return None
    return (n0 / model.weights.gamma.clamp(min=1e-9)).clamp(max=1.0)


def replay_step(
    learner: ExpertLearner, x: Tensor, resp: Tensor, cfg: ModelConfig, generator: torch.Generator | None = None
) -> StepResult:
    """The online step: at most `learn_batch` of the records to learn (a random draw), plus `replay_per_step`
    records from the experts' reservoirs with hard labels, so modes not seen lately are not forgotten."""
    model = learner.model
    n = x.shape[0]
    if n > cfg.learn_batch:
        pick = torch.randperm(n, generator=generator, device=x.device)[: cfg.learn_batch]
        x, resp = x[pick], resp[pick]
    replay_x, replay_ids = model.replay.sample(model.active, cfg.replay_per_step, generator)
    replay_r = torch.nn.functional.one_hot(replay_ids, cfg.k_max).to(resp.dtype)
    return learner.step(torch.cat([x, replay_x]), torch.cat([resp, replay_r]), rates=expert_rates(model))


@dataclass
class StepCadence:
    """When the online gradient step runs (`ModelConfig.learn_every`, `learn_min_rows`): once `learn_every` batches
    with records to learn and `learn_min_rows` usable scored records have come since the last step. The step then
    draws from the learnable rows of every batch since the last one, not only this one's."""

    batches: int = 1  # the first batch with records to learn takes a step
    rows: int = 0
    pending: list[tuple[Tensor, Tensor]] = field(default_factory=list)  # learnable (x, resp) since the last step

    def scored(self, usable: int) -> None:
        self.rows -= usable

    def due(self, x: Tensor, resp: Tensor, cfg: ModelConfig) -> tuple[Tensor, Tensor] | None:
        """This batch's learnable rows added; the rows to step on now, or None while the step waits."""
        self.pending.append((x, resp))
        self.batches -= 1
        if self.batches > 0 or self.rows > 0:
            return None
        self.batches, self.rows = cfg.learn_every, cfg.learn_min_rows
        x, resp = (torch.cat(t) for t in zip(*self.pending)) if len(self.pending) > 1 else self.pending[0]
        self.pending = []
        return x, resp
