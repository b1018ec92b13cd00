"""The house rules, checked: which package may import which (directly and transitively), and how big a module or
class may grow. The import graph is read from the source (every import, also those inside functions, except under
`if TYPE_CHECKING:`), so a lazy import cannot hide an edge; two subprocesses then confirm what a real import
loads for the two rules that matter most at run time (no torch in the Kafka code, no Kafka in the model)."""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "streammoe"
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 200

# Known exceptions to the size rules, each with its owner and why; the test fails once one is no longer needed.
TOO_LONG_MODULES: dict[str, str] = {
    "benchmarks/cli.py": "the bench command's options, a few lines over; next to move: --perf's options",
    "benchmarks/fuzz.py": "the hostile-input bench, a few lines over",
}
TOO_LONG_CLASSES: dict[str, str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


# The one import of the benchmarks a shipped module may make: `streammoe bench` loads them from a source checkout
# when there is one, behind a check that they are there (an installed image has none).
BENCHMARKS_LOADER = ("streammoe.cli", "_register_bench")


def under_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def enclosing_function(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> str | None:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            return node.name
    return None


@cache
def imports_of(name: str) -> frozenset[str]:
    """What module `name` imports: streammoe modules by full name (with the packages above them, which importing
    runs too), anything else by its top-level name (torch, confluent_kafka, benchmarks, ...)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom) or under_type_checking(node, parents):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        for target in targets:
            if target.split(".")[0] == "benchmarks" and (name, enclosing_function(node, parents)) == BENCHMARKS_LOADER:
                continue
            if target.split(".")[0] != "streammoe":
                found.add(target.split(".")[0])
                continue
            parts = target.split(".")
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in MODULES)
    found.discard(name)
    return frozenset(found)


@cache
def reaches(name: str) -> frozenset[str]:
    """Everything importing `name` loads, transitively."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        for dep in imports_of(todo.pop()):
            if dep not in seen:
                seen.add(dep)
                if dep in MODULES:
                    todo.append(dep)
    return frozenset(seen)


def in_package(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def offenders(sources: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    bad = {}
    for name in MODULES:
        if in_package(name, sources):
            hit = sorted(d for d in reaches(name) if any(in_package(d, f) for f in forbidden))
            if hit:
                bad[name] = hit
    return bad


def test_the_import_graph_is_read_from_the_source() -> None:
    """The graph sees lazy imports and packages: the test's own premises, on modules that will not change."""
    assert "streammoe.kafka.source" in imports_of("streammoe.daemon.clients")
    assert "streammoe.kafka" in imports_of("streammoe.daemon.clients"), "a module's package is imported too"
    assert "confluent_kafka" in reaches("streammoe.daemon.service")
    assert "torch" in reaches("streammoe.state.persistence")


@pytest.mark.parametrize("package", ["streammoe.model", "streammoe.novelty"])
def test_the_model_and_novelty_import_nothing_from_kafka(package: str) -> None:
    assert offenders(package, ("streammoe.kafka", "confluent_kafka")) == {}


def test_the_kafka_code_imports_no_torch() -> None:
    assert offenders("streammoe.kafka", ("torch",)) == {}


def test_nothing_shipped_imports_the_benchmarks() -> None:
    assert offenders("streammoe", ("benchmarks",)) == {}
    module, function = BENCHMARKS_LOADER
    tree = ast.parse(MODULES[module].read_text())
    [loader] = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function]
    assert "is_file()" in ast.unparse(loader), "the bench command imports them only from a checkout that has them"


def test_the_model_core_does_not_import_novelty() -> None:
    """novelty/ builds on the model's core (mixture, experts, learning, config); the detector, the facade, builds on
    both. A core module importing novelty would make model <-> novelty a cycle."""
    core = [n for n in MODULES if in_package(n, "streammoe.model") and n != "streammoe.model.detector"]
    bad = {n: sorted(d for d in reaches(n) if in_package(d, "streammoe.novelty")) for n in core}
    assert {n: d for n, d in bad.items() if d} == {}


def loaded_by(modules: list[str]) -> set[str]:
    code = f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\nprint(' '.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT, timeout=300
    )
    return set(out.stdout.split())


def test_importing_the_kafka_code_loads_no_torch() -> None:
    kafka = [n for n in MODULES if in_package(n, "streammoe.kafka")]
    loaded = loaded_by(kafka)
    assert "streammoe.kafka.snapshots" in loaded and "torch" not in loaded


def test_importing_the_model_and_novelty_loads_no_kafka_client() -> None:
    ours = [n for n in MODULES if in_package(n, "streammoe.model") or in_package(n, "streammoe.novelty")]
    loaded = loaded_by(ours)
    assert "streammoe.model.detector" in loaded
    assert not {m for m in loaded if m.split(".")[0] == "confluent_kafka" or in_package(m, "streammoe.kafka")}


def class_sizes(path: Path) -> dict[str, int]:
    tree = ast.parse(path.read_text(), str(path))
    return {
        node.name: (node.end_lineno or node.lineno) - node.lineno + 1
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
    }


def test_no_module_over_400_lines_and_no_class_over_200() -> None:
    """The shipped package and the benchmarks (not shipped, but kept to the same house rules)."""
    long_modules, long_classes = {}, {}
    for path in [*MODULES.values(), *sorted((ROOT / "benchmarks").glob("*.py"))]:
        rel = path.relative_to(ROOT).as_posix()
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            long_modules[rel] = lines
        for cls, size in class_sizes(path).items():
            if size > MAX_CLASS_LINES:
                long_classes[f"{rel}::{cls}"] = size
    assert set(long_modules) <= set(TOO_LONG_MODULES), f"modules over {MAX_MODULE_LINES} lines: {long_modules}"
    assert set(long_classes) <= set(TOO_LONG_CLASSES), f"classes over {MAX_CLASS_LINES} lines: {long_classes}"
    stale = (set(TOO_LONG_MODULES) - set(long_modules)) | (set(TOO_LONG_CLASSES) - set(long_classes))
    assert not stale, f"no longer too long, remove from the known exceptions: {sorted(stale)}"
