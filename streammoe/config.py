"""Daemon settings from `STREAMMOE_*` environment variables (and optional env files), validated once at start.

Nesting uses `__`: `STREAMMOE_KAFKA__BOOTSTRAP_SERVERS=broker:9092`, `STREAMMOE_BATCHING__MAX_BATCH=512`,
`STREAMMOE_MODEL__THRESHOLD=1e-4`. Lists and dicts take JSON: `STREAMMOE_RECORDS__CHANNELS='["flow","temp"]'`,
`STREAMMOE_KAFKA__EXTRA='{"linger.ms": "5"}'` (a shell cannot name a variable `STREAMMOE_KAFKA__EXTRA__linger.ms`;
env files, `env` and Kubernetes can, and that form works too, but not beside the JSON one). Secrets are
`SecretStr`: they print as `**********` everywhere except in the librdkafka dictionaries handed to the client.
A `STREAMMOE_*` variable that names no setting stops start-up (streammoe/variables.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streammoe.incidents.settings import IncidentSettings
from streammoe.kafka.properties import for_consumer, for_producer
from streammoe.model.config import ModelConfig
from streammoe.silence import SilenceSettings
from streammoe.state.scopes import ScopeSettings
from streammoe.variables import unknown_variables

ENV_PREFIX = "STREAMMOE_"
ENV_FILE_VARIABLE = "STREAMMOE_ENV_FILE"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KafkaSettings(Section):
    """Where records come from and where results go; anything librdkafka knows can pass through `extra`."""

    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "streammoe"
    client_id: str = "streammoe"
    input_topic: str = "sensor-records"
    alerts_topic: str = "streammoe-alerts"
    dead_letter_topic: str = "streammoe-dead-letters"
    scores_topic: str | None = Field(None, description="Optional: one score message per valid record.")
    events_topic: str = "streammoe-events"
    control_topic: str = "streammoe-control"
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    session_timeout_ms: int = Field(45_000, ge=1000)
    max_poll_interval_ms: int = Field(300_000, ge=1000)
    fetch_wait_max_ms: int = Field(100, ge=0)
    statistics_interval_ms: int = Field(5000, ge=0, description="librdkafka statistics (consumer lag); 0 = off.")
    commit_interval_s: float = Field(5.0, gt=0, description="Acknowledged offsets are committed at least this often.")
    delivery_timeout_s: float = Field(30.0, gt=0, description="Longest wait for the broker to acknowledge a batch.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: SecretStr | None = None
    ssl_endpoint_identification_algorithm: Literal["https", "none"] | None = None
    output_timestamp: Literal["record", "now"] = Field(
        "record",
        description="Kafka timestamp of alerts and scores: `record`, the input record's `ts` (epoch "
        "milliseconds; time-indexed consumers and retention then follow the sensor's time; a `ts` that cannot be "
        "one gets the clock's), or `now`, the daemon's clock. Dead letters keep their input's timestamp either way.",
    )
    extra: dict[str, str] = Field(
        default_factory=dict,
        description="librdkafka properties; each client gets those that apply to it "
        "(producer-only ones are kept from the consumers and the other way round).",
    )
    partitioner: Literal[
        "murmur2_random", "murmur2", "consistent_random", "consistent", "fnv1a_random", "fnv1a", "random"
    ] = Field(
        "murmur2_random",
        description="How outputs keyed by asset are spread over partitions. murmur2_random "
        "picks the partition Java clients, Kafka Streams and kafka-python pick for the same key (so, with as many "
        "partitions as the input, an asset's alerts sit beside its records produced by such a client); "
        "librdkafka's own default, consistent_random, hashes with CRC32 and does not.",
    )

    def redacted_extra(self) -> dict[str, str]:
        return {k: _redact_property(k, v) for k, v in self.extra.items()}

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, self.redacted_extra() if name == "extra" else value

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSettings:
        if self.max_poll_interval_ms < self.session_timeout_ms:
            raise ValueError("max_poll_interval_ms must be >= session_timeout_ms (librdkafka refuses otherwise)")
        if self.security_protocol.startswith("SASL") and self.sasl_mechanism is None:
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_mechanism")
        return self


class RecordSettings(Section):
    """The shape of input records: `{"asset_id": .., "ts": .., "values": {name: number} | [numbers]}`."""

    channels: list[str] = Field(min_length=1, description="Channel names; also the order of list-form values.")
    asset_field: str = "asset_id"
    ts_field: str = "ts"
    values_field: str = "values"
    max_record_bytes: int = Field(65_536, gt=0, description="Larger records are dead-lettered as oversized.")
    max_missing_share: float = Field(
        0.5,
        ge=0,
        lt=1,
        description="The largest share of channels that may be missing (null or absent) from a record: such a "
        "record is scored on the channels present and never learned; one missing more is dead-lettered "
        "(missing_channel / missing_value). 0: every channel is required.",
    )

    @model_validator(mode="after")
    def _unique(self) -> RecordSettings:
        if len(set(self.channels)) != len(self.channels):
            raise ValueError("channels must be unique")
        return self


class BatchingSettings(Section):
    max_batch: int = Field(1024, gt=0, le=100_000)
    max_wait_ms: int = Field(100, ge=0, le=60_000)
    pipeline: bool = Field(
        False,
        description="Fetch and decode the next batch while this one is scored and learned (one batch ahead). "
        "Off by default: on 2 CPU cores it measured ~10 % slower than the serial loop (decoding competes with "
        "scoring for the interpreter); meant for GPU workers, where scoring leaves the CPU free.",
    )


class AlertSettings(Section):
    enabled: bool = Field(True, description="Publish an alert per anomalous record (off: incidents only).")
    critical_p_value: float = Field(1e-6, gt=0, lt=1, description="Alerts with a p-value below this are critical.")
    top_channels: int = Field(3, ge=1, description="Channels named in each alert, by share of the misfit.")


class CheckpointSettings(Section):
    dir: Path = Path("./checkpoints")
    interval_s: float = Field(60.0, gt=0)
    bootstrap_model_dir: Path | None = Field(
        None, description="A `streammoe fit` model used when no checkpoint exists."
    )
    warmup_records: int = Field(5000, ge=10, description="Valid records learned first when neither exists.")


class SnapshotSettings(Section):
    """Scope snapshots on a Kafka topic: how a scope moves to the worker that takes its partition (docs/scaleout.md)."""

    topic: str | None = Field(
        None,
        description="The snapshot topic (compacted, partitions >= the input topic's); unset = no snapshots. "
        "Needs STREAMMOE_SCOPES__MODE group or asset.",
    )
    interval_s: float = Field(
        60.0, gt=0, description="Scopes that learned since their last snapshot are written this often."
    )
    read_timeout_s: float = Field(30.0, gt=0, description="Longest read of a snapshot partition on assignment.")
    chunk_bytes: int = Field(
        512 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Model bytes per message; keep under the topic's max.message.bytes.",
    )


class HttpSettings(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9308, ge=0, le=65535, description="0 picks a free port.")
    ready_stale_s: float = Field(30.0, gt=0, description="/readyz fails when the loop has not turned for this long.")
    live_stale_s: float = Field(
        300.0,
        gt=0,
        description="/healthz fails (and the orchestrator restarts the worker) when the loop has not "
        "turned and no known long step (restoring snapshots, training a candidate expert, a warm-up fit) has "
        "reported progress for this long.",
    )
    max_scope_series: int = Field(
        100,
        ge=0,
        description="Scopes with their own streammoe_experts_active and streammoe_mixture_weight "
        "series; the rest are counted in streammoe_scopes_without_series (asset mode can hold thousands).",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore", case_sensitive=False
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    records: RecordSettings
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    incidents: IncidentSettings = Field(default_factory=IncidentSettings)
    model: ModelConfig = Field(default_factory=ModelConfig)
    checkpoint: CheckpointSettings = Field(default_factory=CheckpointSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    scopes: ScopeSettings = Field(default_factory=ScopeSettings)
    snapshot: SnapshotSettings = Field(default_factory=SnapshotSettings)
    silence: SilenceSettings = Field(default_factory=SilenceSettings)
    torch_threads: int = Field(
        1,
        ge=0,
        description="Threads for scoring; 0 = torch's default. On a shared CPU, 2+ OpenMP threads "
        "spin-wait for each other and batches ran 2-20x slower than with 1 (measured on the 2-core CI box).",
    )
    torch_compile: bool = Field(
        False,
        description="Run the model's E-step through torch.compile: 0.9-2x faster scoring on CPU, after ~20-60 s "
        "of compiling at the first batch (and seconds for each new batch shape). Off by default.",
    )
    precision: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description="Precision of the E-step (autocast): bfloat16 on CPUs with AVX512-BF16/AMX or on a GPU, "
        "float16 on a GPU only. Scores, p-values and decisions stay float32; see docs/operations.md for the check.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"

    @model_validator(mode="after")
    def _snapshots_need_scopes(self) -> Settings:
        if self.snapshot.topic and self.scopes.mode == "global":
            raise ValueError(
                "STREAMMOE_SNAPSHOT__TOPIC hands scopes between workers, but STREAMMOE_SCOPES__MODE=global has one "
                "scope spread over every partition: set STREAMMOE_SCOPES__MODE to group or asset (docs/scaleout.md)"
            )
        return self

    def safe_dump(self) -> dict[str, Any]:
        """Everything, with secrets redacted (SecretStr dumps as '**********'); safe to log."""
        dumped = self.model_dump(mode="json")
        dumped["kafka"]["extra"] = self.kafka.redacted_extra()
        return dumped


class SettingsError(Exception):
    """Settings that cannot start the daemon; the message names each offending environment variable."""


def _redact_property(key: str, value: str) -> str:
    secret = any(word in key.lower() for word in ("password", "secret", "token", "jaas"))
    return "**********" if secret else value


def _variable(loc: tuple[int | str, ...]) -> str:
    return ENV_PREFIX + "__".join(str(part).upper() for part in loc)


def load_settings(env_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Read settings from the environment and `env_file` (default: `$STREAMMOE_ENV_FILE`); raise SettingsError,
    also for a `STREAMMOE_*` variable that names no setting (streammoe/variables.py)."""
    env_file = env_file or os.environ.get(ENV_FILE_VARIABLE)
    if env_file is not None and not Path(env_file).is_file():
        raise SettingsError(f"{ENV_FILE_VARIABLE}: env file {env_file} does not exist")
    lines = _variable_problems(env_file)
    try:
        settings = Settings(_env_file=env_file, **overrides)
    except ValidationError as e:
        for err in e.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden" and any(
                line.upper().startswith(_variable(loc) + ":") for line in lines
            ):
                continue  # named already, with the nearest valid name
            lines.append(f"{_variable(loc)}: {msg}" if loc else msg)
    if lines:
        raise SettingsError("\n".join(lines)) from None
    return settings


