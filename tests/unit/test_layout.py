"""The README's layout section is the map of the tree: every path it names exists, and every package and module
of streammoe/ and every top-level folder of the repository is named in it, so a new room cannot go unmapped."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _layout_block() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Layout", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1].splitlines()[1:]


def _named_paths() -> set[str]:
    """The paths in the block's first column: `streammoe/`, then `  daemon/` (inside it), `tests/unit/`, ..."""
    named, parent = set(), ""
    for line in _layout_block():
        if not line.strip() or line.startswith(" " * 20):  # a continuation of a description
            continue
        indented = line.startswith("  ")
        for token in line.split():
            if not re.fullmatch(r"[\w.*-]+(/[\w.*-]+)*/?", token) or not token.endswith(("/", ".py")):
                break
            path = (parent if indented else "") + token
            named.add(path)
            if not indented and token.endswith("/"):
                parent = token
    return named


def test_every_path_the_layout_names_exists() -> None:
    named = _named_paths()
    assert "streammoe/" in named and "benchmarks/" in named
    for path in named:
        hits = list(ROOT.glob(path.rstrip("/")))
        assert hits, f"README layout names {path}, which is not in the tree"


def test_every_package_and_top_level_folder_is_named() -> None:
    named = {p.rstrip("/") for p in _named_paths()}
    packages = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "streammoe").glob("*/__init__.py")}
    packages |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "streammoe").glob("*.py") if p.name != "__init__.py"}
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False).stdout.split()
    top = {f.split("/")[0] for f in tracked if "/" in f and not f.startswith(".")}
    top |= {"benchmarks", "tests", "docs"}  # also without git (an exported tree)
    missing = sorted(p for p in packages | top if p not in named and not any(n.startswith(p + "/") for n in named))
    assert not missing, f"README layout does not name {missing}"
