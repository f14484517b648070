"""The layer rule of bknrctl (cli/bknrctl/DESIGN.md), checked on the import statements.

output -> client -> cluster -> control -> operations -> rendering -> options -> commands -> main:
a module imports modules of its own layer or of lower layers only, and a command module imports
no other command module (commands share operations, never each other). Every module is placed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import bknrctl

PACKAGE = Path(bknrctl.__file__).parent

LAYERS: list[tuple[str, set[str]]] = [
    ("output", {"output", "poll"}),
    ("client", {"client"}),
    ("cluster", {"cluster"}),
    ("control", {"control", "local", "remote"}),
    ("operations", {"nodes", "provision", "leadership", "failback", "backup", "drill", "drillrun",
                    "workload", "demo", "appdemo", "appdrill", "lb"}),
    ("rendering", {"render", "plot"}),
    ("options", {"app"}),
    ("commands", {"lifecycle", "statuscmd", "admin", "drillcmd", "opscmd", "certscmd", "upgrade",
                  "migrate"}),
    ("main", {"main", "__main__", "__init__"}),
]

# Imports that break the rule today, each with the reason it is still there. The test fails
# when one is no longer needed, so this list only shrinks.
KNOWN: dict[tuple[str, str], str] = {
    ("appdrill", "plot"): "the end-user drill writes its own timeline plot (issue 15's module)",
    ("lb", "app"): "lb.py holds the HAProxy process (an operation) and the `lb` commands "
                   "(issue 15's module; to be split into an operation and a command module)",
}


def _layer_of() -> dict[str, int]:
    return {m: i for i, (_, mods) in enumerate(LAYERS) for m in mods}


def _imports(path: Path) -> set[str]:
    """The sibling modules a module imports (relative imports, at any depth of the file)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.add(node.module.split(".")[0])
            else:
                out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bknrctl."):
            out.add(node.module.split(".")[1])
    return out


def test_every_module_has_a_layer() -> None:
    layer = _layer_of()
    unplaced = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in layer)
    assert not unplaced, f"place these modules in a layer (and in cli/bknrctl/DESIGN.md): {unplaced}"


def test_imports_follow_the_layers() -> None:
    layer = _layer_of()
    commands = LAYERS[[n for n, _ in LAYERS].index("commands")][1]
    broken, used = [], set()
    for p in sorted(PACKAGE.glob("*.py")):
        for dep in sorted(_imports(p)):
            if dep not in layer:
                continue
            upward = layer[dep] > layer[p.stem]
            sideways = p.stem in commands and dep in commands and dep != p.stem
            if upward or sideways:
                if (p.stem, dep) in KNOWN:
                    used.add((p.stem, dep))
                else:
                    kind = "a higher layer" if upward else "another command module"
                    broken.append(f"{p.stem} imports {dep} ({kind})")
    assert not broken, broken
    assert used == set(KNOWN), f"no longer needed, remove from KNOWN: {sorted(set(KNOWN) - used)}"


def test_the_rule_catches_a_command_importing_a_command(tmp_path: Path) -> None:
    # the checker itself must be able to fail
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from .admin import transfer\n")
    assert _imports(f) == {"admin"}


SHARED_FLAGS = {"--role", "-q", "--quiet", "--catchup-timeout"}


def test_shared_options_are_defined_once_in_app() -> None:
    """--role, -q/--quiet and --catchup-timeout mean one thing everywhere: app.py defines them."""
    redefined = []
    for p in sorted(PACKAGE.glob("*.py")):
        if p.stem == "app":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if not isinstance(node, ast.FunctionDef):
                continue
            for arg in node.args.args + node.args.kwonlyargs:
                for call in ast.walk(arg.annotation) if arg.annotation else ():
                    if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) \
                            and call.func.attr == "Option":
                        # an Option without flags takes its flag from the parameter's name
                        flags = {a.value for a in call.args if isinstance(a, ast.Constant)} \
                            or {"--" + arg.arg.replace("_", "-")}
                        redefined += [f"{p.stem}:{call.lineno}: {f}" for f in sorted(flags & SHARED_FLAGS)]
    assert not redefined, f"use the option types of app.py: {redefined}"
