"""The house's import rule for ``distill/`` (docs/design.md §1): it never imports ``generation`` or ``ray``."""

from __future__ import annotations

import ast
from pathlib import Path

DISTILL = Path(__file__).resolve().parents[2] / "distill"
FORBIDDEN = ("generation", "ray")


def _imported(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import in the module, at any depth (lazy imports count)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def test_distill_never_imports_generation_or_ray():
    files = sorted(DISTILL.rglob("*.py"))
    assert len(files) > 20  # the walk found the package
    bad = [
        f"{path.relative_to(DISTILL.parent)}:{line} imports {module}"
        for path in files
        for line, module in _imported(ast.parse(path.read_text(), str(path)))
        if module.split(".")[0] in FORBIDDEN
    ]
    assert not bad, "\n".join(bad)
