"""The house plan holds: layered packages, no import cycles, gradio only under ui/, files of bounded size.

Every import counts, also those inside functions (a local import is how a cycle hides), except
under ``if TYPE_CHECKING:``.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lora_gui"
# bottom to top; a module may import its own package and the rows below, never a row above or beside
LAYERS = [{"errors", "malloc_tuning", "openmp_teams"}, {"config"}, {"lora", "data"}, {"backbones"}, {"store"}, {"training", "inference", "health"},
          {"jobs"}, {"ui"}, {"cli"}]  # cli on top: `lora-gui` with no command launches the app
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = f.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imports(name: str, path: Path) -> set[str]:
    """Absolute lora_gui module names imported anywhere in the file (TYPE_CHECKING blocks left out)."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    package = name if _is_package(path) else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "lora_gui")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "lora_gui":
                continue
            for alias in node.names:  # `from pkg import module` imports the module
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
    return found


MODULES = _modules()
GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    return next((i for i, row in enumerate(LAYERS) if top in row), None)


def test_every_module_belongs_to_a_layer():
    loose = [m for m in MODULES if m not in ("lora_gui", "lora_gui.__main__") and _layer(m) is None]
    assert not loose, f"modules outside the layers (add them to a row of LAYERS): {loose}"


def test_no_module_imports_a_row_above_or_beside_its_own():
    wrong = []
    for module, targets in GRAPH.items():
        mine = _layer(module)
        if mine is None:
            continue
        for target in targets:
            theirs = _layer(target)
            same_package = target.split(".")[:2] == module.split(".")[:2]
            if theirs is not None and not same_package and theirs >= mine:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    cycles, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(GRAPH.get(node, ())):
            if nxt not in GRAPH:
                continue
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(GRAPH):
        if node not in state:
            visit(node)
    real = cycles
    assert not real, "import cycles:\n" + "\n".join(" -> ".join(c) for c in real)


def test_gradio_only_under_ui():
    offenders = []
    for module, path in MODULES.items():
        if module.startswith("lora_gui.ui"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] in ("gradio", "gradio_client") for n in names):
                offenders.append(module)
    assert not offenders, f"gradio imported outside lora_gui/ui: {offenders}"


def test_no_file_is_over_the_size_limit():
    big = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"files over {MAX_LINES} lines: {big}"


def test_the_checker_sees_a_cycle_and_a_layer_breach(tmp_path):
    """The checks above would fail on a real cycle or breach (they are not vacuous)."""
    a = tmp_path / "a.py"
    a.write_text("from lora_gui.ui import app\n")
    assert "lora_gui.ui.app" in _imports("lora_gui.store.a", a)
    assert _layer("lora_gui.store.a") < _layer("lora_gui.ui.app")
    assert any("lora_gui.lora" in t or t.startswith("lora_gui.lora.") for t in GRAPH["lora_gui.training.loop"])
