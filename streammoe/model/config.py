"""Hyper-parameters of the mixture; one object shared by the command line, the daemon's settings and checkpoints."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ModelConfig(BaseModel):
    """What shapes the model and how it learns. Saved with every model so a checkpoint knows how it was made."""

    model_config = ConfigDict(extra="forbid")

    k_max: int = Field(8, ge=1, le=256, description="Expert slots allocated up front (bounds memory).")
    hidden: int = Field(64, ge=4, description="Hidden units per expert layer.")
    latent: int = Field(8, ge=1, description="Latent dimensions per expert.")
    n_samples: int = Field(8, ge=1, description="Importance samples per record when scoring (IWAE).")
    threshold: float = Field(
        1e-3, gt=0, lt=1, description="p-value below which a record is anomalous (same meaning in every mode)."
    )
    learn_threshold: float = Field(
        1e-2, gt=0, lt=1, description="Only records with a p-value at or above this teach the model."
    )
    half_life: float = Field(20_000.0, gt=0, description="Half-life of the mixture-weight statistics, in records.")
    alpha0: float = Field(1.0, gt=0, description="Dirichlet prior concentration per expert.")
    learning_rate: float = Field(1e-3, gt=0, description="Adam step size, offline and online.")
    learn_batch: int = Field(256, ge=1, description="At most this many records of a batch per online step.")
    replay_size: int = Field(512, ge=1, description="Replay reservoir per expert.")
    replay_per_step: int = Field(64, ge=0, description="Replayed records mixed into each online step.")
    calibration_size: int = Field(2048, ge=16, description="Reference scores kept per mode for p-values.")
    fit_steps: int = Field(3000, ge=1, description="Gradient steps when fitting from files.")
    fit_batch: int = Field(256, ge=1, description="Records per gradient step when fitting.")
    min_expert_weight: float = Field(
        0.02, ge=0, lt=1, description="Clusters lighter than this share of the data get no expert at fit time."
    )
    seed: int = Field(0, description="Seeds sampling and initialisation, for reproducible runs.")

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> "ModelConfig":
        if self.learn_threshold < self.threshold:
            raise ValueError("learn_threshold must be >= threshold: a record flagged anomalous must never be learned")
        return self
