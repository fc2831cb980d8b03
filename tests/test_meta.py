"""Project-wide rules checked on the source tree itself."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "src" / "ketch"
CLI = PKG / "cli"

MAX_LINES = 800
MAX_CLI_LINES = 150


def _sources() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def _line_count(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def _rel(path: Path) -> str:
    return str(path.relative_to(PKG.parent.parent))


def test_sources_exist() -> None:
    assert _sources(), f"no Python sources under {PKG}"


def test_module_size_limits() -> None:
    too_long = []
    for path in _sources():
        limit = MAX_CLI_LINES if path.parent == CLI else MAX_LINES
        n = _line_count(path)
        if n > limit:
            too_long.append(f"{_rel(path)}: {n} lines > {limit}")
    assert not too_long, "modules over the size limit:\n" + "\n".join(too_long)


def _output_calls(tree: ast.AST) -> list[tuple[int, str]]:
    """print(...) calls and uses of sys.stderr / `from sys import stderr`."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "print":
                found.append((node.lineno, "print("))
        elif isinstance(node, ast.Attribute) and node.attr == "stderr":
            if isinstance(node.value, ast.Name) and node.value.id == "sys":
                found.append((node.lineno, "sys.stderr"))
        elif isinstance(node, ast.ImportFrom) and node.module == "sys":
            if any(alias.name == "stderr" for alias in node.names):
                found.append((node.lineno, "from sys import stderr"))
    return found


def test_only_cli_writes_output() -> None:
    offenders = []
    for path in _sources():
        if CLI in path.parents:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for lineno, what in _output_calls(tree):
            offenders.append(f"{_rel(path)}:{lineno}: {what}")
    assert not offenders, (
        "only src/ketch/cli/ may print or write sys.stderr (library code "
        "returns data, raises KetchError or uses logging):\n" + "\n".join(offenders)
    )