def _variable_problems(env_file: str | Path | None) -> list[str]:
    """Unknown `STREAMMOE_*` names in the environment or the env file, and `extra` given in both of its forms
    (pydantic-settings would keep the JSON and drop the per-property variables without a word)."""
    variables: dict[str, str | None] = dict(dotenv_values(env_file)) if env_file is not None else {}
    variables.update(os.environ)
    lines = unknown_variables(Settings, variables)
    names = {k.upper() for k in variables}
    extra = ENV_PREFIX + "KAFKA__EXTRA"
    per_property = sorted(n for n in names if n.startswith(extra + "__"))
    if extra in names and per_property:
        lines.append(
            f"{extra}: set librdkafka properties either as JSON in {extra} or one per variable "
            f"({per_property[0]}, ...), not both"
        )
    return lines


def _security(kafka: KafkaSettings) -> dict[str, str]:
    conf: dict[str, str] = {"security.protocol": kafka.security_protocol}
    optional = {
        "sasl.mechanism": kafka.sasl_mechanism,
        "sasl.username": kafka.sasl_username,
        "sasl.password": kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
        "ssl.ca.location": kafka.ssl_ca_location,
        "ssl.certificate.location": kafka.ssl_certificate_location,
        "ssl.key.location": kafka.ssl_key_location,
        "ssl.key.password": kafka.ssl_key_password.get_secret_value() if kafka.ssl_key_password else None,
        "ssl.endpoint.identification.algorithm": kafka.ssl_endpoint_identification_algorithm,
    }
    conf.update({k: v for k, v in optional.items() if v is not None})
    return conf


