"""Hyper-parameters of the mixture; one object shared by the command line, the daemon's settings and checkpoints."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from streammoe.context.settings import ContextConfig


class PoisonConfig(BaseModel):
    """Which readings are poison by what they are (never learned, always alerted)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    sentinel_magnitude: float = Field(1e15, gt=0)
    """Readings with |x| at or above this are sentinels or broken sensors (never learned)."""
    sentinel_values: list[float] = Field(default_factory=list)
    """Exact readings that mean 'no value' (e.g. -9999): never learned."""
    bounds: dict[str, tuple[float | None, float | None]] = Field(default_factory=dict)
    """Per channel name, the physical [low, high] (null for no bound): readings outside are never learned."""

    @field_validator("bounds")
    @classmethod
    def _ordered(cls, v: dict[str, tuple[float | None, float | None]]) -> dict[str, tuple[float | None, float | None]]:
        for name, (lo, hi) in v.items():
            if lo is not None and hi is not None and not lo < hi:
                raise ValueError(f"poison.bounds[{name!r}]: low {lo} must be below high {hi}")
        return v


class NoveltyConfig(BaseModel):
    """When a sustained, coherent run of unexplained records becomes a new expert (and when experts go)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    enabled: bool = True
    """Grow, retire and merge experts while learning online."""
    memory_size: int = Field(2000, ge=16)
    """Unexplained records kept in the short-term memory (>= window)."""
    min_records: int = Field(500, ge=16)
    """Unexplained records needed before a candidate expert is tried (a shorter burst never is)."""
    window: int = Field(1000, ge=16)
    """Recent records over which the unexplained share is measured."""
    min_density: float = Field(0.5, gt=0, le=1)
    """Share of the recent window that must be unexplained (sustained, not scattered)."""
    fast_records: int = Field(220, ge=0)
    """A dense run this long that lies far from every expert (fast_channels channels at least fast_shift of its spreads
    away from the nearest) is tried as a new mode at once, on its newest fast_records, and again every fast_retry
    records while it lasts (at most memory_size of them); 0 turns this off. A run near the known modes waits for
    min_records (a long fault is not a new mode)."""
    fast_shift: float = Field(20.0, gt=0)
    """Spreads (the nearest expert's own scale) a channel's run median must move to count as far."""
    fast_channels: int = Field(4, ge=1)
    """Channels that must move that far: a setpoint change moves many coherently, a fault a few."""
    fast_density: float = Field(0.9, gt=0, le=1)
    """Share of the records since the run began that must be unexplained for a fast try."""
    fast_retry: int = Field(100, ge=1)
    """Records between fast tries of one run (its newest records each time)."""
    fast_settled: float = Field(3.0, gt=0)
    """A fast candidate is accepted once the median of the run's newest holdout_fraction is within this many of the
    candidate's spreads of the older records' median on every channel (settled, not moving)."""
    rate_window: int = Field(10_000, ge=16)
    """Records over which a sustained rate of scattered unexplained records is measured."""
    min_rate: float = Field(0.04, ge=0, le=1)
    """Unexplained share of the last rate_window records (about 1 % when nothing changed) that tries a candidate on them
    even when scattered in time; 0 turns this trigger off."""
    rate_max_excess: float = 0.0
    """A candidate from scattered records is accepted only if its median NLL on the held-out ones is at most the pooled
    calibration's score at learn_threshold plus this many nats (as tight as a known mode)."""
    lockin_share: float = Field(0.0, ge=0, le=1)
    """Off by default (0). When > 0, an expert whose unexplained share over about its last lockin_window records reaches
    this is tested for lock-in: if a refit on those records is as tight as a known mode and keeps its own records, its
    calibration's clipped tail is re-measured with them (novelty/lockin.py). 0.03 took T3's false alarms from 4.3 % to
    1.3 %, but the demo's slow drift and stuck-sensor faults then went unflagged (docs/model.md, 'Lock-in'); settling
    (settle_records) now does it for new experts."""
    lockin_window: int = Field(2000, ge=16)
    """Records of one expert over which its unexplained share is measured (decayed by e per this many); it is tested
    once the share reached lockin_share, 32 of its records went unexplained and lockin_window/2 stream records went by
    since its last test (or its start)."""
    lockin_steps: int = Field(300, ge=1)
    """Gradient steps of the lock-in refit (a warm-started copy; only a test)."""
    lockin_margin: float = Field(2.0, ge=0)
    """The lock-in refit may lose at most this many nats (median) on the expert's held-out replay records."""
    settle_records: int = Field(30_000, ge=0)
    """Records after an expert is added during which it may still be settling: while its unexplained share is at least
    settle_share, its records enter its calibration unclipped, so a mode wider than the memory it was trained on is
    measured instead of locked in (novelty/settling.py). 0 turns it off."""
    settle_share: float = Field(0.03, gt=0, le=1)
    """Unexplained share (over about the expert's last lockin_window records) at which a new expert is taken to be
    settling; about 1 % when calibrated, so scattered anomalies at twice that (tested at 2 %) stay clipped and
    alerting."""
    holdout_fraction: float = Field(0.3, gt=0, lt=1)
    """Latest share of the memory the candidate must explain."""
    min_gain: float = Field(10.0, ge=0)
    """Median log-likelihood gain (nats per record) of the candidate over the mixture."""
    min_explained: float = Field(0.8, gt=0, le=1)
    """Share of held-out memory records the candidate must explain at its own 99th pct."""
    candidate_steps: int = Field(250, ge=1)
    """Gradient steps to train a candidate expert, in the batch that tries it (bounded, deterministic given the input
    order). 600 made a 46-channel candidate learn its ~350 records by heart."""
    candidate_scale_floor: float = Field(1.0, ge=0)
    """A candidate's scale per channel is at least this times the median of the active experts' scales (0: its own
    records' spread alone). A few hundred records of a new state under-state how much a channel moves in it."""
    replace_weight: float = Field(0.05, ge=0, lt=1)
    """With every slot taken, a new mode replaces the lightest expert if below this."""
    protect_records: int = Field(10_000, ge=0)
    """A newly added expert cannot be replaced by another new mode for this many records."""
    retire_weight: float = Field(0.005, ge=0, lt=1)
    """Experts below this weight for long are retired."""
    retire_after: int = Field(100_000, ge=1)
    """Records an expert must stay below retire_weight."""
    merge_margin: float = Field(1.0, ge=0)
    """Experts whose records the other explains within this many nats per record are merged."""
    merge_every: int = Field(20_000, ge=1)
    """Records between checks for near-duplicate experts."""

    @model_validator(mode="after")
    def _consistent(self) -> NoveltyConfig:
        if self.memory_size < self.window:
            raise ValueError("novelty.memory_size must be >= novelty.window (the memory holds one window's run)")
        if self.min_records > self.window:
            raise ValueError("novelty.min_records must be <= novelty.window")
        if self.min_rate > 0 and self.memory_size < self.min_rate * self.rate_window:
            raise ValueError("novelty.memory_size must hold min_rate * rate_window records (or set min_rate 0)")
        return self


class CascadeConfig(BaseModel):
    """Which records get the full S-sample estimate (model/cascade.py): all, or those a cheap pass cannot clear."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    enabled: bool = True
    """Score every record on one importance sample first and give only those that could matter the full n_samples pass
    (their decisions and breakdown are the full pass's); off: every record gets it. A saved model keeps the value
    written in it: one saved while the default was off (or without the field) stays off."""
    margin_p: float = Field(0.05, ge=0.05, lt=1)
    """A record skips the full pass when its first sample's NLL plus log(n_samples), an upper bound on the full pass's,
    lies under the score at this p-value in every mode it could belong to. At least 0.05 (higher: more records
    rescored): the calibration's tail must hold full-pass scores only."""


class ModelConfig(BaseModel):
    """What shapes the model and how it learns. Saved with every model so a checkpoint knows how it was made."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    k_max: int = Field(8, ge=1, le=256)
    """Expert slots allocated up front (bounds memory)."""
    hidden: int = Field(64, ge=4)
    """Hidden units per expert layer."""
    latent: int = Field(8, ge=1)
    """Latent dimensions per expert."""
    n_samples: int = Field(8, ge=1)
    """Importance samples per record when scoring (IWAE)."""
    threshold: float = Field(1e-3, gt=0, lt=1)
    """p-value below which a record is anomalous (same meaning in every mode)."""
    learn_threshold: float = Field(1e-2, gt=0, lt=1)
    """Only records with a p-value at or above this teach the model."""
    clip_threshold: float | None = Field(None, gt=0, lt=1)
    """Records with a p-value below this enter the calibration clipped to the learning threshold's score; those between
    this and learn_threshold enter as they are (None: learn_threshold, nothing between). Measured before calibration
    anchors: at the alert threshold (1e-3) learning lowered a simulated mode's false alarms (0.144 without learning:
    0.058 learning, against 0.212 at None) and a stationary stream's (0.19 % against 0.27 %), but SKAB's long faults
    (T1) then raise the bar for themselves: F1 0.742 -> 0.688, so not the default (anchors now do it: docs/model.md)."""
    half_life: float = Field(20_000.0, gt=0)
    """Half-life of the mixture-weight statistics, in records."""
    alpha0: float = Field(1.0, gt=0)
    """Dirichlet prior concentration per expert."""
    learning_rate: float = Field(1e-3, gt=0)
    """Adam step size, offline and online."""
    online_lr_count: float = Field(0.0, ge=0)
    """Online steps of an expert whose effective count (its decayed sum of responsibilities) is n move its weights by
    learning_rate x min(1, online_lr_count / n): a long-fitted mode steps less on noise, a young expert as fast as
    before (model/learning.py). 0: every expert at learning_rate."""
    learn_batch: int = Field(256, ge=1)
    """At most this many records of a batch per online step."""
    learn_every: int = Field(1, ge=1)
    """The experts' gradient step runs on every Nth batch with records to learn (1: every batch); weights, calibration,
    replay, drift and the novelty memory still see every record. 4 makes learning 1.8x cheaper with T2 within noise, but
    a scattered recurring new mode was added later."""
    learn_min_rows: int = Field(64, ge=1)
    """The experts' gradient step also waits until this many usable records were scored since the last step, so a scope
    steps about once per that many records however its records arrive: one by one at a low rate, or a few per batch
    in a worker of many asset scopes (a step per 10-row batch was most of its cost: 100 scopes 0.11x -> 0.23x of one
    scope's rate). Batches of at least this many records step as before (offline scoring's 256 always)."""
    learn_min_resp: float = Field(0.0, ge=0, lt=1)
    """Online steps send each record's ELBO gradient only to experts whose responsibility for it is at least this
    (model/sparse.py): a step costs about the experts that matter, not K. 0: every expert (dense). The fit's steps
    are dense whatever it is. 0.01 made learn_many ~2x faster with T1-T3 and the multi-mode tracks within seed noise,
    but the demo's seed 0 then raised 4 false incidents (bar: 3), so it stays 0 (docs/model.md)."""
    replay_size: int = Field(512, ge=1)
    """Replay reservoir per expert."""
    replay_per_step: int = Field(64, ge=0)
    """Replayed records mixed into each online step."""
    calibration_size: int = Field(2048, ge=16)
    """Reference scores kept per mode for p-values."""
    fit_steps: int = Field(3000, ge=1)
    """Gradient steps when fitting from files."""
    fit_batch: int = Field(256, ge=1)
    """Records per gradient step when fitting."""
    k_tolerance: float = Field(0.2, ge=0)
    """A fit keeps the fewest clusters whose held-out log-likelihood is within this many nats per record and channel of
    the best number's (model/fitting.py): a split of one mode gains little per channel."""
    holdout_blocks: int = Field(0, ge=0)
    """A fit of 2000 rows or more calibrates on this many blocks in time (holdout_share of its rows) instead of a random
    share (0, the default). Rows held out at random sit next to training rows: on a simulated process mode, five blocks
    cut later false alarms 4.8 -> 1.3 %, but on a toy with slower disturbances they raised them 0.4 -> 2.6 % and SMD's T2
    AUC-PR fell 0.295 -> 0.252 (docs/model.md)."""
    holdout_share: float = Field(0.1, gt=0, le=0.5)
    """Share of a fit of 2000 rows or more held out to calibrate each mode's tail (and holdout_blocks' share)."""
    holdout_rows: int = Field(800, ge=0)
    """A random holdout keeps at least this many rows, up to twice holdout_share: each mode's 1e-3 tail is extrapolated
    from its scores past their 95 % quantile, and a tenth of a 4,000-row fit left a mode 5-19 of them, whose noise
    raised the false alarms (docs/model.md). 0: holdout_share alone."""
    holdout_guard: int = Field(0, ge=-1)
    """With holdout_blocks, the rows within this many records of a held-out block (at most one block's length) train
    nothing, so no held-out row sits next to a training row; -1 takes it from the data: the lag at which the scaled
    rows' mean autocorrelation falls under 1/e. Off (0): on the process simulator it did no better (docs/model.md)."""
    min_expert_weight: float = Field(0.02, ge=0, lt=1)
    """Clusters lighter than this share of the data get no expert at fit time."""
    seed: int = 0
    """Seeds sampling and initialisation, for reproducible runs."""
    novelty: NoveltyConfig = Field(default_factory=NoveltyConfig)
    cascade: CascadeConfig = Field(default_factory=CascadeConfig)
    poison: PoisonConfig = Field(default_factory=PoisonConfig)
    context: ContextConfig = Field(default_factory=ContextConfig)

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> ModelConfig:
        if self.learn_threshold < self.threshold:
            raise ValueError("learn_threshold must be >= threshold: a record flagged anomalous must never be learned")
        if self.cascade.enabled and self.cascade.margin_p < self.learn_threshold:
            raise ValueError(
                "cascade.margin_p must be >= learn_threshold (a record refused for learning is rescored): raise "
                "STREAMMOE_MODEL__CASCADE__MARGIN_P or set STREAMMOE_MODEL__CASCADE__ENABLED=false"
            )
        if self.clip_threshold is not None and self.clip_threshold > self.learn_threshold:
            raise ValueError("clip_threshold must be <= learn_threshold: records the model learns are never clipped")
        return self
