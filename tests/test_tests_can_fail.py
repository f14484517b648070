"""A test that cannot fail is a defect (DEVELOPERS.md): two shapes of it, searched in every test file.

- an assertion ending in ``or`` and a true constant: the assertion always holds;
- a module skipped because a name is missing (``skipif(not hasattr(...))``, or ``pytest.skip``
  under such a test at module level): renaming the method silently skips its tests.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent


def _always_true(node: ast.AST) -> bool:
    return isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or) and any(
        isinstance(v, ast.Constant) and bool(v.value) for v in node.values)


def _asks_for_a_name(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
               and n.func.id in ("hasattr", "getattr") for n in ast.walk(node))


def vacuous_asserts(tree: ast.AST) -> list[int]:
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Assert) and _always_true(n.test)]


def skips_on_missing_names(tree: ast.Module) -> list[int]:
    """Module-level skips whose condition asks whether a name exists."""
    out = []
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark"
                                                for t in stmt.targets):
            calls = [c for c in ast.walk(stmt.value) if isinstance(c, ast.Call)
                     and isinstance(c.func, ast.Attribute) and c.func.attr == "skipif"]
            if any(c.args and _asks_for_a_name(c.args[0]) for c in calls):
                out.append(stmt.lineno)
        if isinstance(stmt, ast.If) and _asks_for_a_name(stmt.test):
            skips = [c for c in ast.walk(stmt) if isinstance(c, ast.Call)
                     and isinstance(c.func, ast.Attribute) and c.func.attr == "skip"]
            if skips:
                out.append(stmt.lineno)
    return out


def test_no_test_is_vacuous() -> None:
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        found += [f"{path.relative_to(TESTS)}:{line}: assert ... or <true>" for line in vacuous_asserts(tree)]
        found += [f"{path.relative_to(TESTS)}:{line}: module skipped when a name is missing"
                  for line in skips_on_missing_names(tree)]
    assert not found, found


def test_the_search_finds_both_shapes() -> None:
    # the two defects as they stood in tests/cli/test_cli_unit.py and tests/security/test_secret_file.py
    before = ast.parse(
        "import os, pytest\n"
        "from bknr_cluster.cluster.config import ClusterConfig\n"
        "pytestmark = pytest.mark.skipif(not hasattr(ClusterConfig, 'raft_secret'), reason='later')\n"
        "def test_help():\n"
        "    assert os.environ.get('BKNR_CONFIG') is None or " + "True\n")  # split: not itself a find
    assert vacuous_asserts(before) == [5]
    assert skips_on_missing_names(before) == [3]
    guarded = ast.parse("import pytest\nif not hasattr(object, 'x'):\n"
                        "    pytest.skip('later', allow_module_level=True)\n")
    assert skips_on_missing_names(guarded) == [2]