def consumer_config(kafka: KafkaSettings) -> dict[str, Any]:
    """librdkafka consumer properties. Offsets are stored by the daemon only once a batch's outputs are
    acknowledged, and committed by it explicitly (interval, revoke, shutdown): at-least-once."""
    conf: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "client.id": kafka.client_id,
        "group.id": kafka.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": kafka.auto_offset_reset,
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": kafka.session_timeout_ms,
        "max.poll.interval.ms": kafka.max_poll_interval_ms,
        "fetch.wait.max.ms": kafka.fetch_wait_max_ms,
        "statistics.interval.ms": kafka.statistics_interval_ms,
        **_security(kafka),
    }
    conf.update(for_consumer(kafka.extra))
    return conf


def producer_config(kafka: KafkaSettings) -> dict[str, Any]:
    """librdkafka producer properties: acks from every in-sync replica before a batch counts as delivered.

    Not idempotent, on purpose: outputs are deduplicated downstream (`alert_id`), and an idempotent producer
    never recovers from a Tansu restart (it forgets producer ids; docs/platform.md), whereas a plain one
    delivers what it buffered during the outage. `extra` may still turn idempotence on for a real Kafka."""
    conf: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "client.id": kafka.client_id,
        "acks": "all",
        "enable.idempotence": False,
        "linger.ms": 5,
        "partitioner": kafka.partitioner,
        "message.timeout.ms": int(kafka.delivery_timeout_s * 1000),
        **_security(kafka),
    }
    conf.update(for_producer(kafka.extra))
    return conf
